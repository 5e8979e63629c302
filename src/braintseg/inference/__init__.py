"""``braintseg predict``: :func:`braintseg.inference.predict.run_predict` and its parts.

* :mod:`~braintseg.inference.predict`: the one flow (runs, output folder, shards, record, CSV)
  and the dispatch to a layout's strategy by the runs' training-store layout;
* :mod:`~braintseg.inference.volumes`: volume runs (BraTS): cases → un-cropped label volumes;
* :mod:`~braintseg.inference.slices`: slice runs (LGG, figshare): patients → per-slice masks,
  classification-head columns;
* :mod:`~braintseg.inference.runs`: read and check run folders, load their models;
* :mod:`~braintseg.inference.cases`: volume cases from NIfTI folders or a store, normalised as
  ``prepare`` does, and safe output names;
* :mod:`~braintseg.inference.ensemble`: batched slice prediction, flips (TTA), multi-run /
  multi-view averaging, probabilities → labels;
* :mod:`~braintseg.inference.writing`: the output folder, atomic CSV/YAML outputs.

Predictions are written by their source (``braintseg.sources.<name>.write_prediction``).
Only :mod:`~braintseg.inference.ensemble` and :func:`~braintseg.inference.runs.load_model`
import Keras (inside functions), so importing this package stays cheap.
"""
