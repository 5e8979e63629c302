"""Slice-level classification head on the U-Net bottleneck (``model.classification_head``).

``tumour``: is there any tumour pixel in the slice (LGG: derived from the mask); ``tumour_type``:
the figshare class of the slice (1 meningioma, 2 glioma, 3 pituitary).  Layout::

    bottleneck features (B, h, w, F) → global average pool ‖ global max pool (B, 2F)
    → Dense 32, ReLU → Dense K → sigmoid (K = 1, ``tumour``) or softmax (K = 3, ``tumour_type``)

The model then has two named outputs, a dict ``{"probabilities": (B, H, W, 2) float32 softmax,
"classification": (B, K) float32}``; stock Keras layers only (loads with ``safe_mode``).  Trained
jointly: ``loss = segmentation loss + train.classification_weight × head cross-entropy``.
Targets (:func:`braintseg.training.head_targets.head_targets`): ``tumour`` float32 ``(B, 1)``
1.0 when the label map has a tumour pixel; ``tumour_type`` int32 ``(B,)`` = class − 1 (0..2).
"""

from __future__ import annotations

from typing import Any

import keras

from braintseg.config import HEAD_OUTPUT, SEG_OUTPUT

HEADS: tuple[str, ...] = ("none", "tumour", "tumour_type")
#: units of the hidden dense layer
HIDDEN = 32
#: bottleneck layer name of each network (its output feeds the head)
BOTTLENECK = {"unet": "bottleneck_relu2", "attention_unet": "bottleneck"}


def n_head_outputs(head: str) -> int:
    """1 (``tumour``: one sigmoid) or 3 (``tumour_type``: softmax over the 3 classes)."""
    return 3 if head == "tumour_type" else 1


def add_classification_head(model: keras.Model, head: str, bottleneck: str) -> keras.Model:
    """``model`` (one segmentation output) with the head on layer ``bottleneck``'s output.

    Returns a new functional model sharing every layer of ``model``, with the dict output
    described in the module docstring; ``head == "none"`` returns ``model`` unchanged.
    """
    if head == "none":
        return model
    feats = model.get_layer(bottleneck).output
    pooled = keras.layers.Concatenate(name="head_pool")([
        keras.layers.GlobalAveragePooling2D(name="head_avg")(feats),
        keras.layers.GlobalMaxPooling2D(name="head_max")(feats)])
    hidden = keras.layers.Dense(HIDDEN, activation="relu", name="head_dense")(pooled)
    logits = keras.layers.Dense(n_head_outputs(head), name="head_logits")(hidden)
    activation = "softmax" if head == "tumour_type" else "sigmoid"
    probs = keras.layers.Activation(activation, dtype="float32", name=HEAD_OUTPUT)(logits)
    return keras.Model(model.input, {SEG_OUTPUT: model.output, HEAD_OUTPUT: probs},
                       name=model.name)


def has_head(model: Any) -> bool:
    """True for a model with the dict output of :func:`add_classification_head`."""
    return isinstance(model.output, dict) and HEAD_OUTPUT in model.output


def split_head(model: Any) -> tuple[Any, Any]:
    """``(segmentation model, head model or None)`` sharing ``model``'s weights (for predict:
    the segmentation model alone can be averaged over flips)."""
    if not has_head(model):
        return model, None
    seg = keras.Model(model.input, model.output[SEG_OUTPUT], name=f"{model.name}_seg")
    cls = keras.Model(model.input, model.output[HEAD_OUTPUT], name=f"{model.name}_head")
    return seg, cls
