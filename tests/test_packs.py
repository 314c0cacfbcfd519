"""Packs of runs: a run's records do not depend on the pack it trained in, and a pack keeps
the single-run engine's exactly-once records through divergence, retry, SIGKILL, resume at
different steps, checkpoints that do not fit, runs done already and runs busy elsewhere.

Every comparison is between bytes of metrics.jsonl: a run trained alone (``run``) is the
reference that a run trained in a pack must reproduce."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from slurm_cluster import steps_of

from invbench.hparams import Fixed, HParam
from invbench.methods.erm import ERM
from invbench.packing import make_packs, pack_key
from invbench.registry import METHODS
from invbench.rundir import run_lock, run_status
from invbench.runner import (CHECKPOINT, DONE, ERROR, METRICS, STARTED, TIMING, RunFailedError, run,
                             run_pack)
from invbench.spec import make_spec

pytestmark = pytest.mark.filterwarnings("ignore::invbench.spec.HParamWarning")


def shipped_methods() -> list[str]:
    """Every method registered by invbench itself. Methods that tests register for their own
    purposes (plugins such as blocking_erm) are not part of the suite's registry."""
    return sorted(name for name in METHODS.names()
                  if METHODS.get(name).__module__.startswith("invbench.methods."))


def spec_for(setting: str, method: str, *, trial: int = 0, draw: int = 0, steps: int = 30, **overrides):
    """A small spec of ``setting``; draws > 0 differ in every per-run number of the method's
    search space (lr, l2, weight decay, penalty weight, eta...). A method with an anneal step
    gets one inside the run (different per draw), so per-run optimizer resets happen."""
    if setting == "linear_sem minibatch":  # regression, linear model, per-run rows each step
        kwargs = dict(dataset="linear_sem", dataset_options={"n_per_env": 100}, fixed={"batch_size": 32})
    elif setting == "example2 mlp full batch":  # binary classification through the MLP
        kwargs = dict(dataset="example2", dataset_options={"n_per_env": 64}, model="mlp",
                      fixed={"batch_size": 0, "hidden_dim": 16})
    elif setting == "example2 mlp odd batch":  # 60 examples: halves of 30, not a multiple of 16
        kwargs = dict(dataset="example2", dataset_options={"n_per_env": 60}, model="mlp",
                      fixed={"batch_size": 0, "hidden_dim": 16})
    else:
        raise ValueError(setting)
    fixed = kwargs.pop("fixed")
    make = lambda extra: make_spec(kwargs["dataset"], method, dataset_options=kwargs["dataset_options"],
                                   model=kwargs.get("model"), trial=trial, hparams_seed=draw, steps=steps,
                                   eval_every=10, device="cpu", overrides={**fixed, **extra})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = make(overrides)
        if "anneal_iters" in spec.hparams and "anneal_iters" not in overrides:
            spec = make({"anneal_iters": 4 + (3 * draw + trial) % 20, **overrides})
    return spec


def metrics(run_dir: Path) -> bytes:
    return (run_dir / METRICS).read_bytes()


def alone(spec, root: Path) -> bytes:
    return metrics(run(spec, root))


# 1. A run's records do not depend on its pack -------------------------------------------

SETTINGS = ["linear_sem minibatch", "example2 mlp full batch", "example2 mlp odd batch"]


def pack_of_64(setting: str, method: str):
    """64 compatible specs: 4 trials x 16 hyperparameter draws."""
    return [spec_for(setting, method, trial=trial, draw=draw) for draw in range(16) for trial in range(4)]


def max_relative_difference(a: bytes, b: bytes) -> float:
    """The largest relative difference between the numbers of two metrics.jsonl files with
    the same records (same lines, same keys); inf when their shapes differ."""
    def numbers(value, path=""):
        if isinstance(value, dict):
            for key in sorted(value):
                yield from numbers(value[key], f"{path}/{key}")
        else:
            yield path, value

    lines_a, lines_b = a.decode().splitlines(), b.decode().splitlines()
    if len(lines_a) != len(lines_b):
        return math.inf
    worst = 0.0
    for line_a, line_b in zip(lines_a, lines_b):
        pairs_a, pairs_b = list(numbers(json.loads(line_a))), list(numbers(json.loads(line_b)))
        if [k for k, _ in pairs_a] != [k for k, _ in pairs_b]:
            return math.inf
        for (_, x), (_, y) in zip(pairs_a, pairs_b):
            if x != y:
                worst = max(worst, abs(x - y) / max(abs(x), abs(y)))
    return worst


def check_pack_of_64(tmp_path, method, setting):
    """Train 64 specs as one pack; return (pack bytes, alone bytes) of three of them."""
    specs = pack_of_64(setting, method)
    assert len(make_packs(specs, 64)) == 1, "the specs must make one pack"
    assert len({spec.trial for spec in specs}) == 4 and len({spec.hparams["lr"] for spec in specs}) == 16
    outcomes = run_pack(specs, tmp_path / "pack")
    assert [o.status for o in outcomes] == ["done"] * 64, [o.message for o in outcomes if o.status != "done"]
    # the pack trained 64 different runs: their records are not all one run's
    assert len({metrics(tmp_path / "pack" / spec.dirname) for spec in specs}) == 64
    return [(metrics(tmp_path / "pack" / specs[i].dirname), alone(specs[i], tmp_path / "alone"))
            for i in (0, 37, 63)]  # first, middle (another trial, another draw), last


@pytest.mark.parametrize("method", shipped_methods())
def test_a_linear_run_writes_the_same_bytes_alone_and_in_a_pack_of_64(tmp_path, one_torch_thread, method):
    for packed, single in check_pack_of_64(tmp_path, method, "linear_sem minibatch"):
        assert packed == single


@pytest.mark.parametrize("method", shipped_methods())
def test_an_mlp_run_writes_the_same_bytes_alone_and_in_a_pack_of_64(tmp_path, one_torch_thread, method):
    """The MLP path (three packed layers, full batch, a binary task) is exact too."""
    for packed, single in check_pack_of_64(tmp_path, method, "example2 mlp full batch"):
        assert packed == single


@pytest.mark.parametrize("method", ["erm", "irm", "fishr"])
def test_batches_of_any_size_give_the_same_records_within_1e_6(tmp_path, one_torch_thread, method):
    """With rows per run that are not a multiple of the vector width, elementwise kernels
    (exp, log) run a run's last elements through scalar code alone but through vector code
    in a pack, which rounds differently in the last bit: the records agree within 1e-6
    relative (measured: up to ~3e-7 after 30 steps), not byte for byte."""
    for packed, single in check_pack_of_64(tmp_path, method, "example2 mlp odd batch"):
        assert max_relative_difference(packed, single) <= 1e-6


# 2. A diverging run fails alone ---------------------------------------------------------

BLOWUP = "erm_blowup"


class ERMBlowup(ERM):
    """ERM whose loss becomes infinite at step ``blowup_step`` (-1: never) while the file
    ``ERMBlowup.while_exists`` exists: a run that diverges at a known step, then a fix."""

    hparams = {"blowup_step": HParam(-1, Fixed(25), low=-1, high=10**9, help="step whose loss is infinite")}
    while_exists: Path | None = None

    def objective(self, model, batches, step):
        objective = super().objective(model, batches, step)
        if self.while_exists is not None and self.while_exists.exists():
            blowup = self.per_run("blowup_step") == step
            objective.risk = torch.where(blowup, torch.full_like(objective.risk, math.inf), objective.risk)
        return objective


@pytest.fixture
def blowup_method(tmp_path, monkeypatch):
    """Registers erm_blowup in this process; returns the file whose removal is the fix."""
    switch = tmp_path / "blowup"
    switch.touch()
    monkeypatch.setattr(ERMBlowup, "while_exists", switch)
    monkeypatch.setitem(METHODS._items, BLOWUP, ERMBlowup)
    return switch


def test_a_diverging_run_fails_alone_and_its_pack_mates_finish_as_if_alone(tmp_path, one_torch_thread,
                                                                           blowup_method):
    steps = 40
    specs = [spec_for("linear_sem minibatch", BLOWUP, trial=trial, draw=draw, steps=steps, blowup_step=-1)
             for draw in range(2) for trial in range(3)]
    bad = spec_for("linear_sem minibatch", BLOWUP, trial=1, draw=2, steps=steps, blowup_step=25)
    twin = spec_for("linear_sem minibatch", BLOWUP, trial=1, draw=2, steps=steps, blowup_step=-1)  # no blow-up
    specs.insert(2, bad)
    assert len({pack_key(spec) for spec in specs}) == 1
    outcomes = run_pack(specs, tmp_path / "pack")
    assert [o.status for o in outcomes] == ["done", "done", "failed", "done", "done", "done", "done"]
    failed = tmp_path / "pack" / bad.dirname
    error = json.loads((failed / ERROR).read_text())
    assert error["type"] == "FloatingPointError" and error["message"] == "the loss became inf at step 25"
    assert "the loss became inf at step 25" in outcomes[2].message
    assert not (failed / DONE).exists() and run_status(failed) == "diverged"
    assert steps_of(failed) == [0, 10, 20]  # up to the last evaluation before the divergence
    clean = alone(twin, tmp_path / "twin")  # the numbers before step 25 are the run's without blow-up
    assert metrics(failed) == b"".join(clean.splitlines(keepends=True)[:3])
    for spec in specs:
        if spec is not bad:
            run_dir = tmp_path / "pack" / spec.dirname
            assert (run_dir / DONE).exists() and not (run_dir / ERROR).exists()
            assert metrics(run_dir) == alone(spec, tmp_path / "alone"), spec.dirname
    # alone, the same run diverges at the same step with the same records
    with pytest.raises(RunFailedError, match="the loss became inf at step 25"):
        run(bad, tmp_path / "bad alone")
    assert metrics(tmp_path / "bad alone" / bad.dirname) == metrics(failed)
    # run again as it is (a retry without a fix): it resumes at its checkpoint and diverges again
    with pytest.raises(RunFailedError, match="the loss became inf at step 25"):
        run(bad, tmp_path / "pack")
    assert json.loads((failed / STARTED).read_text())["start"] == {"mode": "resumed", "step": 20}
    assert steps_of(failed) == [0, 10, 20] and not (failed / DONE).exists()
    # fixed: it resumes at step 20 and finishes with the records of a run that never diverged
    blowup_method.unlink()
    run(bad, tmp_path / "pack")
    assert metrics(failed) == clean and not (failed / ERROR).exists()
    assert json.loads((failed / DONE).read_text())["start"] == {"mode": "resumed", "step": 20}


def test_a_run_whose_loss_becomes_nan_stops_and_its_pack_mates_finish_as_if_alone(tmp_path, one_torch_thread):
    """Natural divergence: group DRO's weights overflow (eta = 100) and make the loss NaN."""
    specs = [spec_for("linear_sem minibatch", "groupdro", trial=trial) for trial in range(3)]
    bad = spec_for("linear_sem minibatch", "groupdro", trial=1, eta=100.0)
    outcomes = run_pack([*specs, bad], tmp_path / "pack")
    assert [o.status for o in outcomes] == ["done", "done", "done", "failed"]
    failed = tmp_path / "pack" / bad.dirname
    assert json.loads((failed / ERROR).read_text())["message"] == "the loss became nan at step 0"
    assert steps_of(failed) == [0] and not (failed / DONE).exists()
    for spec in specs:
        assert metrics(tmp_path / "pack" / spec.dirname) == alone(spec, tmp_path / "alone")
    with pytest.raises(RunFailedError, match="the loss became nan at step 0"):
        run(bad, tmp_path / "bad alone")
    assert metrics(tmp_path / "bad alone" / bad.dirname) == metrics(failed)


SWEEP = """name = "packs"
out = "{out}"
methods = ["{method}"]
trials = 2
hparam_draws = 2
steps = 40
eval_every = 10
hparams = {{ batch_size = 32 }}

[[datasets]]
name = "linear_sem"
options = {{ n_per_env = 100 }}

[executor]
kind = "inline"
threads = 1
pack_size = 4
"""


def test_retry_of_a_sweep_relaunches_only_the_diverged_runs_of_a_pack(tmp_path, one_torch_thread, blowup_method):
    """Draw 1 of erm_blowup diverges at step 25 (its search is fixed at 25): in a pack of 4,
    launch leaves 2 diverged and 2 done; once fixed, retry trains only the 2 again."""
    from invbench.sweep import launcher
    from invbench.sweep.expansion import expand
    from invbench.sweep.schema import load_sweep

    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP.format(out=tmp_path / "out", method=BLOWUP))
    config = load_sweep(path)
    specs = expand(config)
    assert len(specs) == 4 and len(make_packs(specs, 4)) == 1
    stream = io.StringIO()
    assert launcher.launch(config, stream=stream) == 1, stream.getvalue()
    status = launcher.status(config)[0]
    assert "done: 2" in status and "failed: 2" in status, status
    assert "FloatingPointError: the loss became inf at step 25" in status, status
    dirs = {spec.dirname: tmp_path / "out" / spec.dirname for spec in specs}
    before = {name: ((d / STARTED).read_bytes(), metrics(d)) for name, d in dirs.items()}
    for spec in specs:
        assert steps_of(dirs[spec.dirname]) == ([0, 10, 20] if spec.hparams["blowup_step"] == 25 else
                                                [0, 10, 20, 30, 40])
    blowup_method.unlink()  # the fix
    stream = io.StringIO()
    assert launcher.launch(config, mode="retry", stream=stream) == 0, stream.getvalue()
    assert "retry: 2 run(s)" in stream.getvalue(), stream.getvalue()
    assert "done: 4" in launcher.status(config)[0]
    for spec in specs:
        run_dir = dirs[spec.dirname]
        retried = spec.hparams["blowup_step"] == 25
        assert ((run_dir / STARTED).read_bytes() == before[spec.dirname][0]) != retried, spec.dirname
        if retried:
            assert json.loads((run_dir / DONE).read_text())["start"] == {"mode": "resumed", "step": 20}
        else:
            assert metrics(run_dir) == before[spec.dirname][1]
        assert metrics(run_dir) == alone(spec, tmp_path / "alone"), spec.dirname


# 3. and 4. Resume after SIGKILL --------------------------------------------------------

PACK_SCRIPT = textwrap.dedent("""
    import json, sys
    from invbench.runner import run_pack
    from invbench.spec import RunSpec
    specs = [RunSpec.from_dict(d) for d in json.loads(open(sys.argv[1]).read())]
    run_pack(specs, sys.argv[2])
""")


def blocking_specs(name: str, count: int = 4):
    """Runs of the blocking method (ERM's numbers), 40 steps, a record every 10."""
    return [spec_for("linear_sem minibatch", name, trial=trial % 2, draw=trial // 2, steps=40)
            for trial in range(count)]


def kill_while_blocked(specs, out: Path, blocking, tmp_path: Path, step: int | None = None) -> None:
    """Train ``specs`` as one pack in another process and SIGKILL it once it waits at the
    blocking step (records up to the checkpoint before it are on disk)."""
    listing = tmp_path / f"specs-{len(list(tmp_path.glob('specs-*')))}.json"
    listing.write_text(json.dumps([spec.to_dict() for spec in specs]))
    env = None
    if step is not None:
        import blocking_erm

        env = {**os.environ, blocking_erm.STEP_ENV: str(step)}
    waiting = len(blocking.pids())
    proc = subprocess.Popen([sys.executable, "-c", PACK_SCRIPT, str(listing), str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        blocking.wait(waiting + 1, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()  # dead: its locks are released


def started(run_dir: Path) -> dict:
    return json.loads((run_dir / STARTED).read_text())["start"]


@pytest.fixture
def reference(tmp_path, blocking_method, one_torch_thread):
    """The records of the blocking runs trained without interruption: alone and in a pack."""
    specs = blocking_specs(blocking_method.name)
    blocking_method.release()
    clean = {spec.dirname: alone(spec, tmp_path / "alone") for spec in specs}
    outcomes = run_pack(specs, tmp_path / "clean pack")
    assert [o.status for o in outcomes] == ["done"] * len(specs)
    for spec in specs:
        assert metrics(tmp_path / "clean pack" / spec.dirname) == clean[spec.dirname]
    blocking_method.gate.touch()  # block again, for the runs to be killed
    return specs, clean


def test_a_pack_killed_mid_run_resumes_with_byte_equal_records(tmp_path, blocking_method, reference):
    specs, clean = reference
    out = tmp_path / "out"
    kill_while_blocked(specs, out, blocking_method, tmp_path)
    for spec in specs:  # killed after the checkpoint of step 20, before any later record
        assert steps_of(out / spec.dirname) == [0, 10, 20] and not (out / spec.dirname / DONE).exists()
    blocking_method.release()
    assert [o.status for o in run_pack(specs, out)] == ["done"] * len(specs)
    for spec in specs:
        run_dir = out / spec.dirname
        assert metrics(run_dir) == clean[spec.dirname], spec.dirname
        assert [json.loads(line)["step"] for line in (run_dir / TIMING).read_text().splitlines()] == \
            [0, 10, 20, 30, 40]
        assert started(run_dir) == {"mode": "resumed", "step": 20}
        assert json.loads((run_dir / DONE).read_text())["start"] == {"mode": "resumed", "step": 20}


def test_runs_of_one_pack_at_different_steps_resume_each_at_its_own(tmp_path, blocking_method, reference):
    """A at step 10 (killed alone at step 15), B and C at step 20 (killed in a pack at step
    25), D without progress (its checkpoint and records deleted): one pack again, it trains
    one pack per starting step and every run ends with the uninterrupted bytes."""
    specs, clean = reference
    a, b, c, d = specs
    out = tmp_path / "out"
    kill_while_blocked([a], out, blocking_method, tmp_path, step=15)
    assert steps_of(out / a.dirname) == [0, 10]
    kill_while_blocked([b, c, d], out, blocking_method, tmp_path)
    assert all(steps_of(out / s.dirname) == [0, 10, 20] for s in (b, c, d))
    for name in (CHECKPOINT, METRICS, TIMING):
        (out / d.dirname / name).unlink()
    blocking_method.release()
    assert [o.status for o in run_pack(specs, out)] == ["done"] * 4
    for spec in specs:
        assert metrics(out / spec.dirname) == clean[spec.dirname], spec.dirname
    assert started(out / a.dirname) == {"mode": "resumed", "step": 10}
    assert started(out / b.dirname) == started(out / c.dirname) == {"mode": "resumed", "step": 20}
    assert started(out / d.dirname) == {"mode": "fresh", "step": 0}


def _older_format(state: dict) -> dict:
    return {key: value for key, value in state.items() if key != "format"}


def _another_model_shape(state: dict) -> dict:
    model = {name: torch.zeros(*tensor.shape[:-1], tensor.shape[-1] + 1) for name, tensor in state["model"].items()}
    return {**state, "model": model}


@pytest.mark.parametrize("damage, reason", [(_older_format, "was written by an older invbench"),
                                            (_another_model_shape, "does not fit the model")])
def test_a_checkpoint_that_does_not_fit_restarts_its_run_while_the_pack_resumes(
        tmp_path, blocking_method, reference, damage, reason):
    specs, clean = reference
    out = tmp_path / "out"
    kill_while_blocked(specs, out, blocking_method, tmp_path)
    victim = out / specs[1].dirname
    state = torch.load(victim / CHECKPOINT, weights_only=False)
    assert state["format"] == 2 and state["step"] == 20
    torch.save(damage(state), victim / CHECKPOINT)
    blocking_method.release()
    log = []
    assert [o.status for o in run_pack(specs, out, log=lambda spec, message: log.append(message))] == ["done"] * 4
    for spec in specs:
        assert metrics(out / spec.dirname) == clean[spec.dirname], spec.dirname
        if out / spec.dirname != victim:
            assert started(out / spec.dirname) == {"mode": "resumed", "step": 20}
    start = json.loads((victim / DONE).read_text())["start"]
    assert start["mode"] == "restarted" and start["step"] == 0 and reason in start["reason"], start
    (aside,) = victim.glob("checkpoint.pt.broken-*")  # kept for a person to look at
    assert aside.name in start["reason"]
    assert any(message.startswith(f"restarting {victim.name} from step 0: ") for message in log)


# 5. Done and busy runs in a pack ---------------------------------------------------------

def test_a_pack_skips_its_done_runs_and_leaves_busy_ones_to_their_process(tmp_path, one_torch_thread):
    specs = [spec_for("linear_sem minibatch", "erm", trial=trial, steps=20) for trial in range(4)]
    done, busy = specs[0], specs[2]
    out = tmp_path / "out"
    run(done, out)
    files = {path.name: (path.stat().st_mtime_ns, path.read_bytes())
             for path in (out / done.dirname).iterdir() if path.name != "lock"}
    (out / busy.dirname).mkdir(parents=True)
    with run_lock(out / busy.dirname):  # another trainer holds it
        outcomes = run_pack(specs, out)
    assert [o.status for o in outcomes] == ["done", "done", "busy", "done"]
    assert "is being trained by another process" in outcomes[2].message
    assert {path.name: (path.stat().st_mtime_ns, path.read_bytes())
            for path in (out / done.dirname).iterdir() if path.name != "lock"} == files  # untouched
    assert sorted(path.name for path in (out / busy.dirname).iterdir()) == ["lock"]  # nothing written
    for spec in (specs[1], specs[3]):
        assert metrics(out / spec.dirname) == alone(spec, tmp_path / "alone")
        assert started(out / spec.dirname) == {"mode": "fresh", "step": 0}
