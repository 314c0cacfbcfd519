"""A method for the interrupt tests: ERM that stops mid-run until the test acts.

At step $INVBENCH_TEST_BLOCK_STEP, while the file $INVBENCH_TEST_GATE exists, it writes
the file $INVBENCH_TEST_MARKERS/<pid> and waits for the gate to go. A test then knows a run
is mid-way (its records up to the last evaluation before that step are on disk) and kills,
interrupts, cancels or pre-empts it, instead of hoping a long run is still going. Removing
the gate lets every waiting and later run through, so a resumed run trains to the end. The
numbers are ERM's: waiting changes nothing that a run computes.

Loaded in other processes through INVBENCH_PLUGINS (workers and SLURM jobs inherit it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from invbench.methods.erm import ERM
from invbench.registry import METHODS

NAME = "blocking_erm"
GATE_ENV, MARKERS_ENV, STEP_ENV = "INVBENCH_TEST_GATE", "INVBENCH_TEST_MARKERS", "INVBENCH_TEST_BLOCK_STEP"


@METHODS.register(NAME)
class BlockingERM(ERM):
    """ERM that waits at step $INVBENCH_TEST_BLOCK_STEP while $INVBENCH_TEST_GATE exists (a test's method)."""

    def objective(self, model, batches, step):
        if step == int(os.environ[STEP_ENV]):
            gate = Path(os.environ[GATE_ENV])
            if gate.exists():
                (Path(os.environ[MARKERS_ENV]) / str(os.getpid())).touch()
                while gate.exists():  # a signal ends the wait: SIGKILL, SIGTERM, Ctrl-C, SLURM's SIGUSR2
                    time.sleep(0.02)
        return super().objective(model, batches, step)
