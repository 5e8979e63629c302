"""User-facing errors.

The library raises these; only :mod:`braintseg.cli` turns them into one-line messages with a
non-zero exit code.  Messages say what failed, where (file, case or key), what was expected and
what was received.
"""

from __future__ import annotations


class BraintsegError(Exception):
    """Base class for every error caused by the user's input or environment."""


class ConfigError(BraintsegError):
    """A configuration file, key or value is invalid."""


class DataError(BraintsegError):
    """An input file, case, store or run folder is missing or invalid."""


class Interrupted(BraintsegError):  # noqa: N818 - reads better at the call site
    """Training stopped on a signal after saving a checkpoint; the run can be resumed."""
