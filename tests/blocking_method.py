"""Fixture for the interrupt tests: the method "blocking_erm" (tests/plugins/blocking_erm.py)
stops its runs at a known step until the test has killed, interrupted, cancelled or
pre-empted them. The tests wait for that event, not for a long run to be still going."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from invbench.registry import PLUGINS_ENV

PLUGINS = Path(__file__).resolve().parent / "plugins"
BLOCK_STEP = 25  # with eval_every = 10: records 0, 10, 20 are written and step 20 is checkpointed


@dataclass
class BlockingMethod:
    name: str
    step: int
    gate: Path
    markers: Path

    def pids(self) -> list[int]:
        """The processes waiting (or that waited) at the step."""
        return sorted(int(p.name) for p in self.markers.iterdir())

    def wait(self, count: int = 1, process=None, timeout: float = 120) -> list[int]:
        """Wait until ``count`` processes wait at the step; return their pids. Fails at once
        when ``process`` (the launcher) ends first."""
        deadline = time.monotonic() + timeout
        while len(pids := self.pids()) < count:
            if process is not None and process.poll() is not None:
                pytest.fail(f"the launcher ended (exit {process.returncode}) before {count} run(s) "
                            f"reached step {self.step}; {len(pids)} did")
            if time.monotonic() > deadline:
                pytest.fail(f"{len(pids)} of {count} run(s) reached step {self.step} within {timeout} s")
            time.sleep(0.02)
        return pids

    def release(self) -> None:
        """Let waiting runs, and every later one, train to the end."""
        self.gate.unlink(missing_ok=True)


@pytest.fixture
def blocking_method(tmp_path, monkeypatch):
    """Registers "blocking_erm" here and, through the environment, in every process started
    from here (CLI, local workers, SLURM jobs). Its runs wait at BLOCK_STEP until ``release``."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    import blocking_erm
    from invbench.registry import METHODS

    folder = tmp_path / "blocking"
    (folder / "markers").mkdir(parents=True)
    blocker = BlockingMethod(blocking_erm.NAME, BLOCK_STEP, folder / "gate", folder / "markers")
    blocker.gate.touch()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv(PLUGINS_ENV, "blocking_erm")
    monkeypatch.setenv(blocking_erm.GATE_ENV, str(blocker.gate))
    monkeypatch.setenv(blocking_erm.MARKERS_ENV, str(blocker.markers))
    monkeypatch.setenv(blocking_erm.STEP_ENV, str(BLOCK_STEP))
    # registered in this process for this test only (the import registers it once per session)
    METHODS._items.pop(blocker.name, None)
    monkeypatch.setitem(METHODS._items, blocker.name, blocking_erm.BlockingERM)
    yield blocker
    blocker.release()  # a process left waiting (a failed test) finishes instead of spinning
