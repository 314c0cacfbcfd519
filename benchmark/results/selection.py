"""Model selection: which hyperparameter draw and which checkpoint a reported number comes from.

Gulrajani & Lopez-Paz (2021), "In Search of Lost Domain Generalization", section 3 and
DomainBed's model_selection.py, plus the IRM protocol's last checkpoint (Arjovsky et al.
2019). Each strategy solves one selection problem: the runs of one cell (dataset, data
source, method) and one trial, for one test-environment set, reporting one test env.

The reported number, for every strategy: the test environment's score (accuracy, or MSE
for regression, lower being better) on its "train" split -- all of that environment's
data except the "val" holdout, DomainBed's "in" split -- or on its "test" split when the
dataset defines one (the linear unit tests' shuffled test split).

Ties are broken deterministically: the earliest step, then the lowest hyperparameter seed.
A strategy that cannot choose returns ``Missing`` with a reason for people.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from invbench.splits import SPLITS, TEST, TRAIN, VAL

# The selection strategies' names: the CLI's --selection choices and the tables' labels.
TRAINING_DOMAIN, LOO, ORACLE, LAST = "training_domain", "loo", "oracle", "last"
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


class SelectionStrategy:
    name: ClassVar[str] = ""
    title: ClassVar[str] = ""

    def select(self, candidates: Sequence[Candidate], test_envs: tuple[str, ...], env: str) -> Selected | Missing:
        """Choose among ``candidates`` (all runs of one cell and trial) for test set ``test_envs``.

        ``env`` (one of ``test_envs``) is the environment whose score is reported.
        """
        raise NotImplementedError

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
    cls.name: cls for cls in (TrainingDomainValidation, LeaveOneEnvironmentOut, TestDomainOracle, LastCheckpoint)
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
    eval_groups = dict(tuple(evals.groupby("run", sort=False)))
    extra_groups = dict(tuple(extras.groupby("run", sort=False)))
    for row in results.runs.itertuples(index=False):
        frame = eval_groups.get(row.run)
        if frame is None:
            continue
        scores = frame.pivot_table(index="step", columns=["env", "split"], values="value", aggfunc="last")
        order = [e for e in row.env_names if e in scores.columns.get_level_values(0)]
        scores = scores.reindex(columns=[(e, s) for e in order for s in SPLITS if (e, s) in scores.columns])
        ex = extra_groups.get(row.run)
        ex = ex.pivot_table(index="step", columns="metric", values="value", aggfunc="last") if ex is not None else None
        candidate = Candidate(run=row.run, config=row.config, hparams_seed=row.hparams_seed,
                              test_envs=tuple(row.test_envs), train_envs=tuple(row.train_envs),
                              higher_is_better=metric(row.score).higher_is_better is not False, scores=scores.sort_index(), extras=ex)
        out.setdefault((row.dataset, row.source, row.method, row.trial), []).append(candidate)
    return out
