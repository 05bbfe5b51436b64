"""Hypothesis strategies shared by the whole-model parity tests: random small valid architectures."""

from __future__ import annotations

from hypothesis import strategies as st

from npshuffle.archs import V1Spec, V2Spec


@st.composite
def v1_specs(draw, max_classes: int = 12):
    """ShuffleNet V1 with random groups, 1-3 widening stages whose widths are multiples of 4*g."""
    g = draw(st.sampled_from([1, 2, 3, 4, 8]))
    stages = draw(st.integers(1, 3))
    stem = g * draw(st.integers(1, 3))
    widths, previous = [], stem
    for _ in range(stages):
        width = 4 * g * draw(st.integers(previous // (4 * g) + 1, previous // (4 * g) + 3))
        widths.append(width)
        previous = width
    repeats = tuple(draw(st.integers(1, 3)) for _ in range(stages))
    return V1Spec(g, stem, tuple(widths), repeats, draw(st.integers(1, max_classes)))


@st.composite
def v2_specs(draw, max_step: int = 12, max_head: int = 64, max_classes: int = 12):
    """ShuffleNet V2 with 1-3 widening (even) stages, as every published V2 (Megvii's wiring needs it)."""
    stages = draw(st.integers(1, 3))
    stem = draw(st.integers(3, 24))
    widths, previous = [], stem
    for _ in range(stages):
        widths.append(2 * draw(st.integers(previous // 2 + 1, previous // 2 + max_step)))
        previous = widths[-1]
    repeats = tuple(draw(st.integers(1, 3)) for _ in range(stages))
    return V2Spec(stem, tuple(widths), draw(st.integers(4, max_head)), repeats, draw(st.integers(1, max_classes)))
