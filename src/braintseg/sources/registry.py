"""Which source a folder holds: every module of :mod:`braintseg.sources` that is not a helper
is a source named after its module (``brats``, ``lgg``, ``figshare``, …), found without importing
it; detection asks each one; ``--format`` forces one.

A new source is one module beside the others implementing :class:`braintseg.sources.base.Source`
(and its test): nothing else lists it.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, cast

import braintseg.sources as _package
from braintseg.errors import ConfigError, DataError

if TYPE_CHECKING:  # the CLI imports this module for --format's choices: no numpy here
    from braintseg.sources.base import Source

#: modules of the package that are not sources
HELPERS: frozenset[str] = frozenset({"base", "registry", "synthetic"})
#: source names, sorted, ``brats`` first (the default when nothing else matches)
FORMATS: tuple[str, ...] = tuple(sorted(
    (m.name for m in pkgutil.iter_modules(_package.__path__) if m.name not in HELPERS),
    key=lambda name: (name != "brats", name)))


def source(name: str) -> Source:
    """The source module ``name``; ConfigError naming the known ones for any other."""
    if name not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; received {name!r}")
    return cast("Source", importlib.import_module(f"braintseg.sources.{name}"))


def detect_format(root: Path, forced: str | None = None) -> str:
    """The format of the input folder ``root``.

    Args:
        root: the input folder.
        forced: a name from :data:`FORMATS` (``--format``): returned as is (other files are
            then ignored); None: detect by layout.

    Raises:
        DataError: ``root`` missing, no format matches (lists what each expects), or several
            do (names one file of each: mixed formats under one root).
        ConfigError: unknown ``forced`` name.
    """
    root = Path(root)
    if forced is not None:
        source(forced)  # ConfigError for an unknown name
        return forced
    if not root.exists():
        raise DataError(f"input {root} does not exist")
    if not root.is_dir():
        raise DataError(f"input {root} is not a folder")
    found: dict[str, Path] = {}
    for name in FORMATS:
        hit = source(name).detect(root)
        if hit is not None:
            found[name] = hit
    if not found:
        raise DataError(f"no BraTS cases found under {root} (nor any other input format it "
                        "matches); expected one of: "
                        + "; ".join(f"{k}: {source(k).DESCRIPTION}" for k in FORMATS))
    if len(found) > 1:
        raise DataError(f"{root} mixes input formats ("
                        + ", ".join(f"{k}: {p}" for k, p in found.items())
                        + "); keep one format per folder or choose one with --format")
    return next(iter(found))
