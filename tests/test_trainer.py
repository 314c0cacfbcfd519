"""The trainer's stages (setup, resume, step, evaluate, finish) and the job environment that
executors hand to the runner (the runner reads no SLURM variable itself)."""

import io
import json

import pytest
import torch

from invbench.runner import METRICS, STARTED, run
from invbench.spec import make_spec
from invbench.trainer import Trainer, evaluation_steps


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_spec(**kwargs):
    return make_spec("linear_sem", "irm", dataset_options={"n_per_env": 200}, steps=30, eval_every=10,
                     overrides={"batch_size": 50, "anneal_iters": 15, "reset_optimizer": True}, device="cpu",
                     **kwargs)


def line(record):
    return json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"


def drive(trainer, until=None):
    """The runner's loop, by hand: a record whenever one is due, an update otherwise."""
    lines = []
    while True:
        if trainer.evaluation_due:
            lines.append(line(trainer.evaluate()[0]))
        if trainer.finished or trainer.steps_done == until:
            return lines
        trainer.step()


def test_driving_the_stages_by_hand_gives_the_runners_bytes_and_resume_continues_exactly(tmp_path):
    spec = small_spec()
    expected = (run(spec, tmp_path) / METRICS).read_text()
    assert "".join(drive(Trainer(spec))) == expected
    # stop after the record of step 10, save, and continue in a new trainer
    first = Trainer(spec)
    head = drive(first, until=10)
    state = torch.load(io.BytesIO(first.checkpoint_bytes()), weights_only=False)
    second = Trainer(spec)
    second.resume(state)
    assert not second.evaluation_due  # the record of step 10 exists
    assert "".join(head + drive(second)) == expected
    finish = second.finish()
    assert finish["steps"] == 30 and finish["source"]["name"] == "synthetic" and finish["device"] == "cpu"


def test_evaluation_steps_are_every_eval_every_and_the_last():
    spec = make_spec("linear_sem", "erm", dataset_options={"n_per_env": 20}, steps=25, eval_every=10)
    assert evaluation_steps(spec, 25) == [0, 10, 20, 25]
    assert evaluation_steps(spec, 19) == [0, 10]


SLURM_VARIABLES = {"SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "76", "SLURM_ARRAY_TASK_ID": "3"}


def test_the_runner_reads_no_slurm_variable_and_the_slurm_task_passes_its_job_id(tmp_path, monkeypatch):
    for key, value in SLURM_VARIABLES.items():
        monkeypatch.setenv(key, value)
    spec = make_spec("linear_sem", "erm", dataset_options={"n_per_env": 20}, steps=2, eval_every=1, device="cpu")
    plain = run(spec, tmp_path / "plain")
    assert json.loads((plain / STARTED).read_text())["job_id"] is None  # not taken from the environment
    given = run(spec, tmp_path / "given", job_id="host:1:2")
    assert json.loads((given / STARTED).read_text())["job_id"] == "host:1:2"

    from invbench.sweep.executors.slurm import RunTask

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # inside a submitit SLURM job
    finished = RunTask([[spec]], str(tmp_path / "slurm"), threads=1)()
    assert json.loads((tmp_path / "slurm" / spec.dirname / STARTED).read_text())["job_id"] == "76_3"
    assert finished == [str(tmp_path / "slurm" / spec.dirname)]
