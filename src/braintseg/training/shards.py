"""Work shards of ``predict`` / ``evaluate --shard K/N``: process ``K`` of ``N`` takes every
``N``-th item, so ``N`` jobs (e.g. a Slurm array) share the cases without talking to each other.
An implementation part of :mod:`braintseg.training.distribute`: import these names from there.
"""

from __future__ import annotations

from typing import Any

from braintseg.errors import ConfigError


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` (``predict/evaluate --shard``, 0 <= K < N) → ``(K, N)``; None stays None.

    Raises:
        ConfigError: anything else, naming the value.
    """
    if text is None:
        return None
    k, sep, n = text.partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit()) or not 0 <= int(k) < int(n):
        raise ConfigError(f"--shard must be K/N with 0 <= K < N (e.g. 0/4); received {text!r}")
    return int(k), int(n)


def shard_items(items: list[Any], shard: tuple[int, int] | None) -> list[Any]:
    """Items ``K, K+N, K+2N, …`` of ``items`` (in their given, deterministic order): the shards
    of ``N`` are disjoint and together hold every item once."""
    if shard is None:
        return list(items)
    k, n = shard
    return list(items[k::n])


def shard_suffix(shard: tuple[int, int] | None) -> str:
    """``".shard-K-of-N"`` for the per-shard files (empty without a shard)."""
    return "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"
