"""Fuzzing the photo path: mutated JPEG, PNG, GIF and BMP files (bit flips, byte edits, truncation,
header size fields) classified as a folder would be. Each must come back as a prediction or one
error row naming the file; never an exception, a hang or a memory blow-up.

The mutated files of one Hypothesis example are classified in a child process with an
address-space cap and a time limit, so a regression fails the test instead of taking the machine
down. ``NPSHUFFLE_FUZZ_EXAMPLES`` raises the example count for a long run.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import REPO

FUZZ_EXAMPLES = int(os.environ.get("NPSHUFFLE_FUZZ_EXAMPLES", "15"))
MEMORY_CAP = 2 * 2**30  # address space of the child (numpy + PIL + a model need ~1 GiB of it)
TIME_LIMIT_S = 60

WORKER = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
import npshuffle
model = npshuffle.load_model("flowers_v2", backend="numpy")
results = npshuffle.predict(sys.argv[1:], model=model, top_k=1)
print(json.dumps([r.to_dict() for r in results]))
"""


def originals() -> dict[str, bytes]:
    """One small photo in several formats: the seeds the mutations start from."""
    photo = Image.open(REPO / "examples" / "tulip.jpg").convert("RGB").resize((96, 64))
    out = {}
    for ext, fmt, options in ((".jpg", "JPEG", {"quality": 80}), (".png", "PNG", {}), (".gif", "GIF", {}),
                              (".bmp", "BMP", {}), (".webp", "WEBP", {})):
        buffer = io.BytesIO()
        photo.save(buffer, fmt, **options)
        out[ext] = buffer.getvalue()
    return out


ORIGINALS = originals()


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    ext = draw(st.sampled_from(sorted(ORIGINALS)))
    data = bytearray(ORIGINALS[ext])
    kind = draw(st.sampled_from(["flip", "bytes", "truncate", "header"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 16))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "bytes":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    else:  # the first bytes hold the size fields of every format: make them large
        i = draw(st.integers(0, min(64, len(data) - 4)))
        data[i: i + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00"]))
    return ext, bytes(data)


@pytest.mark.fuzz
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(mutated(), min_size=1, max_size=6))
def test_fuzz_mutated_photos_are_classified_or_one_error_row_each(tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, (ext, data) in enumerate(files):
        path = folder / f"{i}{ext}"
        path.write_bytes(data)
        paths.append(str(path))
    code = WORKER.format(cap=MEMORY_CAP)
    out = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, cwd=REPO,
                         timeout=TIME_LIMIT_S)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert [row["source"] for row in rows] == paths  # one row per file, in order
    for row in rows:
        if "error" in row:
            assert row["source"] in row["error"] and "\n" not in row["error"] and len(row["error"]) < 500
        else:
            assert 0 < row["top"][0]["probability"] <= 1
