"""Fuzzing the checkpoint reader and the converter: mutated valid checkpoints of both torch formats.

The default run is short; ``NPSHUFFLE_FUZZ=1 python -m pytest -m fuzz tests/test_hostile_checkpoints_fuzz.py``
runs the long one (``NPSHUFFLE_FUZZ_EXAMPLES``, default 2000, examples per format). Every mutation runs
in the child process (tests/hostile_runner.py) and must convert or be refused cleanly.
"""

from __future__ import annotations

import io
import os
import pickletools
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile_files import small_state_dict
from tests.hostile_runner import PEAK_RSS_LIMIT_MB, Worker, assert_refused_cleanly, worker_for_module


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    yield from worker_for_module()


# --------------------------------------------------------------------------
# fuzzing: mutated valid checkpoints
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_checkpoints(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("valid")
    state = small_state_dict()
    files = {}
    for fmt in ("zip", "legacy"):
        path = folder / f"{fmt}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=fmt == "zip")
        files[fmt] = path.read_bytes()
    return files


def structure_end(fmt: str, data: bytes) -> int:
    """Where the pickles end (legacy) or the zip's data.pkl record ends: mutations before it hit the parser."""
    if fmt == "legacy":
        stream = io.BytesIO(data)
        for _ in range(5):  # magic, version, sys_info, main pickle, key list
            for _op in pickletools.genops(stream):
                pass
        return stream.tell()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_length + extra_length + info.compress_size


def rezip_with_pickle(data: bytes, pickled: bytes) -> bytes:
    """The zip ``data`` with its data.pkl replaced (and a correct CRC, so the reader gets to run it)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, pickled if info.filename.endswith("/data.pkl") else source.read(info))
    return out.getvalue()


@st.composite
def mutated(draw, files: dict[str, bytes]) -> tuple[str, bytes]:
    """A valid checkpoint with 1-4 bit flips, byte edits, insertions, deletions or a truncation, mostly in
    its pickles (for zip files: inside data.pkl, re-zipped with a correct CRC, or anywhere in the file)."""
    fmt = draw(st.sampled_from(sorted(files)))
    data = files[fmt]
    inside_pickle = fmt == "zip" and draw(st.booleans())
    if inside_pickle:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            target = bytearray(archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl"))))
    else:
        target = bytearray(data)
    end = structure_end(fmt, data) if not inside_pickle else len(target)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.one_of(st.integers(0, min(end, len(target)) - 1), st.integers(0, len(target) - 1)))
        kind = draw(st.sampled_from(["flip", "flip", "byte", "byte", "insert", "delete", "truncate"]))
        if kind == "flip":
            target[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            target[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            target[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del target[position : position + draw(st.integers(1, 8))]
        else:
            del target[position:]
        if not target:
            break
    return fmt, rezip_with_pickle(data, bytes(target)) if inside_pickle else bytes(target)


def check_mutation(worker: Worker, folder: Path, fmt: str, data: bytes) -> None:
    path = folder / f"mutated-{fmt}.pth"
    path.write_bytes(data)
    result = worker.ask("convert", path, folder / "out.npz")
    if result["outcome"] != "ok":
        assert_refused_cleanly(result)
    assert result["peak_rss_mb"] < PEAK_RSS_LIMIT_MB, result


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_checkpoints(tmp_path: Path, worker: Worker, valid_checkpoints, data) -> None:
    fmt, mutation = data.draw(mutated(valid_checkpoints))
    check_mutation(worker, tmp_path, fmt, mutation)


FUZZ_EXAMPLES = int(os.environ.get("NPSHUFFLE_FUZZ_EXAMPLES", "2000"))


@pytest.mark.fuzz
@pytest.mark.skipif(not os.environ.get("NPSHUFFLE_FUZZ"), reason="long fuzzing run: set NPSHUFFLE_FUZZ=1")
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_checkpoints_long(tmp_path: Path, worker: Worker, valid_checkpoints, data) -> None:
    fmt, mutation = data.draw(mutated(valid_checkpoints))
    check_mutation(worker, tmp_path, fmt, mutation)
