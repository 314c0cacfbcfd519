from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]

# One BLAS / OpenMP thread in this process and every process it starts (set before numpy and
# torch load; an explicit setting wins). The tests' models and matrices are tiny: extra
# threads only spin against each other on a busy machine, which made a file of small
# least-squares fits 10 times slower at load 5 on 2 cores.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

pytest_plugins = ["slurm_cluster", "blocking_method"]  # a throwaway SLURM cluster; runs that wait for a test


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run ``invbench`` in a fresh process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "invbench.cli", *map(str, args)], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


class CliResult(NamedTuple):
    code: int
    out: str
    err: str

    # a subprocess result's names, for tests that read either
    @property
    def returncode(self) -> int:
        return self.code

    @property
    def stdout(self) -> str:
        return self.out

    @property
    def stderr(self) -> str:
        return self.err


@pytest.fixture
def invbench(capsys):
    """The CLI in-process (a fresh interpreter per call would cost seconds of imports):
    ``invbench(*args)`` -> (code, out, err)."""
    from invbench.cli import main

    def call(*args) -> CliResult:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)
    return call


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for tests that compare the bytes of runs trained in this
    process with runs trained elsewhere (and tiny models gain nothing from more)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
