"""2D slice options measured by scripts/cv_lgg.py: ``train.loss: dice_ce`` and
``data.normalization: slice``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from braintseg.config import ModelConfig, load_config
from braintseg.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_dice_ce_loss() -> None:
    from braintseg.config import TrainConfig
    from braintseg.training.losses import DiceCE, build_loss

    loss = build_loss(TrainConfig(loss="dice_ce", ce_weight=1.0), ModelConfig(output="binary"))
    assert isinstance(loss, DiceCE)
    y = np.zeros((2, 8, 8), np.uint8)
    y[:, 2:5, 2:5] = 1
    perfect = np.stack([1.0 - y, y.astype(np.float64)], -1).astype(np.float32)
    assert float(loss(y, perfect)) < 1e-3 < 1.0 < float(loss(y, perfect[..., ::-1]))
    half = np.full((2, 8, 8, 2), 0.5, np.float32)  # Dice 2*9*0.5/(9+32) per image pair
    dice = (2 * 18 * 0.5 + 1) / (18 + 64 + 1)
    assert float(loss(y, half)) == pytest.approx(1 - dice + np.log(2), rel=1e-4)
    assert DiceCE.from_config(loss.get_config()).ce_weight == 1.0


def test_slice_normalisation_scales_each_slice_alone() -> None:
    from braintseg.preparation.slices import slice_normalise

    rng = np.random.default_rng(0)
    stack = rng.integers(1, 200, (3, 16, 16, 2)).astype(np.float32)
    stack[0] *= 5.0  # a bright slice: per patient it would stay bright, per slice it does not
    stack[1, :4] = 0  # background pixels stay 0
    stack[2, ..., 1] = 0  # an empty channel of one slice: zeros, counted
    out, stats = slice_normalise(stack, (0.0, 100.0), ("flair", "t1"), "float32")
    for s, c in ((0, 0), (0, 1), (1, 0), (2, 0)):
        brain = out[s, ..., c][stack[s, ..., c] != 0]
        assert abs(brain.mean()) < 1e-5 and brain.std() == pytest.approx(1.0, rel=1e-4)
    assert (out[1, :4] == 0).all() and (out[2, ..., 1] == 0).all()
    assert [st["n_constant"] for st in stats] == [0, 1] and stats[0]["method"] == "slice"


def test_slice_normalisation_store_and_brats_refusal(tmp_path: Path) -> None:
    from braintseg.preparation.prepare import run_prepare
    from braintseg.sources.synthetic import write_lgg
    from braintseg.store.read import SliceStore

    cfg = load_config(REPO / "configs" / "smoke.yaml", ["data.normalization=slice"])
    root = write_lgg(tmp_path / "lgg", n_patients=2, n_slices=4, size=16)
    store = SliceStore(run_prepare(cfg, root, tmp_path / "s.h5", workers=1))
    images, _ = store.read_case(0)
    brain = images[1, ..., 1].astype(np.float32)
    brain = brain[brain != 0]
    assert abs(brain.mean()) < 0.05 and brain.std() == pytest.approx(1.0, rel=0.05)
    assert store.case_meta(0)["normalization"][0]["method"] == "slice"
    store.close()
    from braintseg.sources.synthetic import write_dataset

    write_dataset(tmp_path / "brats", n_cases=1, shape=(16, 16, 8))
    with pytest.raises(ConfigError, match="^data.normalization: slice applies to 2D slice"):
        run_prepare(cfg, tmp_path / "brats", tmp_path / "b.h5", workers=1)
