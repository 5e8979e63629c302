"""The Python API: ``from braintseg import prepare, train, predict, evaluate, load_config``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import subprocess
import sys

import pytest

import braintseg
from braintseg import api, cli
from braintseg.config import Config

STEPS = sorted(api.STEPS)


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout


def test_import_braintseg_and_the_api_names_does_not_load_keras():
    out = _run(
        "import sys\n"
        "from braintseg import prepare, train, predict, evaluate, demo, load_config\n"
        "print(type(train).__name__, callable(train))\n"
        "heavy = ('keras', 'tensorflow', 'jax', 'torch')\n"
        "print('LOADED', [m for m in heavy if m in sys.modules])\n"
    )
    assert "LazyStep True" in out and "LOADED []" in out, out


@pytest.mark.parametrize("name", STEPS)
def test_each_step_is_the_function_the_cli_calls(name):
    module_name, run_name = api.STEPS[name]
    module = importlib.import_module(module_name)
    # the CLI command imports exactly this function from this module
    if name in cli.cli.commands:
        source = inspect.getsource(cli.cli.commands[name].callback)
        assert f"from {module_name} import" in source and run_name in source
    assert api.step_function(name) is getattr(module, run_name)
    # the package has no submodule of the step's name: the attribute is always the step
    assert not hasattr(braintseg, "__path__") or not (
        importlib.util.find_spec(f"braintseg.{name}"))
    from_import = {}
    exec(f"from braintseg import {name} as s", from_import)  # noqa: S102 - fixed test string
    assert isinstance(from_import["s"], api.LazyStep) and callable(from_import["s"])


@pytest.mark.parametrize("name", STEPS)
def test_calling_a_step_calls_its_run_function_at_call_time(name, monkeypatch):
    module_name, run_name = api.STEPS[name]
    module = importlib.import_module(module_name)
    calls = []
    monkeypatch.setattr(module, run_name, lambda *a, **k: calls.append((a, k)) or "result")
    assert getattr(braintseg, name)("x", 1, key="v") == "result"
    assert api.LazyStep(name)("y", key=2) == "result"
    assert calls == [(("x", 1), {"key": "v"}), (("y",), {"key": 2})]


def test_lazy_step_imports_its_module_on_first_call_and_exposes_its_attributes():
    out = _run(
        "import sys\n"
        "from braintseg import demo\n"
        "print('before', 'braintseg.demos.demo' in sys.modules)\n"
        "print(demo.HOLDOUT, 'after', 'braintseg.demos.demo' in sys.modules)\n"
        "import braintseg\n"
        "from braintseg import demo as again\n"
        "print(type(again).__name__, again.run_demo is braintseg.demos.demo.run_demo)\n"
    )
    assert "before False" in out
    assert "BraTS-GLI-00000-000 after True" in out
    assert "LazyStep True" in out, out


def test_load_config_and_config_are_exported():
    cfg = braintseg.load_config(None, ["train.epochs=3"])
    assert isinstance(cfg, Config) and braintseg.Config is Config and cfg.train.epochs == 3
    assert braintseg.sample_data_dir().joinpath("BraTS-GLI-00000-000").is_dir()
    assert set(api.STEPS) | {"load_config", "sample_data_dir"} <= set(braintseg.__all__)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'prepar'"):
        braintseg.prepar  # noqa: B018 - the access is the test


@pytest.mark.parametrize("name", STEPS)
def test_every_step_has_a_documented_example(name):
    assert f"{name}(" in api.__doc__
