"""Model files that pass a casual look and then would fail, hang or exhaust memory: each is refused
at load with one ModelFileError naming the file, before anything large is allocated."""

from __future__ import annotations

import io
import json
import os
import time
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npshuffle.model_file import METADATA_KEY, ModelFileError, load_model_file
from npshuffle.zoo import ZOO, bundled_path

FLOWERS = bundled_path(ZOO["flowers"])
# the fuzz tests' example counts: small in CI, raise for a long run (NPSHUFFLE_FUZZ_EXAMPLES=20000)
FUZZ_EXAMPLES = int(os.environ.get("NPSHUFFLE_FUZZ_EXAMPLES", "60"))


def members(path=FLOWERS) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def metadata(files: dict[str, bytes]) -> dict:
    raw = np.load(io.BytesIO(files[METADATA_KEY + ".npy"]))
    return json.loads(raw.tobytes())


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write(path, files: dict[str, bytes], meta: dict | None = None, raw_meta: bytes | None = None) -> str:
    files = dict(files)
    if meta is not None or raw_meta is not None:
        text = raw_meta if raw_meta is not None else json.dumps(meta).encode()
        files[METADATA_KEY + ".npy"] = npy(np.frombuffer(text, np.uint8))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:  # (stored: fast to write)
        for name, data in files.items():
            archive.writestr(name, data)
    return str(path)


def refused(path, match: str, seconds: float = 2.0) -> str:
    start = time.perf_counter()
    with pytest.raises(ModelFileError, match=match) as info:
        load_model_file(path)
    assert time.perf_counter() - start < seconds, "refused, but only after a long time"
    message = str(info.value)
    assert str(path) in message and len(message) < 700 and "\n" not in message
    return message


@pytest.mark.parametrize("field, value, match", [
    ("scale", float("inf"), "scale"),
    ("resize", 10**9, "resize must be an integer from 32 to 2048"),
    ("resize", 30000, "resize"),
    ("crop", 4, "crop"),
    ("resize", 256.0, "resize"),
    ("mean", [0, 0], "mean must be 3"),
    ("std", [1, 0, 1], "positive"),
    ("std", [1, float("nan"), 1], "std"),
    ("interpolation", "lanczos" * 1000, "interpolation"),
])
def test_out_of_range_preprocessing_is_refused(tmp_path, field, value, match):
    files = members()
    meta = metadata(files)
    meta["preprocess"][field] = value
    refused(write(tmp_path / "bad.npz", files, meta), match)


@pytest.mark.parametrize("change, match", [
    (lambda a: a.update(stage_repeats=[10**9, 7, 3]), "out of bounds"),
    (lambda a: a.update(stage_channels=[240, 480, 10**6]), "out of bounds"),
    (lambda a: a.update(num_classes=10**8), "out of bounds"),
    (lambda a: a.update(stem_channels=24.0), "stem_channels must be an integer"),
    (lambda a: a.update(stage_channels=[240, float("inf"), 960]), "must be an integer"),
    (lambda a: a.update(stage_channels=[240] * 50, stage_repeats=[1] * 50), "1 to 8"),
    (lambda a: a.update(groups=True), "groups must be an integer"),
    (lambda a: a.update(evil=1), "fields must be"),
])
def test_absurd_architectures_are_refused_before_anything_is_built(tmp_path, change, match):
    files = members()
    meta = metadata(files)
    change(meta["arch"])
    refused(write(tmp_path / "bad.npz", files, meta), match, seconds=1.0)


def test_metadata_nested_100000_deep_is_refused(tmp_path):
    files = members()
    refused(write(tmp_path / "deep.npz", files, raw_meta=b"[" * 100_000 + b"]" * 100_000), "nested too deeply")


def test_random_bytes_are_not_a_model_file_and_no_hint_at_allow_pickle(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    message = refused(path, "not a readable npshuffle model file")
    assert "pickle" not in message


def test_a_zip_bomb_under_an_unexpected_name_is_never_decompressed(tmp_path):
    path = tmp_path / "bomb.npz"
    write(path, members())
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive, archive.open("junk.npy", "w",
                                                                                      force_zip64=True) as f:
        zeros = bytes(2**20)
        for _ in range(256):  # 256 MiB of zeros in ~250 KB
            f.write(zeros)
    assert os.path.getsize(path) < 3 * 2**20
    refused(path, "unexpected tensors: junk", seconds=0.5)


def test_a_tensor_declaring_a_huge_shape_is_refused_before_allocation(tmp_path):
    files = members()
    name = "classifier.weight.npy"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    files[name] = header.getvalue() + bytes(64)
    refused(write(tmp_path / "huge.npz", files), "classifier.weight has shape")


def test_a_tensor_whose_declared_size_is_too_large_is_refused_unread(tmp_path):
    files = members()
    files["classifier.weight.npy"] += bytes(64 * 2**20)  # right header, 64 MiB of trailing data
    refused(write(tmp_path / "long.npz", files), "declares")


@pytest.mark.parametrize("shape", [(), (7,), (5, 1024), (3, 4, 5, 6)])
@pytest.mark.parametrize("dtype", ["<f4", "|u1", ">i8"])
@pytest.mark.parametrize("fortran", [False, True])
def test_the_npy_header_reader_reads_what_numpy_writes(shape, dtype, fortran):
    from npshuffle.model_file import _read_npy_header

    array = np.zeros(shape, dtype=dtype, order="F" if fortran else "C")
    assert _read_npy_header(io.BytesIO(npy(array)), "x.npy") == (shape, fortran and len(shape) > 1, np.dtype(dtype))


@pytest.mark.parametrize("header", [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), 'extra': 1, }",
    "{'fortran_order': False, 'descr': '<f4', 'shape': (5,), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (5 if 1 else 2,), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (-5,), }",
    "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (5,), }",
])
def test_the_npy_header_reader_refuses_any_other_form(header):
    from npshuffle.model_file import _read_npy_header

    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
    with pytest.raises(ValueError, match="not the form NumPy writes"):
        _read_npy_header(io.BytesIO(data), "x.npy")


def test_wrong_dtype_and_fortran_order_are_refused(tmp_path):
    files = members()
    weight = np.load(io.BytesIO(files["classifier.weight.npy"]))
    files["classifier.weight.npy"] = npy(weight.astype(np.float64))
    refused(write(tmp_path / "f64.npz", files), "dtype")
    files["classifier.weight.npy"] = npy(np.asfortranarray(weight))
    refused(write(tmp_path / "fortran.npz", files), "Fortran")


def test_the_bundled_model_still_loads():
    model = load_model_file(FLOWERS)
    assert model.plan.classifier.num_classes == 5


@pytest.mark.fuzz
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_bit_flips_and_truncations_load_or_give_one_clear_error(tmp_path_factory, data):
    original = open(FLOWERS, "rb").read()
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        position = data.draw(st.integers(0, len(mutated) - 1), label="byte")
        mutated[position] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    if data.draw(st.booleans(), label="truncate"):
        mutated = mutated[: data.draw(st.integers(0, len(mutated)), label="length")]
    path = tmp_path_factory.mktemp("fuzz") / "mutated.npz"
    path.write_bytes(bytes(mutated))
    try:
        model = load_model_file(path)
    except ModelFileError as exc:
        assert len(str(exc)) < 700 and "\n" not in str(exc)
    else:  # a flip the checks cannot see (inside a float's mantissa) still gives a complete model
        assert all(np.isfinite(w).all() for w in model.weights.values())


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


@pytest.mark.fuzz
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_metadata_edits_load_or_give_one_clear_error(tmp_path_factory, data):
    files = members()
    meta = metadata(files)
    section = data.draw(st.sampled_from(["arch", "preprocess", None]), label="section")
    target = meta[section] if section else meta
    key = data.draw(st.sampled_from(sorted(target)), label="key")
    target[key] = data.draw(JSON_VALUES, label="value")
    path = tmp_path_factory.mktemp("fuzz") / "edited.npz"
    write(path, files, meta)
    try:
        load_model_file(path)
    except ModelFileError as exc:
        assert len(str(exc)) < 700 and "\n" not in str(exc)


def test_a_saved_model_file_is_complete_and_has_ordinary_permissions(tmp_path):
    from npshuffle.model_file import save_model_file

    original = load_model_file(FLOWERS)
    path = tmp_path / "copy.npz"
    save_model_file(path, original.spec, original.dialect, original.weights, class_names=original.class_names,
                    recipe=original.recipe)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not the 0600 of a temporary file
    assert [p.name for p in tmp_path.iterdir()] == ["copy.npz"]
    assert load_model_file(path).class_names == original.class_names


def test_an_archive_of_too_many_entries_is_refused_before_zipfile_reads_them(tmp_path):
    path = tmp_path / "many.npz"
    write(path, members())
    with zipfile.ZipFile(path, "a", zipfile.ZIP_STORED) as archive:
        for i in range(25_000):
            archive.writestr(f"{i}", b"")
    refused(path, r"of \d+ entries is not a model file", seconds=0.5)


def test_a_header_python_would_warn_about_is_refused_without_the_warning(tmp_path):
    # NumPy's own reader evaluates a .npy header with ast.literal_eval; "\e" in a string is an invalid
    # escape, which Python's parser reports with a warning (shown by default from 3.12)
    files = members()
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (5, 1024), 'note': '\\e', }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    files["classifier.weight.npy"] = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
    path = write(tmp_path / "escape.npz", files)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refused(path, "not the form NumPy writes")
    assert [str(w.message) for w in caught] == []
