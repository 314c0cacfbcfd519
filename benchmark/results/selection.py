"""Model selection: which hyperparameter draw and which checkpoint a reported number comes from.

Gulrajani & Lopez-Paz (2021), "In Search of Lost Domain Generalization", section 3 and
DomainBed's model_selection.py, plus the IRM protocol's last checkpoint (Arjovsky et al.
2019), the IRM paper's SEM selection on the test environment, and the linear unit tests'
one configuration across trials (Aubin et al. 2021). Each strategy solves one selection
problem: the runs of one cell (dataset, data source, method) and one trial, for one
test-environment set, reporting one env; a strategy that compares trials (one
configuration for all of them) sees every trial of the cell at once (``select_cell``).

A test set may be empty: every environment trained (the linear unit tests, the IRM
paper's pooled ERM). Then each environment's reported split is a column, validation runs
over all of them, and the strategies that need a test environment (leave-one-out, the
test-domain oracle, the test environment at the last checkpoint) say so.

The reported number, for every strategy: the test environment's score (accuracy, or MSE
for regression, lower being better) on its "train" split -- all of that environment's
data except the "val" holdout, DomainBed's "in" split -- or on its "test" split when the
dataset defines one (the linear unit tests' shuffled test split).

Ties are broken deterministically: the earliest step, then the lowest hyperparameter seed.
A strategy that cannot choose returns ``Missing`` with a reason for people.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Mapping, Sequence

from invbench.splits import SPLITS, TEST, TRAIN, VAL

# The selection strategies' names: the CLI's --selection choices and the tables' labels.
TRAINING_DOMAIN, LOO, ORACLE, LAST = "training_domain", "loo", "oracle", "last"
CONFIG_ACROSS_TRIALS, TEST_ENV_LAST = "config_across_trials", "test_env_last"
DEFAULT_SELECTION = TRAINING_DOMAIN


@dataclass
class Candidate:
    """One finished run, as a selection strategy sees it."""

    run: str
    config: str  # hyperparameters and schedule (JSON): runs with equal config are one "draw"
    hparams_seed: int
    test_envs: tuple[str, ...]
    train_envs: tuple[str, ...]
    higher_is_better: bool
    scores: Any  # DataFrame: index step (ascending), columns (env, split) -> score
    extras: Any = None  # DataFrame: index step, columns extra metric names (or None)

    def utility(self, value: float) -> float:
        return value if self.higher_is_better else -value

    def has(self, env: str, split: str) -> bool:
        return (env, split) in self.scores.columns

    @cached_property
    def last_step(self) -> int:
        return int(self.scores.index.max())

    @cached_property
    def final(self) -> dict[tuple[str, str], float]:
        """(env, split) -> score at the last step: read once, as selecting across trials reads it often."""
        row = self.scores.to_numpy()[self.scores.index.get_loc(self.last_step)]
        return dict(zip(self.scores.columns, map(float, row)))

    def report_split(self, env: str) -> str:
        return TEST if self.has(env, TEST) else TRAIN

    def extras_at(self, step: int) -> dict[str, float]:
        if self.extras is None or step not in self.extras.index:
            return {}
        row = self.extras.loc[step]
        return {k: float(v) for k, v in row.items() if v == v}  # drop NaN


@dataclass(frozen=True)
class Selected:
    run: str
    step: int
    value: float
    extras: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Missing:
    reason: str


NOT_LAUNCHED = "needs runs that were not launched"
TRAIN_ENVS = "train envs"  # the extra column with the training environments' mean score
NO_VAL = "no val split"
NO_TEST_ENV = "no test environment, every environment trained"


class SelectionStrategy:
    name: ClassVar[str] = ""
    title: ClassVar[str] = ""

    def select(self, candidates: Sequence[Candidate], test_envs: tuple[str, ...], env: str) -> Selected | Missing:
        """Choose among ``candidates`` (all runs of one cell and trial) for test set ``test_envs``.

        ``env`` (one of ``test_envs``) is the environment whose score is reported.
        """
        raise NotImplementedError

    def select_cell(self, pools: Mapping[int, Sequence[Candidate]], test_envs: tuple[str, ...], env: str
                    ) -> dict[int, Selected | Missing]:
        """Choose for every trial of one cell at once: ``pools`` maps each trial to its runs.

        The aggregator calls this; a strategy whose choice in one trial depends on the
        others (one configuration for all trials) overrides it. By default each trial is
        its own selection problem.
        """
        return {trial: self.select(pool, test_envs, env) for trial, pool in pools.items()}

    @staticmethod
    def _same_test_set(candidates: Sequence[Candidate], test_envs: tuple[str, ...]) -> list[Candidate]:
        return sorted((c for c in candidates if c.test_envs == test_envs), key=lambda c: (c.hparams_seed, c.config))

    @staticmethod
    def _report(candidate: Candidate, step: int, env: str) -> Selected:
        value = float(candidate.scores.loc[step, (env, candidate.report_split(env))])
        extras = candidate.extras_at(step)
        # the training environments' mean score at the same checkpoint: the "train acc"
        # that the IRM paper reports beside the test accuracy
        train = [float(candidate.scores.loc[step, (e, TRAIN)]) for e in candidate.train_envs
                 if candidate.has(e, TRAIN)]
        if train:
            extras = {TRAIN_ENVS: sum(train) / len(train), **extras}
        return Selected(candidate.run, int(step), value, extras)


class TrainingDomainValidation(SelectionStrategy):
    """Pick the checkpoint, then the draw, maximising the training envs' mean "val" score.

    DomainBed's IIDAccuracySelectionMethod: per draw, the step whose mean validation
    score over the training environments is best; then the draw with the best such value.
    """

    name = TRAINING_DOMAIN
    title = "training-domain validation"

    def select(self, candidates, test_envs, env):
        runs = self._same_test_set(candidates, test_envs)
        if not runs:
            return Missing("no runs")
        best: tuple[float, Candidate, int] | None = None
        for c in runs:
            columns = [(e, VAL) for e in c.train_envs]
            if not columns or not all(c.has(*col) for col in columns):
                return Missing(f"{NO_VAL} in the training environments (training-domain validation needs holdout > 0; --selection last reports the final checkpoint)")
            scored = _best_step(c, c.scores[columns].mean(axis=1))
            if scored is not None and (best is None or scored[0] > best[0]):
                best = (scored[0], c, scored[1])
        if best is None:
            return Missing("no evaluated checkpoints")
        return self._report(best[1], best[2], env)


class TestDomainOracle(SelectionStrategy):
    """Pick the draw whose test environment scores best on its "val" split at the last checkpoint.

    DomainBed's OracleSelectionMethod: an upper bound that peeks at the test domain, using
    only the last checkpoint (no early stopping on test data).
    """

    name = ORACLE
    title = "test-domain oracle"

    def select(self, candidates, test_envs, env):
        runs = self._same_test_set(candidates, test_envs)
        if not runs:
            return Missing("no runs")
        if not test_envs:
            return Missing(f"{NO_TEST_ENV}: the test-domain oracle selects on a test environment's val split")
        best: tuple[float, Candidate, int] | None = None
        for c in runs:
            if not c.has(env, VAL):
                return Missing(f"{NO_VAL} in the test environment (the oracle needs holdout > 0; --selection last reports the final checkpoint)")
            step = c.scores.index.max()
            value = c.scores.loc[step, (env, VAL)]
            if value != value:
                continue
            if best is None or c.utility(value) > best[0]:
                best = (c.utility(value), c, step)
        if best is None:
            return Missing("no evaluated checkpoints")
        return self._report(best[1], best[2], env)


class LastCheckpoint(SelectionStrategy):
    """The final step's score: the IRM protocol's numbers (one fixed configuration, no selection).

    Works without a "val" split. With several hyperparameter configurations in a cell there
    is nothing to choose by, so the cell is missing rather than silently picking one.
    """

    name = LAST
    title = "last checkpoint"

    def select(self, candidates, test_envs, env):
        runs = self._same_test_set(candidates, test_envs)
        if not runs:
            return Missing("no runs")
        if len({c.config for c in runs}) > 1:
            return Missing(f"{len(runs)} hyperparameter configurations: the last checkpoint needs exactly one "
                           f"per cell (use another selection)")
        c = runs[0]
        return self._report(c, c.scores.index.max(), env)


class LeaveOneEnvironmentOut(SelectionStrategy):
    """Leave-one-environment-out cross-validation over the training environments.

    DomainBed's LeaveOneOutSelectionMethod: for test env t and each other env v, a run with
    test envs {t, v} (same configuration) scores v on its "train" (DomainBed "in") split;
    per draw and step the mean over v is the validation score; pick the best step, then
    the best draw, and report t from the run whose only test env is t, at that step.
    """

    name = LOO
    title = "leave-one-environment-out"

    def select(self, candidates, test_envs, env):
        if not test_envs:
            if not self._same_test_set(candidates, test_envs):
                return Missing("no runs")
            return Missing(f"{NO_TEST_ENV}: leave-one-out holds out one training environment beside a test "
                           f"environment")
        if len(test_envs) != 1:
            return Missing(f"{NOT_LAUNCHED}: leave-one-out reports runs with a single test environment")
        base = self._same_test_set(candidates, test_envs)
        if not base:
            return Missing("no runs")
        others = [e for e in _env_order(base[0]) if e != env]
        by_key = {(c.test_envs, c.config): c for c in candidates}
        best: tuple[float, Candidate, int] | None = None
        missing_sets: set[tuple[str, ...]] = set()
        for c in base:
            order = _env_order(c)
            held = []
            for v in others:
                pair = tuple(e for e in order if e in (env, v))
                partner = by_key.get((pair, c.config))
                if partner is None:
                    missing_sets.add(pair)
                else:
                    held.append((v, partner))
            if len(held) != len(others):
                continue
            val = None
            for v, partner in held:
                column = partner.scores[(v, partner.report_split(v))]
                val = column if val is None else val + column
            scored = _best_step(c, (val / len(held)).reindex(c.scores.index))
            if scored is not None and (best is None or scored[0] > best[0]):
                best = (scored[0], c, scored[1])
        if best is None:
            if missing_sets:
                sets = "; ".join("{" + ", ".join(s) + "}" for s in sorted(missing_sets))
                return Missing(f"{NOT_LAUNCHED} (test envs {sets})")
            return Missing("no evaluated checkpoints")
        return self._report(best[1], best[2], env)


class ConfigurationAcrossTrials(SelectionStrategy):
    """One configuration per cell for every trial: the best validation error summed over the
    training environments, averaged over the trials, at the final iterate.

    The linear unit tests' selection (Aubin et al. 2021, scripts/collect_results.py of
    facebookresearch/InvarianceUnitTests): per (dataset, method), the hyperparameter draw
    whose "val" score summed over the training environments at the last checkpoint is best
    on average over all data seeds; that draw's score is reported in every trial. A draw's
    configuration is the same in every trial (it depends on the hyperparameter seed alone),
    so configurations are matched across trials by ``config``. A configuration is averaged
    over the trials in which it has a value; one that lacks the chosen configuration's run
    is missing. Ties go to the lowest hyperparameter seed.
    """

    name = CONFIG_ACROSS_TRIALS
    title = "one configuration per dataset and method across trials, by summed validation at the final iterate"

    def select(self, candidates, test_envs, env):
        return self.select_cell({0: candidates}, test_envs, env)[0]

    def select_cell(self, pools, test_envs, env):
        runs = {trial: self._same_test_set(pool, test_envs) for trial, pool in pools.items()}
        out: dict[int, Selected | Missing] = {trial: Missing("no runs") for trial, r in runs.items() if not r}
        # configuration -> (lowest hparams seed, {trial: (its run, summed val at the last step)})
        configs: dict[str, tuple[int, dict[int, tuple[Candidate, float]]]] = {}
        for trial, trial_runs in runs.items():
            for c in trial_runs:
                columns = [(e, VAL) for e in c.train_envs]
                if not columns or not all(c.has(*col) for col in columns):
                    return {trial: Missing(f"{NO_VAL} in the training environments (this selection needs one; "
                                           f"--selection last reports the final checkpoint)") for trial in pools}
                seed, by_trial = configs.setdefault(c.config, (c.hparams_seed, {}))
                configs[c.config] = (min(seed, c.hparams_seed), by_trial)
                if trial in by_trial:
                    continue  # a second run of one configuration in one trial: the lowest seed's counts
                val = [c.final[col] for col in columns]
                if not any(v != v for v in val):  # NaN: not evaluated at the last step
                    by_trial[trial] = (c, sum(val))
        best: tuple[float, int, str] | None = None  # (mean utility, -seed, config)
        for config, (seed, by_trial) in configs.items():
            if not by_trial:
                continue
            any_run = next(iter(by_trial.values()))[0]
            mean = sum(value for _, value in by_trial.values()) / len(by_trial)
            key = (any_run.utility(mean), -seed, config)
            if best is None or key[:2] > best[:2] or (key[:2] == best[:2] and config < best[2]):
                best = key
        for trial, trial_runs in runs.items():
            if not trial_runs:
                continue
            if best is None:
                out[trial] = Missing("no evaluated checkpoints")
            elif trial not in configs[best[2]][1]:
                out[trial] = Missing(f"the configuration chosen across trials (hparams seed {-best[1]}) has no "
                                     f"evaluated run in this trial")
            else:
                c = configs[best[2]][1][trial][0]
                out[trial] = self._report(c, c.last_step, env)
        return out


class TestEnvironmentLast(SelectionStrategy):
    """Per trial, the configuration whose test environment scores best at the last checkpoint.

    The IRM paper's SEM selection (Arjovsky et al. 2019, its synthetic experiments:
    code/experiment_synthetic/models.py of facebookresearch/InvariantRiskMinimization): per
    repetition, its IRM trains on sigma 0.2 and 2 and picks the regulariser by the squared
    error of the final iterate on the whole sigma = 5 environment, without a val split. It
    chooses by the reported score itself (the test environment's "train" split, all of its
    data when nothing is held out; its "test" split when the dataset has one), so the number
    is optimistic, as the test-domain oracle's is, which selects on a held-out "val" split
    instead. Ties go to the lowest hyperparameter seed.
    """

    name = TEST_ENV_LAST
    title = "test environment at the last checkpoint, the IRM paper's SEM selection"

    def select(self, candidates, test_envs, env):
        runs = self._same_test_set(candidates, test_envs)
        if not runs:
            return Missing("no runs")
        if not test_envs:
            return Missing(f"{NO_TEST_ENV}: this selection picks by a test environment's score")
        best: tuple[float, Candidate, int] | None = None
        for c in runs:
            value = c.final.get((env, c.report_split(env)), math.nan)
            if value != value:
                continue
            if best is None or c.utility(value) > best[0]:
                best = (c.utility(value), c, c.last_step)
        if best is None:
            return Missing("no evaluated checkpoints")
        return self._report(best[1], best[2], env)


def _best_step(c: Candidate, validation) -> tuple[float, int] | None:
    """(utility, step) of the best evaluated step of one run's validation series; the first
    maximum, so ties go to the earliest step. None when no step was evaluated."""
    utility = validation.dropna().map(c.utility)
    if utility.empty:
        return None
    step = utility.idxmax()
    return utility[step], step


def _env_order(c: Candidate) -> list[str]:
    """All environment names in index order (recovered from the score columns' first level)."""
    seen: list[str] = []
    for e, _ in c.scores.columns:
        if e not in seen:
            seen.append(e)
    return seen


STRATEGIES: dict[str, type[SelectionStrategy]] = {
    cls.name: cls for cls in (TrainingDomainValidation, LeaveOneEnvironmentOut, TestDomainOracle, LastCheckpoint,
                              ConfigurationAcrossTrials, TestEnvironmentLast)
}
SELECTIONS = tuple(STRATEGIES)


def get_strategy(name: str) -> SelectionStrategy:
    from invbench.errors import ConfigError

    if name not in STRATEGIES:
        raise ConfigError(f"unknown selection {name!r}; allowed: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()


def candidates_from(results) -> dict[tuple, list[Candidate]]:
    """(dataset, source, method, trial) -> that trial's runs, from a loaded Results."""
    from invbench.metrics import metric

    records = results.records
    out: dict[tuple, list[Candidate]] = {}
    if records.empty:
        return out
    evals = records[(records["kind"] == "eval") & (records["metric"] == records["score"])]
    extras = records[records["kind"] == "extra"]
    eval_groups = _pivot_by_run(evals, ["env", "split"])
    extra_groups = _pivot_by_run(extras, "metric")
    for row in results.runs.itertuples(index=False):
        scores = eval_groups.get(row.run)
        if scores is None:
            continue
        order = [e for e in row.env_names if e in scores.columns.get_level_values(0)]
        scores = scores.reindex(columns=[(e, s) for e in order for s in SPLITS if (e, s) in scores.columns])
        ex = extra_groups.get(row.run)
        candidate = Candidate(run=row.run, config=row.config, hparams_seed=row.hparams_seed,
                              test_envs=tuple(row.test_envs), train_envs=tuple(row.train_envs),
                              higher_is_better=metric(row.score).higher_is_better is not False, scores=scores.sort_index(), extras=ex)
        out.setdefault((row.dataset, row.source, row.method, row.trial), []).append(candidate)
    return out


def _pivot_by_run(records, columns) -> dict:
    """run -> its values as a frame (index step, ascending; ``columns`` as columns; a value
    recorded twice: the last), from one pivot of all runs: a pivot per run costs
    milliseconds, which thousands of runs (the linear unit tests' sweep) make minutes."""
    if records.empty:
        return {}
    wide = records.pivot_table(index=["run", "step"], columns=columns, values="value", aggfunc="last")
    return {run: part.droplevel(0).dropna(axis=1, how="all") for run, part in wide.groupby(level=0, sort=False)}
