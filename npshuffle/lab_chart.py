"""``npshuffle lab --png``: each experiment's variants as bars, time relative to the first variant,
npshuffle's kernels beside torch eager (drawn with Pillow)."""

from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageFont

from .atomic import write_atomically
from .lab import Report

ROW_H, NAME_W, BAR_W, HEADER = 16, 190, 320, 22
NUMBA_COLOUR, TORCH_COLOUR = (70, 120, 190), (150, 150, 150)


def draw(reports: list[Report]) -> Image.Image:
    rows = sum(2 * len(r.results) + 2 for r in reports)
    image = Image.new("RGB", (NAME_W + BAR_W + 90, HEADER + ROW_H * rows + 8), "white")
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    pen.text((8, 4), "time relative to the first variant:", fill="black", font=font)
    pen.text((230, 4), "npshuffle", fill=NUMBA_COLOUR, font=font)
    pen.text((300, 4), "torch eager", fill=TORCH_COLOUR, font=font)
    most = max(max(getattr(r, a) / getattr(rep.results[0], a) for r in rep.results for a in ("numba_s", "torch_s")
                   if getattr(r, a) is not None) for rep in reports)
    y = HEADER
    for report in reports:
        pen.text((8, y), f"{report.guideline}: {report.claim}", fill="black", font=font)
        y += ROW_H
        for result in report.results:
            pen.text((16, y), result.variant[:30], fill="black", font=font)
            for attr, colour in (("numba_s", NUMBA_COLOUR), ("torch_s", TORCH_COLOUR)):
                value = getattr(result, attr)
                if value is not None:
                    ratio = value / getattr(report.results[0], attr)
                    pen.rectangle((NAME_W, y + 2, NAME_W + int(BAR_W * ratio / most), y + ROW_H // 2 + 3), fill=colour)
                    pen.text((NAME_W + int(BAR_W * ratio / most) + 4, y), f"{ratio:.2f}x", fill="gray", font=font)
                y += ROW_H // 2 + 2
            y += ROW_H - 2 * (ROW_H // 2 + 2) + ROW_H // 2
        y += ROW_H // 2
    return image.crop((0, 0, image.width, y + 4))


def save(reports: list[Report], path: str | os.PathLike) -> None:
    image = draw(reports)
    write_atomically(path, lambda f: image.save(f, format="PNG"))
