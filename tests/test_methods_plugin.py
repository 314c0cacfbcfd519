"""docs/adding_a_method.md works: a throwaway method in its own module, registered through
INVBENCH_PLUGINS, is listed and trained end to end by `invbench run` in a fresh process."""

import json
import textwrap
from pathlib import Path

from invbench.runner import METRICS

PLUGIN = textwrap.dedent('''
    """A throwaway method for the test of docs/adding_a_method.md."""
    from invbench.hparams import HParam, LogUniform
    from invbench.method import Method, Objective
    from invbench.registry import METHODS


    @METHODS.register("throwaway_spread")
    class ThrowawaySpread(Method):
        """Throwaway: mean risk + w * (max risk - min risk)."""

        hparams = {"weight": HParam(1.0, LogUniform(-2, 2), low=0.0, high=1e6, help="penalty weight w")}

        def objective(self, model, batches, step):
            losses = self.env_losses(self.env_logits(model, batches), batches)
            return Objective(risk=losses.mean(), penalty=losses.max() - losses.min(),
                             penalty_weight=self.hp["weight"], env_losses=losses, logs={"marker": 7.0})
''')


def test_a_method_in_one_new_module_is_listed_and_runs(cli, tmp_path):
    (tmp_path / "throwaway_plugin.py").write_text(PLUGIN)
    env = {"PYTHONPATH": str(tmp_path), "INVBENCH_PLUGINS": "throwaway_plugin", "OMP_NUM_THREADS": "1"}

    listed = cli("list", "methods", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "throwaway_spread: Throwaway: mean risk + w * (max risk - min risk)." in listed.stdout
    assert "weight = 1.0 (a number in [0, 1e+06]" in listed.stdout

    bad = cli("run", "-d", "linear_sem", "-m", "throwaway_spread", "--set", "weight=-1", "--out", tmp_path / "runs",
              env=env)
    assert bad.returncode == 2 and "weight=-1.0 is out of range" in bad.stderr

    out = cli("run", "-d", "linear_sem", "-m", "throwaway_spread", "--set", "weight=3", "--steps", "20",
              "--eval-every", "10", "-o", "n_per_env=100", "--out", tmp_path / "runs", "-q", env=env)
    assert out.returncode == 0, out.stderr
    run_dir = Path(out.stdout.strip())
    records = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 10, 20]
    train = records[-1]["train"]
    assert train["penalty_weight"] == 3.0 and train["marker"] == 7.0
    assert json.loads((run_dir / "spec.json").read_text())["hparams"]["weight"] == 3.0
    assert (run_dir / "done.json").exists()
