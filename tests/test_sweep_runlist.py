"""The stored run list: `status` and `cancel` read what `launch` expanded, and expand again
whenever the list could be out of date."""

from __future__ import annotations

import io
import json

import pytest

from invbench.sweep import expansion, launcher, runlist
from invbench.sweep.runlist import runlist_path, sweep_specs
from invbench.sweep.schema import apply_overrides, parse_sweep


@pytest.fixture
def config(tmp_path):
    return parse_sweep({"methods": ["erm"], "trials": 2, "steps": 1, "hparams": {"batch_size": 0},
                        "datasets": [{"name": "linear_sem", "options": {"n_per_env": 50}}],
                        "out": str(tmp_path / "out"), "executor": {"kind": "inline"}}, default_name="t")


def forbid_expansion(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("expanded although a current run list was stored")

    monkeypatch.setattr(expansion, "expand", refuse)


def test_launch_stores_the_list_and_status_reads_it_without_expanding(config, monkeypatch):
    assert launcher.launch(config, stream=io.StringIO()) == 0
    stored = json.loads(runlist_path(config).read_text())
    assert [s["run_id"] for s in stored["specs"]] == [s.run_id for s in expansion.expand(config)]
    forbid_expansion(monkeypatch)
    text, states = launcher.status(config)
    assert [s.state for s in states] == ["done", "done"] and "done: 2" in text
    assert launcher.cancel(config) == []


def test_a_list_that_may_be_out_of_date_is_expanded_again(config, monkeypatch):
    config.out_root.mkdir()
    first = sweep_specs(config)  # expands and stores
    assert len(first) == 2 and runlist_path(config).exists()
    # other settings: another list (the executor is not part of it)
    assert len(sweep_specs(apply_overrides(config, trials=3))) == 3
    assert len(sweep_specs(config)) == 2
    forbid_expansion(monkeypatch)
    assert sweep_specs(apply_overrides(config, executor="local", workers=3)) == first
    # edited code (a method's default, a new plugin) changes the key
    monkeypatch.setattr(runlist, "_code_files", lambda: [("methods/erm.py", 1, 2)])
    with pytest.raises(AssertionError, match="expanded although"):
        sweep_specs(config)


@pytest.mark.parametrize("damage", ["garbage", "wrong id", "no specs"])
def test_a_damaged_list_is_expanded_again_and_rewritten(config, damage):
    config.out_root.mkdir()
    specs = sweep_specs(config)
    path = runlist_path(config)
    stored = json.loads(path.read_text())
    if damage == "garbage":
        path.write_text("{not json")
    elif damage == "wrong id":
        stored["specs"][0]["run_id"] = "0" * 64
        path.write_text(json.dumps(stored))
    else:
        del stored["specs"]
        path.write_text(json.dumps(stored))
    assert [s.run_id for s in sweep_specs(config)] == [s.run_id for s in specs]
    assert json.loads(path.read_text())["specs"][0]["run_id"] == specs[0].run_id


def test_status_of_a_sweep_without_a_folder_writes_nothing(config):
    text, states = launcher.status(config)
    assert len(states) == 2 and not config.out_root.exists()
