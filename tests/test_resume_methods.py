"""A resumed run gives the metrics of an uninterrupted one: group DRO's weights and the
anneal schedule (with the optimizer reset) included. Also: the reset is observable."""

import pytest
import torch

import invbench.runner as runner
from invbench.runner import CHECKPOINT, DONE, run
from invbench.spec import make_spec

INTERRUPT_AT = 20


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def spec_for(method, **overrides):
    return make_spec("linear_sem", method, dataset_options={"n_per_env": 200}, steps=40, eval_every=10,
                     overrides={"batch_size": 50, **overrides}, device="cpu")


def interrupted_then_resumed(spec, out, monkeypatch, at=INTERRUPT_AT):
    """Kill a run right after its checkpoint at step ``at`` is written, then resume it."""
    original = runner.atomic_write_bytes

    def crash(path, data):
        original(path, data)
        if path.name == CHECKPOINT and torch.load(path, weights_only=False)["step"] == at:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(runner, "atomic_write_bytes", crash)
    with pytest.raises(KeyboardInterrupt):
        run(spec, out)
    monkeypatch.setattr(runner, "atomic_write_bytes", original)
    assert not (out / spec.dirname / DONE).exists()
    return run(spec, out)


def metrics(run_dir):
    return (run_dir / runner.METRICS).read_bytes()


def test_groupdro_resume_restores_the_weights(tmp_path, monkeypatch):
    spec = spec_for("groupdro", eta=0.5)
    full = run(spec, tmp_path / "full")
    resumed = interrupted_then_resumed(spec, tmp_path / "resumed", monkeypatch)
    assert metrics(resumed) == metrics(full)
    saved = torch.load(full / CHECKPOINT, weights_only=False)["method"]["q"]
    assert not torch.allclose(saved, torch.full_like(saved, 0.5))  # the weights moved
    # The comparison has teeth: a resume that forgot the weights gives other numbers.
    from invbench.methods.groupdro import GroupDRO

    monkeypatch.setattr(GroupDRO, "load_state_dict", lambda self, state: None)
    forgetful = interrupted_then_resumed(spec, tmp_path / "forgetful", monkeypatch)
    assert metrics(forgetful) != metrics(full)


@pytest.mark.parametrize("anneal", [INTERRUPT_AT - 5, INTERRUPT_AT, INTERRUPT_AT + 5])
def test_irm_resume_follows_the_anneal_schedule_and_optimizer_reset(tmp_path, monkeypatch, anneal):
    # anneal before, at and after the interruption; penalty weight and loss division change there
    spec = spec_for("irm", anneal_iters=anneal, penalty_weight=50.0, reset_optimizer=True, scale_loss=True)
    full = run(spec, tmp_path / "full")
    resumed = interrupted_then_resumed(spec, tmp_path / "resumed", monkeypatch)
    assert metrics(resumed) == metrics(full)


@pytest.mark.parametrize("method", ["irm", "vrex", "mmrex"])
def test_optimizer_is_recreated_at_the_anneal_step(tmp_path, method):
    # Adam counts its updates: after a reset at step 15 of 40 it has made 25.
    for reset, expected in [(True, 40 - 15), (False, 40)]:
        run_dir = run(spec_for(method, anneal_iters=15, reset_optimizer=reset), tmp_path / str(reset))
        state = torch.load(run_dir / CHECKPOINT, weights_only=False)["optimizer"]
        assert int(state["step"]) == expected
