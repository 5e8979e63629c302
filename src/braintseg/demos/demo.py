"""``braintseg demo``: the entry point (:func:`run_demo`, :func:`format_result`) and the bundled
data sets' demos by ``--dataset`` name (:data:`DEMOS`).

Each data set's demo is one module that declares a :class:`~braintseg.demos.flow.DemoSpec`:
:mod:`braintseg.demos.brats` (4 BraTS volumes, the default) and :mod:`braintseg.demos.lgg`
(2 LGG kaggle_3m patients of 2D slices); the steps are the shared flow of
:mod:`braintseg.demos.flow`.  A new demo data set is one module and one line in :data:`DEMOS`.

The BraTS demo's names (:data:`HOLDOUT`, :data:`DEFAULT_OUTPUT`, :func:`sample_data_dir`,
:data:`CPU_CONFIG`, :data:`EXPECTED_DICE`, ...) and the flow's :func:`validation_fold` and
:func:`draw_pictures` are importable from here too (the README and the API use them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from braintseg.demos.brats import (
    BRATS,
    CPU_CONFIG,
    DEFAULT_OUTPUT,
    EXPECTED_DICE,
    GPU_CONFIG,
    HOLDOUT,
    demo_config,
    sample_data_dir,
)
from braintseg.demos.flow import (
    DemoResult,
    DemoSpec,
    draw_pictures,
    format_text,
    run_spec,
    validation_fold,
)
from braintseg.demos.lgg import LGG
from braintseg.errors import ConfigError

__all__ = [
    "CPU_CONFIG", "DEFAULT_OUTPUT", "DEMOS", "EXPECTED_DICE", "GPU_CONFIG", "HOLDOUT",
    "DemoResult", "demo_config", "demo_spec", "draw_pictures", "format_result", "run_demo",
    "sample_data_dir", "validation_fold",
]

#: ``--dataset`` name → its demo
DEMOS: dict[str, DemoSpec] = {spec.name: spec for spec in (BRATS, LGG)}


def demo_spec(dataset: str) -> DemoSpec:
    """The demo of data set ``dataset`` (a key of :data:`DEMOS`).

    Raises:
        ConfigError: no demo of that name.
    """
    try:
        return DEMOS[dataset]
    except KeyError:
        raise ConfigError(f"no demo data set {dataset!r}; expected one of "
                          f"{sorted(DEMOS)}") from None


def run_demo(
    out_dir: Path | None = None,
    *,
    dataset: str = "brats",
    overwrite: bool = False,
    epochs: int | None = None,
    overrides: Sequence[str] = (),
    gpu: bool | None = None,
    data_dir: Path | None = None,
    holdout: str | None = None,
) -> DemoResult:
    """Prepare, train, predict, evaluate and draw on a bundled data set, holding one case out.

    Args:
        out_dir: output folder (default: the data set's, :data:`DEFAULT_OUTPUT` for BraTS,
            ``braintseg-demo-lgg`` for LGG); must be new or empty unless ``overwrite``.
        dataset: which demo (a key of :data:`DEMOS`: ``"brats"``, ``"lgg"``).
        overwrite: replace the demo's outputs in a non-empty ``out_dir`` (other files are kept).
        epochs: training epochs (``--epochs``; wins over ``train.epochs`` in ``overrides``).
        overrides: ``"section.key=value"`` strings applied to the demo's configuration.
        gpu: BraTS: train the GPU (default) configuration; ``None``: when Keras sees a GPU
            (the LGG demo always trains its CPU configuration).
        data_dir: case folders to use instead of the bundled ones (BraTS: one fold a case).
        holdout: the case kept out of training, then predicted and evaluated (default: the
            data set's, :data:`HOLDOUT` for BraTS).

    Returns:
        A :class:`~braintseg.demos.flow.DemoResult`; also written to ``out_dir/demo.json``.

    Raises:
        DataError: ``out_dir`` is a file or not empty, or a step's input is invalid.
        ConfigError: an override is invalid, or no demo is called ``dataset``.
    """
    return run_spec(demo_spec(dataset), out_dir, overwrite=overwrite, epochs=epochs,
                    overrides=overrides, gpu=gpu, data_dir=data_dir, holdout=holdout)


def format_result(result: DemoResult, dataset: str = "brats") -> str:
    """The lines ``braintseg demo`` prints: what was written where, then the held-out Dice
    with its expected range (and a warning line for a figure outside it)."""
    return format_text(result, demo_spec(dataset))
