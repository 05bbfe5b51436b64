"""Shared test helpers: paths to ../shared, random-weight torch models saved as checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("NPSHUFFLE_SHARED", REPO.parent / "shared"))
WEIGHTS = SHARED / "weights"
FLOWERS = SHARED / "data" / "flower_photos"


def require(path: Path) -> Path:
    """Skip the test when a ../shared file is absent (a user's checkout without the data)."""
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path
