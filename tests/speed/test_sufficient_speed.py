"""The IRM paper's SEM IRM (irm_sem on feature_matrix) per pack step: on the examples or on
each environment's sufficient statistics (invbench.sufficient), in one pack of 1,200 runs
(200 repetitions x the code's 6 regularisers: one SEM setup of the reproduction).

Skipped by `make test`; `make bench` runs it with the others. Seconds per run-step go in
extra_info:
    .venv/bin/python -m pytest tests/speed/test_sufficient_speed.py -o addopts="" --benchmark-only
"""

from __future__ import annotations

import pytest

RUNS_PER_REG = 200
REGS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


# one intra-op thread: timings that do not depend on what else the machine runs
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("train_data", ["examples", "sufficient_statistics"])
def test_irm_sem_pack_step(benchmark, train_data):
    from invbench.spec import make_spec
    from invbench.trainer import Trainer

    specs = [make_spec("linear_sem", "irm_sem", preset="irm-paper-sem", trial=trial, overrides={"reg": reg},
                       train_data=train_data, device="cpu") for trial in range(RUNS_PER_REG) for reg in REGS]
    trainer = Trainer(specs)
    trainer.step()  # warm-up
    benchmark.pedantic(trainer.step, rounds=20, iterations=5)
    benchmark.extra_info["runs"] = len(specs)
    benchmark.extra_info["seconds_per_run_step"] = benchmark.stats.stats.median / len(specs)
