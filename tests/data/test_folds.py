"""Patient-level folds: coverage, determinism, stratification, hold-out, JSON round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from braintseg.data.folds import folds_path, load_folds, make_folds, write_folds
from braintseg.errors import DataError

IDS = [f"case{i:02d}" for i in range(23)]
GRADES = {c: ("HGG" if i % 3 else "LGG") for i, c in enumerate(IDS)}


def test_every_case_in_exactly_one_fold() -> None:
    f = make_folds(IDS, GRADES, n_folds=5, seed=100)
    flat = [c for fold in f.folds for c in fold]
    assert sorted(flat) == sorted(IDS) and len(flat) == len(set(flat))
    assert sorted(len(fold) for fold in f.folds) == [4, 4, 5, 5, 5]
    for k in range(5):
        train, val = f.fold_cases(k)
        assert not set(train) & set(val) and len(train) + len(val) == 23


def test_deterministic_and_order_independent() -> None:
    a = make_folds(IDS, GRADES, 5, 100)
    b = make_folds(list(reversed(IDS)), GRADES, 5, 100)
    c = make_folds(IDS, GRADES, 5, 101)
    assert a == b and a.folds != c.folds


def test_stratified_by_grade() -> None:
    f = make_folds(IDS, GRADES, 4, 7)
    n_lgg = [sum(GRADES[c] == "LGG" for c in fold) for fold in f.folds]
    assert max(n_lgg) - min(n_lgg) <= 1 and sum(n_lgg) == 8


def test_holdout_fraction() -> None:
    f = make_folds(IDS, GRADES, 3, 100, holdout_fraction=0.2)
    assert len(f.holdout) == round(0.2 * 15) + round(0.2 * 8)
    in_folds = {c for fold in f.folds for c in fold}
    assert not in_folds & set(f.holdout) and in_folds | set(f.holdout) == set(IDS)
    train, val = f.fold_cases(0)
    assert not set(train) & set(f.holdout)


def test_errors() -> None:
    with pytest.raises(DataError, match=r"3 cases left .* data.n_folds is 5"):
        make_folds(IDS[:3], {}, 5, 1)
    with pytest.raises(DataError, match=r"fold 5 does not exist; valid folds: 0\.\.4"):
        make_folds(IDS, GRADES, 5, 1).fold_cases(5)


def test_json_round_trip(tmp_path: Path) -> None:
    f = make_folds(IDS, GRADES, 5, 100, 0.1)
    path = write_folds(f, folds_path(tmp_path / "store.h5"))
    assert path.name == "store.folds.json"
    assert load_folds(path) == f
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_folds(path)
