"""Training batches with the classification head's targets (``model.classification_head``).

:class:`HeadSliceDataset` is a :class:`~braintseg.training.generator.SliceDataset` whose batches are
``(x, {"probabilities": y, "classification": t})`` (or ``((x, transforms), {...})`` with
rotation/zoom): ``y`` the uint8 label maps ``(B, H, W)`` as before, ``t`` the head's targets
(:func:`head_targets`).  ``tumour`` targets come from ``y`` itself (after the flips, which do not
change them); ``tumour_type`` targets are the store's per-slice classes (``slice_class``) of the
slices the batch holds (:meth:`~braintseg.training.generator.SliceDataset.batch_ids`); the
targets come through the dataset's public hook ``batch_targets``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from braintseg.config import HEAD_OUTPUT, SEG_OUTPUT
from braintseg.errors import DataError
from braintseg.training.generator import SliceDataset


def head_targets(head: str, labels: NDArray[Any], classes: NDArray[Any] | None = None
                 ) -> NDArray[Any]:
    """The head's targets for a batch.

    Args:
        head: ``tumour`` or ``tumour_type``.
        labels: integer label maps ``(B, H, W)``.
        classes: per-slice classes ``(B,)`` 1..3 (``tumour_type`` only).

    Returns:
        ``tumour``: float32 ``(B, 1)``, 1.0 when the slice has a tumour pixel;
        ``tumour_type``: int32 ``(B,)`` = class − 1 (0 meningioma, 1 glioma, 2 pituitary).
    """
    if head == "tumour":
        flat = np.asarray(labels).reshape(len(labels), -1)
        return (flat.max(axis=1, initial=0) > 0).astype(np.float32)[:, None]
    if classes is None:
        raise ValueError("tumour_type targets need the per-slice classes")
    return np.asarray(classes, np.int32) - 1


class HeadSliceDataset(SliceDataset):
    """A :class:`SliceDataset` whose targets also hold the head's (see the module docstring).

    Args:
        head: ``tumour`` or ``tumour_type``; every other argument as :class:`SliceDataset`.

    Raises:
        DataError: ``tumour_type`` with a slice whose stored class is not 1..3 (the store is
            not a ``tumour_type`` store, e.g. LGG).
    """

    def __init__(self, *args: Any, head: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head = head
        self.classes: NDArray[np.uint8] | None = None
        if head == "tumour_type":
            self.classes = np.concatenate([self.store.slice_classes(r) for r in self.rows])
            bad = [c for c, r in zip(self.case_ids, self.rows, strict=True)
                   if not np.isin(self.store.slice_classes(r), (1, 2, 3)).all()]
            if bad:
                raise DataError(f"case {bad[0]} of {self.store.path}: slices without a tumour "
                                "type 1-3; model.classification_head: tumour_type needs a "
                                "tumour_type store (figshare); use tumour")

    def batch_targets(self, epoch: int, i: int, labels: NDArray[np.uint8]) -> Any:
        """``{"probabilities": labels, "classification": the head's targets}`` of batch ``i``
        of ``epoch`` (``tumour_type``: the classes of the slices :meth:`batch_ids` names)."""
        classes = None if self.classes is None else self.classes[self.batch_ids(epoch, i)]
        return {SEG_OUTPUT: labels, HEAD_OUTPUT: head_targets(self.head, labels, classes)}
