"""braintseg: attention-guided 2D U-Net brain tumour segmentation on BraTS MRI.

Importing the package is cheap: it never imports Keras or TensorFlow.  The pipeline steps are
available as functions (``from braintseg import prepare, train, predict, evaluate``) that load
their heavy dependencies on first call; see :mod:`braintseg.api` for the list and an example.
"""

from __future__ import annotations

import sys
from typing import Any

from braintseg import stop as _stop

if _stop.is_train_command(getattr(sys, "orig_argv", [])):  # before anything slow: see stop
    _stop.record_early()

from braintseg import api as _api  # noqa: E402 - after the signal handlers

__version__ = "0.1.0"

__all__ = ["__version__", *_api.STEPS, *_api.EXPORTS]


def __getattr__(name: str) -> Any:
    return _api.lazy_attribute(sys.modules[__name__], name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

