"""The Python API: the CLI's pipeline steps as functions, for notebooks and scripts.

``from braintseg import prepare, train, predict, evaluate, demo, load_config`` gives the very
functions the ``braintseg`` commands call (``run_prepare``, ``run_train``, ``run_predict``,
``run_evaluate``, ``run_demo``), taking the same :class:`~braintseg.config.Config` object.
Importing ``braintseg`` stays cheap: a step's module (and Keras with it) is imported on the
step's first call.

Example (the demo's steps, holding one case out of training; see ``scripts/demo_api.py`` and
the README, whose copy of this example a test runs as a script)::

    from pathlib import Path
    from braintseg import demo, evaluate, load_config, predict, prepare, sample_data_dir, train
    from braintseg.demos.demo import HOLDOUT, validation_fold

    out = Path("braintseg-demo-api")                             # ignored by git
    cfg = load_config("configs/demo.yaml", ["train.epochs=2"])  # YAML + --set style overrides
    cases = sample_data_dir()                                    # 4 bundled real BraTS cases
    store = prepare(cfg, cases, out / "store.h5")                # NIfTI -> HDF5 store, 4 folds
    train(cfg, store, validation_fold(store, HOLDOUT), out / "run")  # on the 3 other cases
    predict([out / "run"], cases / HOLDOUT, out / "predictions") # the held-out case only
    summary = evaluate(out / "predictions", cases, out / "metrics.csv", cases=[HOLDOUT])
    result = demo(out / "all-in-one")                            # or all of the above at once

Each step is a :class:`LazyStep`: the package has no submodule of a step's name (the stages live in
:mod:`braintseg.preparation`, :mod:`braintseg.training`, :mod:`braintseg.inference`,
:mod:`braintseg.scoring`, :mod:`braintseg.demos`), so ``braintseg.prepare`` is always the step and
calling it imports its module on first use and calls its ``run_*`` function, looked up at call
time (so monkeypatching ``braintseg.preparation.prepare.run_prepare`` affects every caller).
"""

from __future__ import annotations

import importlib
import types
from typing import Any

#: API name -> (submodule, function the CLI calls)
STEPS: dict[str, tuple[str, str]] = {
    "prepare": ("braintseg.preparation.prepare", "run_prepare"),
    "train": ("braintseg.training.train", "run_train"),
    "predict": ("braintseg.inference.predict", "run_predict"),
    "evaluate": ("braintseg.scoring.evaluate", "run_evaluate"),
    "demo": ("braintseg.demos.demo", "run_demo"),
}

#: other public names, resolved lazily: name -> (module, attribute)
EXPORTS: dict[str, tuple[str, str]] = {
    "load_config": ("braintseg.config", "load_config"),
    "Config": ("braintseg.config", "Config"),
    "sample_data_dir": ("braintseg.demos.demo", "sample_data_dir"),
    "format_summary": ("braintseg.scoring.evaluate", "format_summary"),
}

def step_function(name: str) -> Any:
    """The function behind API step ``name`` (imports its module), e.g. ``run_prepare``."""
    module, run = STEPS[name]
    return getattr(importlib.import_module(module), run)


class LazyStep:
    """Stands for a step whose module is not imported yet; imports it on first use.

    Calls go to the module's ``run_*`` function; attribute access goes to the module itself
    (``braintseg.scoring.evaluate.format_summary`` works either way).
    """

    def __init__(self, name: str) -> None:
        module, run = STEPS[name]
        self.__name__ = name
        self.__qualname__ = name
        self.__module__ = "braintseg"
        self.__doc__ = f"Lazy alias of :func:`{module}.{run}` (imported on first call)."
        self._module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return step_function(self.__name__)(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._module), attr)

    def __repr__(self) -> str:
        return f"<braintseg step {self.__name__!r} ({self._module}, imported on first call)>"


def lazy_attribute(package: types.ModuleType, name: str) -> Any:
    """Resolve a public name of the package that is not loaded yet (module ``__getattr__``)."""
    if name in STEPS:
        return LazyStep(name)
    if name in EXPORTS:
        module, attr = EXPORTS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {package.__name__!r} has no attribute {name!r}")
