"""The reproductions: a paper's table, the sweep that reproduces it, and how it is reported.

A reproduction is data: its sweep file (benchmark/sweeps/reproduce_NAME.toml: datasets,
methods, protocol, trials, draws, steps), the selections its tables use (the paper's
first), the published numbers it is held against (results/published/NAME.csv), which steps
its tidy files keep, and the deviations that the sweep's protocols do not already state
(those are added from the protocols themselves). `small` is the regression-tracking version
that `make test` runs: the same sweep shrunk by these overrides (trials, draws, steps, dataset
options, and optionally fewer datasets, entries, test environments or methods).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from invbench.errors import ConfigError
from invbench.results.selection import CONFIG_ACROSS_TRIALS, LAST, ORACLE, TEST_ENV_LAST, TRAINING_DOMAIN


@dataclass(frozen=True)
class Reproduction:
    name: str
    title: str
    sweep: str  # a shipped sweep file's stem
    selections: tuple[str, ...]  # the first is the paper's, and the headline
    published: str | None  # results/published/<published>.csv
    keep: str = "last"  # the evaluation steps the tidy files keep: "last" or "all"
    # published datasets held against ours (MNIST's numbers against Fashion-MNIST's runs)
    dataset_map: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # deviations beyond the protocols' own
    small: Mapping[str, Any] = field(default_factory=dict)  # sweep overrides of the make-test version


REPRODUCTIONS: dict[str, Reproduction] = {}


def register(reproduction: Reproduction) -> Reproduction:
    REPRODUCTIONS[reproduction.name] = reproduction
    return reproduction


def get(name: str) -> Reproduction:
    if name not in REPRODUCTIONS:
        raise ConfigError(f"unknown reproduction {name!r}; allowed: {', '.join(REPRODUCTIONS)}")
    return REPRODUCTIONS[name]


register(Reproduction(
    name="unit_tests",
    title="Linear unit tests for invariance (Aubin et al. 2021)",
    sweep="reproduce_unit_tests",
    selections=(CONFIG_ACROSS_TRIALS, TRAINING_DOMAIN),
    published="unit_tests",
    notes=(
        "coral and mmd are left out: a linear model's featurizer is the identity, so their penalties are "
        "constants and they train exactly as ERM",
        "runs are evaluated at step 0 and at the final iterate only (the selection reads the final iterate)",
    ),
    small={"trials": 2, "hparam_draws": 2, "steps": 100, "eval_every": 100, "options": {"n_per_env": 200},
           "datasets": ("example1", "example2s"), "hparams": {"anneal_iters": 20, "ib_anneal_iters": 20}},
))

register(Reproduction(
    name="irm_sem",
    title="Synthetic linear SEMs of the IRM paper (Arjovsky et al. 2019, section 5.1)",
    sweep="reproduce_irm_sem",
    selections=(TEST_ENV_LAST, LAST),
    published="irm_sem",
    notes=(
        "the sweep follows the linear-sem protocol (full batch) and gives irm_sem the code's lr 1e-3 and 100,000 "
        "steps, one run per regulariser, the six chosen among per repetition by test_env_last (protocol "
        "irm-paper-sem holds the same values for single runs)",
    ),
    small={"trials": 2, "steps": 300, "eval_every": 300, "options": {"n_per_env": 300},
           "hparams": {"anneal_iters": 20}, "entries": (0, 1, 2)},  # one setup: F, y-noise sigma, U
))

register(Reproduction(
    name="cfmnist_irm",
    title="Colored Fashion-MNIST, IRM protocol (Arjovsky et al. 2019; Krueger et al. 2021; Rame et al. 2022)",
    sweep="reproduce_cfmnist_irm",
    selections=(LAST,),
    published="cmnist_irm",
    keep="all",  # six evaluations per run: the training curves are worth their bytes
    dataset_map={"cmnist_irm": "cfmnist_irm"},
    notes=(
        "Fashion-MNIST (label: class < 5) stands in for MNIST, which cannot be downloaded on the machine that "
        "ran it: the published numbers are MNIST's, so the comparison shows the same effect on other images, "
        "not the same numbers; the sweep reproduce_cmnist_irm runs the MNIST version where MNIST can be had",
        "a restart is a trial: each draws its own colours and label noise as well as its own initialisation",
    ),
    # the image pipeline (data, colour, MLP, the grayscale model) of three methods: the
    # methods' own numbers are tracked on the linear reproductions' small versions
    small={"trials": 1, "steps": 20, "eval_every": 20, "options": {"image_size": 7},
           "methods": ("erm", "irm", "oracle")},
))

register(Reproduction(
    name="cfmnist_domainbed",
    title="Colored Fashion-MNIST, DomainBed protocol (Gulrajani & Lopez-Paz 2021), reduced",
    sweep="reproduce_cfmnist_domainbed",
    selections=(TRAINING_DOMAIN, ORACLE),
    published="cmnist_domainbed",
    keep="all",
    dataset_map={"cmnist_domainbed": "cfmnist_domainbed"},
    notes=(
        "Fashion-MNIST stands in for MNIST (see cfmnist_irm): the published numbers are MNIST's",
        "reduced: the draws, trials and steps of the sweep file (its header says how far), on 2 CPU cores",
    ),
    # the CNN pipeline, with the two feature-matching methods that are ERM on linear models
    small={"trials": 1, "hparam_draws": 1, "steps": 20, "eval_every": 10, "options": {"image_size": 7},
           "test_envs": ((2,),), "methods": ("erm", "coral", "mmd")},
))
