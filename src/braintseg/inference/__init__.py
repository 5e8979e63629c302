"""Inference building blocks used by :mod:`braintseg.inference.predict`.

* :mod:`~braintseg.inference.runs`: read and check run folders, load their models;
* :mod:`~braintseg.inference.cases`: input cases from NIfTI folders or a store, normalised as
  ``prepare`` does, and safe output names;
* :mod:`~braintseg.inference.ensemble`: batched slice prediction, flips (TTA), multi-run /
  multi-view averaging, probabilities → labels;
* :mod:`~braintseg.inference.writing`: atomic NIfTI/CSV/YAML outputs.

Only :mod:`~braintseg.inference.ensemble` and :func:`~braintseg.inference.runs.load_model`
import Keras (inside functions), so importing this package stays cheap.
"""
