"""Regression tracking of the leaderboards: the small version of each reproduction (its sweep
shrunk: tiny data, few steps and trials, every method) runs here and every per-trial value of
its headline selection must match the committed baseline (results/NAME/small-baseline.csv),
so a change that moves a method's numbers fails CI. One baseline per selection of the
reproduction. After an intended change, remake them: `invbench reproduce NAME --small --runs DIR`
then, per SELECTION, `invbench collect DIR --selection SELECTION
--save-baseline results/NAME/small-baseline-SELECTION.csv --force`.
"""

from pathlib import Path

import pytest

from invbench.reproduce.catalogue import REPRODUCTIONS

ROOT = Path(__file__).resolve().parent.parent
# Deterministic runs give the same bytes on one machine; another CPU may round a logit
# differently and flip a prediction: a tolerance of 0.2 % of the value (0.002 absolute below 1).
TOLERANCE = 2e-3
NEEDS_FASHION = {"cfmnist_irm", "cfmnist_domainbed"}


@pytest.mark.parametrize("name", sorted(REPRODUCTIONS))
def test_the_small_reproduction_matches_its_committed_baseline(name, cli, tmp_path):
    from invbench.datasets import _sources

    if name in NEEDS_FASHION and not _sources.DEBIAN_FASHION_DIR.is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    reproduction = REPRODUCTIONS[name]
    baselines = {s: ROOT / "results" / name / f"small-baseline-{s}.csv" for s in reproduction.selections}
    for path in baselines.values():
        assert path.is_file(), f"no committed baseline {path}"
    made = cli("reproduce", name, "--small", "--runs", tmp_path / "runs", "--results", tmp_path / "results",
               "--workers", "1", env={"INVBENCH_OFFLINE": "1"}, timeout=900)
    assert made.returncode == 0, made.stderr[-3000:]
    assert (tmp_path / "results" / name / "README.md").is_file()
    for selection, baseline in baselines.items():
        compared = cli("compare", baseline, tmp_path / "runs", "--selection", selection, "--moved", str(TOLERANCE))
        assert compared.returncode == 0, f"numbers moved ({selection}):\n{compared.stdout}{compared.stderr}"
