"""braintseg: attention-guided 2D U-Net brain tumour segmentation on BraTS MRI.

Importing the package is cheap: it never imports Keras or TensorFlow.  The pipeline steps are
available as functions (``from braintseg import prepare, train, predict, evaluate``) that load
their heavy dependencies on first call.
"""

from __future__ import annotations

__version__ = "0.1.0"
