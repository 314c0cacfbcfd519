import subprocess
import sys

import pytest

from invbench.errors import ConfigError, UnknownNameError
from invbench.registry import DATASETS, METHODS, Registry, describe


def test_lookup_by_name_returns_the_registered_class():
    from invbench.methods.erm import ERM

    assert METHODS.get("erm") is ERM
    assert "erm" in METHODS.names()
    assert "linear_sem" in DATASETS.names()


def test_unknown_name_lists_close_matches_and_registered_names():
    with pytest.raises(UnknownNameError) as info:
        METHODS.get("ermm")
    message = str(info.value)
    assert "unknown method 'ermm'" in message
    assert "Did you mean 'erm'" in message
    assert "Registered methods:" in message and "erm" in message.split("Registered methods:")[1]


def test_did_you_mean_ignores_case():
    with pytest.raises(UnknownNameError) as info:
        METHODS.get("IRM")
    assert "unknown method 'IRM'. Did you mean 'irm'? Registered methods:" in str(info.value)
    with pytest.raises(UnknownNameError) as info:
        DATASETS.get("Linear_SEM")
    assert "Did you mean 'linear_sem'?" in str(info.value)


def test_unknown_name_without_close_match_still_lists_registered_names():
    with pytest.raises(UnknownNameError) as info:
        DATASETS.get("zzzzzz")
    assert "Did you mean" not in str(info.value)
    assert "linear_sem" in str(info.value)


def test_no_globals_lookup_a_module_attribute_is_not_a_method():
    # DomainBed resolves names through globals(), accepting any class in the module.
    with pytest.raises(UnknownNameError):
        METHODS.get("Method")
    with pytest.raises(UnknownNameError):
        METHODS.get("ERM")


def test_registering_two_items_under_one_name_is_an_error():
    registry = Registry("thing", "invbench.methods")

    @registry.register("a")
    class A:
        """first"""

    with pytest.raises(ConfigError, match="registered twice"):
        @registry.register("a")
        class B:
            """second"""


def test_names_must_be_lower_case_without_spaces():
    registry = Registry("thing", "invbench.methods")
    with pytest.raises(ConfigError):
        registry.register("Bad Name")


def test_describe_is_the_first_docstring_line():
    class Documented:
        """One line.

        More text.
        """

    assert describe(Documented) == "One line."


def test_plugins_from_the_environment_register_in_a_new_process(tmp_path):
    (tmp_path / "my_plugin.py").write_text(
        "from invbench.registry import METHODS\n"
        "from invbench.methods.erm import ERM\n"
        "@METHODS.register('plugin_erm')\n"
        "class PluginERM(ERM):\n"
        "    '''A plugin.'''\n"
    )
    code = "from invbench.registry import METHODS; print(METHODS.get('plugin_erm').__name__)"
    env = {"PYTHONPATH": str(tmp_path), "INVBENCH_PLUGINS": "my_plugin"}
    import os

    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "PluginERM"
