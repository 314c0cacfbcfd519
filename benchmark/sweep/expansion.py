"""A sweep's run specs: the deterministic expansion of a checked sweep file.

Order: dataset, test environments, method, hyperparameter draw, trial. The number of runs
is counted before anything is expanded, and a sweep of more than MAX_RUNS runs is refused
with that count, so a slip such as ``trials = 100000000`` fails at once instead of
expanding for minutes.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping

from invbench.errors import ConfigError
from invbench.sweep.schema import SweepConfig

MAX_RUNS = 100_000
NOTE_ABOVE = 5_000  # a sweep this large says that it is being expanded (it takes seconds)


def expand(config: SweepConfig, *, note: Callable[[str], None] | None = None) -> list:
    """The sweep's run specs, in a fixed order. Duplicates (the same run id) are kept once.

    Raises ConfigError or UnknownNameError for a bad dataset, method, option, preset or
    hyperparameter, and ConfigError for a sweep of more than MAX_RUNS runs. ``note`` gets
    one line before a long expansion starts.
    """
    from invbench.registry import DATASETS
    from invbench.spec import make_spec

    plan = []
    for entry in config.datasets:
        family = DATASETS.get(entry.name)
        options = family.resolve_options(entry.options)
        plan.append((entry, options, _test_env_sets(family, options, entry.test_envs)))
    total = check_size(config, sum(len(sets) * sum(len(grid_points(config, m)) for m in entry.methods or config.methods)
                                   for entry, _, sets in plan))
    if note is not None and total > NOTE_ABOVE:
        note(f"expanding {total:,} runs ...")
    specs, seen = [], set()
    for entry, options, test_env_sets in plan:
        for test_envs in test_env_sets:
            for method in (m for m in config.methods if not entry.methods or m in entry.methods):
                overrides = {**config.hparams, **entry.hparams, **config.method_hparams.get(method, {})}
                overrides = _relevant(overrides, method, entry.name, config)
                for point, draw, trial in itertools.product(grid_points(config, method), range(config.hparam_draws),
                                                            range(config.trials)):
                    spec = make_spec(
                        entry.name, method, dataset_options=options, test_envs=test_envs, trial=trial,
                        hparams_seed=draw, overrides={**overrides, **point}, preset=config.preset,
                        steps=entry.steps or config.steps, eval_every=entry.eval_every or config.eval_every,
                        holdout_fraction=_first(entry.holdout_fraction, config.holdout_fraction),
                        model=config.model, data_dir=config.data_dir, device=config.device,
                        train_data=entry.train_data,
                    )
                    if spec.run_id not in seen:
                        seen.add(spec.run_id)
                        specs.append(spec)
    return specs


def grid_points(config: SweepConfig, method: str) -> list[dict[str, Any]]:
    """Every combination of the method's [method_grid] values ([{}]: no grid), in file order."""
    grid = config.method_grid.get(method, {})
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def check_size(config: SweepConfig, method_sets: int) -> int:
    """The number of runs (before duplicates are dropped); ConfigError above MAX_RUNS.
    ``method_sets``: the (test-environment set, method, grid point) triples over the dataset
    entries."""
    total = method_sets * config.hparam_draws * config.trials
    if total > MAX_RUNS:
        raise ConfigError(
            f"the sweep would expand to {total:,} runs ({method_sets} pair(s) of test-environment set and "
            f"method (grid points counted) over {len(config.datasets)} dataset(s) x {config.hparam_draws:,} "
            f"hparam_draws x {config.trials:,} trials), more than the limit of {MAX_RUNS:,}; "
            f"lower trials or hparam_draws, or split the sweep")
    return total


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _relevant(overrides: dict[str, Any], method: str, dataset: str, config: SweepConfig) -> dict[str, Any]:
    """Sweep-wide [hparams] may name a method's own hyperparameter (penalty_weight): the
    methods without it ignore it, but a name that no method of the sweep knows is an error."""
    from invbench.hparams import validate_overrides
    from invbench.spec import hparam_space

    space = hparam_space(method, dataset, protocol=config.preset, model=config.model)
    known_anywhere = set()
    for other in config.methods:
        known_anywhere |= set(hparam_space(other, dataset, protocol=config.preset, model=config.model))
    unknown = sorted(set(overrides) - known_anywhere)
    if unknown:
        validate_overrides(space, {k: overrides[k] for k in unknown}, f"the sweep's methods on {dataset!r}")
    # a method's own table must only name its hyperparameters
    validate_overrides(space, dict(config.method_hparams.get(method, {})),
                       f"method {method!r} ([method_hparams.{method}])")
    return {k: v for k, v in overrides.items() if k in space}


def _test_env_sets(family, options: Mapping[str, Any], test_envs: Any) -> list[tuple[int, ...] | None]:
    if test_envs is None:
        return [None]
    if test_envs == "each":
        return [(i,) for i in range(len(family.env_names(options)))]
    return [tuple(s) for s in test_envs]

