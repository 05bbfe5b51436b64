"""Pieces of the one-line messages that training and evaluation print."""

from __future__ import annotations


def listed(names, limit: int = 8) -> str:
    """The first ``limit`` of ``names`` joined by commas, and how many there are in all when that is
    more: ``"a, b, c"`` or ``"a, b, ... (12 in all)"`` (a message naming 1,000 classes would be a page)."""
    names = [str(n) for n in names]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names)} in all)"
