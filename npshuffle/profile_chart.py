"""``npshuffle profile --png``: each layer's share of the multiply-adds beside its share of the time.

Two bar charts side by side, one row per layer (drawn with Pillow, already a dependency): left,
the layer's share of the network's MACs; right, its share of the measured time. A layer whose
right bar is much longer than its left one is slower than its FLOPs say (memory-bound: the
depthwise convs, the input copy, the classifier); that gap is the ShuffleNet V2 paper's lesson.
"""

from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageFont

from .atomic import write_atomically
from .profiling import Profile

ROW_H, NAME_W, BAR_W, GAP, TOP = 14, 200, 300, 30, 44
MACS_COLOUR, TIME_COLOUR = (70, 120, 190), (210, 110, 50)


def draw(profile: Profile) -> Image.Image:
    """The chart as an RGB image."""
    rows = profile.rows
    total_macs = sum(r.macs for r in rows) or 1
    width = NAME_W + 2 * BAR_W + 3 * GAP
    height = TOP + ROW_H * len(rows) + 24
    image = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right = NAME_W + GAP, NAME_W + 2 * GAP + BAR_W
    pen.text((8, 6), f"{profile.model} on {profile.backend}, {profile.size}x{profile.size}, one image, one thread",
             fill="black", font=font)
    pen.text((left, 24), "share of multiply-adds", fill=MACS_COLOUR, font=font)
    pen.text((right, 24), "share of time", fill=TIME_COLOUR, font=font)
    most = max(max(r.macs / total_macs, r.share) for r in rows) or 1.0  # (both panels on one scale)
    for i, row in enumerate(rows):
        y = TOP + i * ROW_H
        pen.text((8, y), row.name[:32], fill="black", font=font)
        for x0, value, colour in ((left, row.macs / total_macs, MACS_COLOUR), (right, row.share, TIME_COLOUR)):
            length = int(BAR_W * value / most)
            if length:
                pen.rectangle((x0, y + 2, x0 + length, y + ROW_H - 3), fill=colour)
            pen.text((x0 + length + 3, y), f"{100 * value:.1f}%", fill="gray", font=font)
    pen.text((8, height - 18), f"whole forward pass, batch {profile.batch}: {profile.forward_s * 1e3:.2f} ms; "
             f"NumPy SGEMM here: {profile.sgemm_gflops:.0f} GFLOP/s", fill="black", font=font)
    return image


def save(profile: Profile, path: str | os.PathLike) -> None:
    """Draw the chart and write it to ``path`` as a PNG, atomically."""
    image = draw(profile)
    write_atomically(path, lambda f: image.save(f, format="PNG"))
