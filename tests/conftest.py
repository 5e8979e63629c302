"""Shared pytest fixtures (others add theirs here with small edits).

* ``synthetic_root``: 4 synthetic BraTS cases (48x48x32; HGG/LGG nesting, one BraTS-2023 case
  with float32 seg, one oblique affine), built once per session.
* ``smoke_cfg``: ``configs/smoke.yaml`` (crop auto, model.levels 2, 2 folds).
* ``synthetic_store``: a store prepared from ``synthetic_root`` with ``smoke_cfg`` (session).
* ``real_brats``: real BraTS case folders: the shared set (``../shared/data/brats``, 14 cases)
  when present, else the four cases bundled with the package (``sample_data/brats``: two of
  them, ``Brats18_2013_3_1`` and ``BraTS-GLI-00000-000``, are in both), so that a user's
  ``pytest`` exercises real data too.
* ``shared_brats``: the full shared set, or skip (for tests that need more than the bundled
  cases).
* ``two_epoch_run``: a finished 2-epoch run of ``synthetic_store`` fold 0 with ``TINY_TRAIN``
  (== ``configs/smoke.yaml --set train.epochs=2``), trained in-process once per session; tests
  copy it before changing it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from braintseg.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_BRATS = REPO.parent / "shared" / "data" / "brats"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from braintseg.sources.synthetic import write_dataset

    root = tmp_path_factory.mktemp("synthetic_brats")
    write_dataset(root, n_cases=4, shape=(48, 48, 32))
    return root


@pytest.fixture(scope="session")
def smoke_cfg() -> Config:
    return load_config(REPO / "configs" / "smoke.yaml")


@pytest.fixture(scope="session")
def synthetic_store(
    synthetic_root: Path, smoke_cfg: Config, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from braintseg.preparation.prepare import run_prepare

    out = tmp_path_factory.mktemp("synthetic_store") / "store.h5"
    return run_prepare(smoke_cfg, synthetic_root, out, workers=1)


#: the train section of the runs the train tests compare (smoke.yaml with 2 epochs)
TINY_TRAIN = {"epochs": 2, "steps_per_epoch": 2, "validation_steps": 1, "batch_size": 2,
              "optimizer": "adam", "learning_rate": 0.001}


@pytest.fixture(scope="session")
def two_epoch_run(synthetic_store: Path, smoke_cfg: Config,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    from braintseg.training.train import run_train

    run = tmp_path_factory.mktemp("runs") / "two"
    return run_train(smoke_cfg.replace(train=TINY_TRAIN), synthetic_store, 0, run)


@pytest.fixture(scope="session")
def shared_brats() -> Path:
    if not SHARED_BRATS.is_dir():
        pytest.skip(f"real BraTS data not present at {SHARED_BRATS}")
    return SHARED_BRATS


@pytest.fixture(scope="session")
def real_brats() -> Path:
    if SHARED_BRATS.is_dir():
        return SHARED_BRATS
    from braintseg.demos.demo import sample_data_dir

    return sample_data_dir()
