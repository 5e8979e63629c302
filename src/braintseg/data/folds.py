"""Patient-level, seeded, grade-stratified k-fold splits with an optional hold-out set.

Splits are by case (patient), never by slice.  The same ``(case_ids, grades, n_folds, seed,
holdout_fraction)`` always gives the same split, whatever the input order.  Stored inside the
store and as readable JSON beside it: ``<store stem>.folds.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from braintseg.atomic import atomic_write_text
from braintseg.errors import DataError

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Folds:
    """``folds[k]`` = validation case ids of fold k; ``holdout`` = test cases in no fold."""

    folds: list[list[str]]
    holdout: list[str]
    n_folds: int
    seed: int
    holdout_fraction: float
    grades: dict[str, str | None] = field(default_factory=dict)

    def fold_cases(self, fold: int) -> tuple[list[str], list[str]]:
        """``(train ids, validation ids)`` of ``fold``; DataError if out of range."""
        if not 0 <= fold < len(self.folds):
            valid = f"0..{len(self.folds) - 1}" if self.folds else "none (store has no folds)"
            raise DataError(f"fold {fold} does not exist; valid folds: {valid}")
        val = self.folds[fold]
        train = [c for k, ids in enumerate(self.folds) if k != fold for c in ids]
        return sorted(train), list(val)

    def to_json(self) -> str:
        """Readable JSON text."""
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], where: str = "folds") -> Folds:
        """Build from parsed JSON; DataError naming ``where`` when keys are missing."""
        try:
            return cls(
                folds=[list(map(str, f)) for f in raw["folds"]],
                holdout=list(map(str, raw["holdout"])),
                n_folds=int(raw["n_folds"]), seed=int(raw["seed"]),
                holdout_fraction=float(raw["holdout_fraction"]),
                grades=dict(raw.get("grades", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: invalid folds JSON ({exc!r})") from None


def make_folds(
    case_ids: Sequence[str],
    grades: Mapping[str, str | None] | Sequence[str | None],
    n_folds: int = 5,
    seed: int = 100,
    holdout_fraction: float = 0.0,
) -> Folds:
    """Split cases into a hold-out set and ``n_folds`` validation folds.

    Cases are grouped by grade (unknown grades form one group), each group is shuffled with
    ``np.random.default_rng(seed)``; ``round(holdout_fraction * len(group))`` cases of each
    group go to the hold-out set, the rest are dealt round-robin into folds (fold sizes differ by
    at most one, grades spread evenly).

    Raises:
        DataError: fewer non-hold-out cases than folds, or duplicate case ids.
    """
    ids = sorted(map(str, case_ids))
    if len(set(ids)) != len(ids):
        raise DataError("duplicate case ids; each case must appear once")
    if isinstance(grades, Mapping):
        grade_of = {c: grades.get(c) for c in ids}
    else:
        grade_of = dict(zip(map(str, case_ids), grades, strict=True))
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {}
    for c in ids:
        groups.setdefault(grade_of.get(c) or UNKNOWN, []).append(c)
    holdout: list[str] = []
    pool: list[str] = []
    for key in sorted(groups):
        members = [groups[key][i] for i in rng.permutation(len(groups[key]))]
        n_hold = int(round(holdout_fraction * len(members)))
        holdout += members[:n_hold]
        pool += members[n_hold:]
    if len(pool) < n_folds:
        raise DataError(
            f"{len(pool)} cases left for cross-validation but data.n_folds is {n_folds}; "
            "add cases or lower data.n_folds / data.holdout_fraction"
        )
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    offset = int(rng.integers(n_folds))
    for j, c in enumerate(pool):
        folds[(offset + j) % n_folds].append(c)
    return Folds([sorted(f) for f in folds], sorted(holdout), n_folds, seed,
                 float(holdout_fraction), {c: grade_of.get(c) for c in ids})


def folds_path(store: Path) -> Path:
    """``<store stem>.folds.json`` beside the store."""
    store = Path(store)
    return store.with_name(f"{store.stem}.folds.json")


def write_folds(folds: Folds, path: Path) -> Path:
    """Write folds JSON atomically (temporary name, then rename)."""
    return atomic_write_text(Path(path), folds.to_json())


def load_folds(path: Path) -> Folds:
    """Read a folds JSON file; DataError when missing or invalid."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise DataError(f"cannot read folds file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    return Folds.from_mapping(raw, str(path))


def folds_digest(folds: Sequence[Sequence[str]], holdout: Sequence[str] = ()) -> str:
    """sha256 of the canonical JSON of the validation lists (and held-out cases): two stores
    with this digest split the patients alike (order within a fold does not count)."""
    import hashlib

    text = json.dumps({"folds": [sorted(f) for f in folds], "holdout": sorted(holdout)},
                      separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
