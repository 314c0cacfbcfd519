import json
import os

import pytest
import torch

from invbench import io as bio
from invbench.data import TRAIN
from invbench.errors import ConfigError
from invbench.rundir import CHECKPOINT, DONE, ERROR, METRICS, run_status
from invbench.runner import RunFailedError, load_records, run
from invbench.trainer import MinibatchSampler, build_dataset
from invbench.spec import make_spec


def small_spec(**kwargs):
    kwargs.setdefault("steps", 30)
    kwargs.setdefault("eval_every", 10)
    return make_spec("linear_sem", "erm", dataset_options={"n_per_env": 200}, **kwargs)


def test_run_writes_spec_records_and_done_last(tmp_path):
    spec = small_spec()
    run_dir = run(spec, tmp_path)
    assert run_dir.name == spec.dirname
    assert json.loads((run_dir / "spec.json").read_text())["run_id"] == spec.run_id
    records = load_records(run_dir)
    assert [r["step"] for r in records] == [0, 10, 20, 30]
    assert set(records[-1]["envs"]) == {"sigma=0.2", "sigma=2", "sigma=5"}
    assert {"causal_error", "noncausal_error"} <= set(records[-1]["extra"])
    assert "train" not in records[0] and records[1]["train"]["loss"] > 0
    done = json.loads((run_dir / DONE).read_text())
    assert done["run_id"] == spec.run_id and done["steps"] == 30
    # done is the last file written
    assert (run_dir / DONE).stat().st_mtime_ns >= (run_dir / METRICS).stat().st_mtime_ns
    assert run_status(run_dir) == "done"


def test_training_reduces_the_loss(tmp_path):
    records = load_records(run(small_spec(steps=200, eval_every=200), tmp_path))
    first, last = records[0]["envs"]["sigma=2"]["train"]["mse"], records[-1]["envs"]["sigma=2"]["train"]["mse"]
    assert last < 0.5 * first


def test_same_spec_twice_writes_identical_metric_lines(tmp_path):
    a = run(small_spec(), tmp_path / "a")
    b = run(small_spec(), tmp_path / "b")
    assert (a / METRICS).read_bytes() == (b / METRICS).read_bytes()


def test_finished_run_is_not_rerun(tmp_path):
    run_dir = run(small_spec(), tmp_path)
    before = (run_dir / METRICS).read_bytes()
    mtime = (run_dir / DONE).stat().st_mtime_ns
    run(small_spec(), tmp_path)
    assert (run_dir / METRICS).read_bytes() == before
    assert (run_dir / DONE).stat().st_mtime_ns == mtime


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    full = run(small_spec(steps=40, eval_every=10), tmp_path / "full")
    # Interrupt a second run right after the evaluation at step 20 has been checkpointed.
    import invbench.runner as runner

    original = runner.atomic_write_bytes

    def crash_after_step_20(path, data):
        original(path, data)
        if path.name == CHECKPOINT and torch.load(path, weights_only=False)["step"] == 20:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(runner, "atomic_write_bytes", crash_after_step_20)
    with pytest.raises(KeyboardInterrupt):
        run(small_spec(steps=40, eval_every=10), tmp_path / "resumed")
    monkeypatch.setattr(runner, "atomic_write_bytes", original)
    partial = tmp_path / "resumed" / full.name
    assert not (partial / DONE).exists()
    # a stray record written after the checkpoint must not survive the resume
    bio.append_jsonl(partial / METRICS, {"step": 25, "envs": {}})
    resumed = run(small_spec(steps=40, eval_every=10), tmp_path / "resumed")
    assert (resumed / METRICS).read_bytes() == (full / METRICS).read_bytes()
    assert not (resumed / ERROR).exists()


def test_ctrl_c_is_not_a_failure_and_the_run_resumes(tmp_path, monkeypatch):
    """Ctrl-C stops the run without error.json: it is stale (resumable), never "failed"."""
    from invbench.methods.erm import ERM

    original = ERM.objective

    def interrupt(self, model, batches, step):
        if step == 3:
            raise KeyboardInterrupt
        return original(self, model, batches, step)

    monkeypatch.setattr(ERM, "objective", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(small_spec(), tmp_path)
    run_dir = tmp_path / small_spec().dirname
    assert not (run_dir / ERROR).exists() and run_status(run_dir) == "started"
    monkeypatch.setattr(ERM, "objective", original)
    assert (run(small_spec(), tmp_path) / DONE).exists()


def test_failing_run_leaves_error_and_traceback_and_no_done(tmp_path, monkeypatch):
    from invbench.methods.erm import ERM

    def boom(self, model, batches, step):
        if step == 3:
            raise RuntimeError("planted failure")
        return original(self, model, batches, step)

    original = ERM.objective
    monkeypatch.setattr(ERM, "objective", boom)
    with pytest.raises(RunFailedError, match="planted failure"):
        run(small_spec(), tmp_path)
    run_dir = tmp_path / small_spec().dirname
    error = json.loads((run_dir / ERROR).read_text())
    assert error["type"] == "RuntimeError" and "planted failure" in error["message"]
    assert "Traceback" in error["traceback"] and "boom" in error["traceback"]
    assert not (run_dir / DONE).exists()
    assert run_status(run_dir) == "failed"


def test_atomic_write_leaves_old_content_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "done.json"
    bio.atomic_write_json(target, {"old": True})

    def failing_fsync(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        bio.atomic_write_json(target, {"new": True})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["done.json"]  # no temporary file left


def test_environment_smaller_than_batch_is_a_clear_error(tmp_path):
    spec = small_spec(overrides={"batch_size": 500})
    with pytest.raises(RunFailedError, match="fewer than batch_size=500"):
        run(spec, tmp_path)


def test_minibatches_cover_each_epoch_once_and_depend_only_on_the_step():
    dataset = build_dataset(small_spec())
    sizes = [dataset.envs[i].size(TRAIN) for i in (0, 1)]
    sampler = MinibatchSampler(sizes, batch_size=50, seed=1)
    seen = torch.cat([sampler.rows(step)[0] for step in range(sizes[0] // 50)])
    assert sorted(seen.tolist()) == list(range(sizes[0]))
    again = MinibatchSampler(sizes, batch_size=50, seed=1)
    assert torch.equal(again.rows(6)[1], sampler.rows(6)[1])


def test_unknown_device_is_rejected_with_the_same_message_before_and_in_a_run():
    from invbench.devices import check_device, resolve_device

    with pytest.raises(ConfigError, match="^device 'tpu' is not a device; allowed: auto, cpu, cuda or cuda:N$"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="^--device 'tpu' is not a device; allowed: auto, cpu, cuda or cuda:N$"):
        check_device("tpu")
    assert str(resolve_device("cpu")) == "cpu"


def test_holdout_is_floored_as_domainbed():
    from invbench.data import VAL, holdout_split

    x, y = torch.zeros(23, 1), torch.zeros(23)
    splits = holdout_split(x, y, 0.2, torch.Generator().manual_seed(0))
    assert len(splits[VAL][1]) == 4 and len(splits[TRAIN][1]) == 19  # int(23 * 0.2) = 4, not round(4.6)
