"""safetensors in and out: npshuffle's NumPy reader (``npshuffle.safetensors_file``) against the
``safetensors`` package, checkpoints converted from ``.safetensors`` exactly as from ``.pth``, models
exported as ``.safetensors`` loaded everywhere a model file is, and hand-made malformed files each
refused with one line naming the file and the problem.

torch and the safetensors package are used only to *write* files here (and as references).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import npshuffle  # noqa: E402
from npshuffle.archs import V1Spec, V2Spec  # noqa: E402
from npshuffle.cli import main as cli  # noqa: E402
from npshuffle.model import Model  # noqa: E402
from npshuffle.model_file import ModelFileError, load_model_file  # noqa: E402
from npshuffle.safetensors_file import MAX_HEADER_BYTES, SafetensorsError, SafetensorsReader, write_safetensors  # noqa: E402
from npshuffle.training.torch_ref import build_torch_model, randomize_  # noqa: E402
from npshuffle.zoo import ENTRIES, bundled_path  # noqa: E402
from tests.conftest import REPO, WEIGHTS, require  # noqa: E402
from weights_convert import ConversionError, convert_checkpoint, convert_file  # noqa: E402

SMALL_V1 = V1Spec(3, 12, (48, 96), (2, 2), num_classes=7)
SMALL_V2 = V2Spec(8, (16, 32), 48, (1, 2), num_classes=5)
SPECS = {"v1": SMALL_V1, "v2": SMALL_V2}
DIALECTS = ("torchvision", "megvii")


def state_dict(spec, dialect: str, dtype=torch.float32) -> dict[str, torch.Tensor]:
    net = randomize_(build_torch_model(spec, dialect), torch.Generator().manual_seed(3))
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in net.state_dict().items()}


def logits(model_path, x: np.ndarray) -> np.ndarray:
    return Model.load(model_path, backend="numpy").forward(x)


def images(n: int = 2, size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# the format: npshuffle's reader and writer against the safetensors package


def every_dtype() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 4, generator=gen), "f16": torch.randn(5, generator=gen).half(),
        "bf16": torch.randn(2, 3, generator=gen).bfloat16(), "f64": torch.randn(2, 2, generator=gen).double(),
        "i64": torch.tensor([-(2**40), 7]), "i32": torch.tensor([1, -2], dtype=torch.int32),
        "i16": torch.tensor([3], dtype=torch.int16), "i8": torch.tensor([-4], dtype=torch.int8),
        "u8": torch.tensor([250], dtype=torch.uint8), "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3),
    }


def test_reads_every_dtype_the_package_writes(tmp_path):
    tensors = every_dtype()
    path = tmp_path / "all.safetensors"
    safetensors_torch.save_file(tensors, path, metadata={"note": "hello"})
    with SafetensorsReader(path) as reader:
        assert reader.metadata == {"note": "hello"}
        loaded = reader.read_all()
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        want = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        assert loaded[name].dtype == want.dtype and loaded[name].flags.writeable, name
        np.testing.assert_array_equal(loaded[name], want, strict=True)


def test_the_package_reads_what_npshuffle_writes(tmp_path):
    arrays = {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in every_dtype().items()}
    arrays["big_endian"] = np.arange(6, dtype=">f4").reshape(2, 3)
    path = tmp_path / "ours.safetensors"
    write_safetensors(path, arrays, {"npshuffle": '{"x": "ü"}'})
    loaded = safetensors_numpy.load_file(path)
    for name, array in arrays.items():
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].dtype == array.dtype.newbyteorder("=")
    from safetensors import safe_open

    with safe_open(path, "np") as f:
        assert f.metadata() == {"npshuffle": '{"x": "ü"}'}
    assert struct.unpack("<Q", path.read_bytes()[:8])[0] % 8 == 0  # the data start aligned, as the package writes



def test_bf16_is_widened_without_holding_the_tensor_three_times(tmp_path):
    """Reading BF16 needs the float32 result, twice the stored bytes, and not much more: a
    file within the reader's data limit (1 GiB) must not cost five times that in memory (the
    whole stored tensor, then a uint32 copy, then a shifted one: 5x, all at once)."""
    import tracemalloc

    count = 4 * 2**20
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(raw_file({"w": entry("BF16", (count,), (0, 2 * count))}))
    with open(path, "r+b") as f:  # (a sparse file of zeros)
        f.truncate(os.path.getsize(path) + 2 * count)
    values = np.array([1.5, -2.0, 3.140625], np.float32)  # exact in bfloat16
    with open(path, "r+b") as f:
        f.seek(-6, os.SEEK_END)
        f.write((values.view(np.uint32) >> 16).astype("<u2").tobytes())
    with SafetensorsReader(path) as reader:
        tracemalloc.start()
        try:
            array = reader.read("w")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert array.dtype == np.float32 and array.shape == (count,) and array.flags.writeable
    np.testing.assert_array_equal(array[-3:], values)
    assert not array[:-3].any()
    assert peak < 2.5 * 2 * count, f"peak {peak:,} bytes to read {2 * count:,} stored bytes"

# --------------------------------------------------------------------------------------------------
# safetensors in: the same conversion as from .pth


@pytest.mark.parametrize("version", SPECS)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_safetensors_checkpoint_converts_exactly_as_its_pth(tmp_path, version, dialect):
    spec = SPECS[version]
    tensors = state_dict(spec, dialect)
    torch.save({"state_dict": tensors}, tmp_path / "ckpt.pth")
    safetensors_torch.save_file(tensors, tmp_path / "ckpt.safetensors")
    via_pth = convert_file(tmp_path / "ckpt.pth", tmp_path / "pth.npz")
    via_st = convert_file(tmp_path / "ckpt.safetensors", tmp_path / "st.npz")
    assert via_st["dialect"] == via_pth["dialect"] == dialect and via_st["arch"] == via_pth["arch"]
    a, b = load_model_file(tmp_path / "pth.npz"), load_model_file(tmp_path / "st.npz")
    for name, value in a.weights.items():
        np.testing.assert_array_equal(b.weights[name], value, strict=True)
    x = images()
    np.testing.assert_array_equal(logits(tmp_path / "st.npz", x), logits(tmp_path / "pth.npz", x))
    # and the numbers are torch's
    net = build_torch_model(spec, dialect)
    net.load_state_dict(tensors)
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits(tmp_path / "st.npz", x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_other_float_dtypes_convert_as_their_pth_does(tmp_path, dtype):
    tensors = state_dict(SMALL_V2, "torchvision", dtype)
    torch.save(tensors, tmp_path / "ckpt.pth")
    safetensors_torch.save_file(tensors, tmp_path / "ckpt.safetensors")
    a = convert_checkpoint(tmp_path / "ckpt.pth").weights
    b = convert_checkpoint(tmp_path / "ckpt.safetensors").weights
    assert all(v.dtype == np.float32 for v in b.values())
    for name in a:
        np.testing.assert_array_equal(b[name], a[name], strict=True)


def test_the_megvii_checkpoint_through_safetensors(tmp_path):
    path = require(WEIGHTS / "ShuffleNetV1_g3_0.5x.pth.tar")
    tensors = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]  # keys with "module."
    safetensors_torch.save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "g3.safetensors")
    meta = convert_file(tmp_path / "g3.safetensors", tmp_path / "st.npz")
    convert_file(path, tmp_path / "pth.npz")
    assert meta["variant"] == "shufflenet_v1_g3_x0_5" and meta["dialect"] == "megvii"
    assert meta["class_names"][:2] == ["tench", "goldfish"]  # 1000 classes: the ImageNet names, as from .pth
    x = images(2, 224) * 60 + 110  # BGR 0..255-like
    np.testing.assert_array_equal(logits(tmp_path / "st.npz", x), logits(tmp_path / "pth.npz", x))


def test_content_not_the_name_tells_the_format(tmp_path):
    tensors = state_dict(SMALL_V2, "torchvision")
    safetensors_torch.save_file(tensors, tmp_path / "weights.bin")  # safetensors under another name
    torch.save(tensors, tmp_path / "really_a.safetensors")  # a torch zip under a .safetensors name
    a = convert_checkpoint(tmp_path / "weights.bin").weights
    b = convert_checkpoint(tmp_path / "really_a.safetensors").weights
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


# --------------------------------------------------------------------------------------------------
# class names from a Hugging Face config.json beside the weights


def write_checkpoint_with_config(folder, config: object | None, dtype=torch.float32):
    """A checkpoint with a config.json beside it: ``config`` as JSON, or as it is if bytes."""
    folder.mkdir(exist_ok=True)
    safetensors_torch.save_file(state_dict(SMALL_V2, "torchvision", dtype), folder / "model.safetensors")
    if isinstance(config, bytes):
        (folder / "config.json").write_bytes(config)
    elif config is not None:
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder / "model.safetensors"


FLOWERS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def test_config_json_names_the_classes(tmp_path):
    config = {"architectures": ["ShuffleNetV2"], "id2label": {str(i): n for i, n in enumerate(FLOWERS)}}
    path = write_checkpoint_with_config(tmp_path / "hf", config)
    meta = convert_file(path, tmp_path / "out.npz")
    assert meta["class_names"] == FLOWERS and meta["source"]["class_names"] == "config.json"
    (tmp_path / "mine.txt").write_text("a\nb\nc\nd\ne\n")
    assert convert_file(path, tmp_path / "out.npz", classes=str(tmp_path / "mine.txt"))["class_names"] == list("abcde")


def test_a_config_json_without_id2label_is_ignored(tmp_path):
    path = write_checkpoint_with_config(tmp_path / "hf", {"model_type": "shufflenet"})
    assert convert_file(path, tmp_path / "out.npz")["class_names"] == [f"class_{i}" for i in range(5)]


@pytest.mark.parametrize("config, problem", [
    ({"id2label": {"0": "a", "1": "b"}}, "id2label names 2 classes, but the checkpoint has 5"),
    ({"id2label": {"1": "a", "2": "b", "3": "c", "4": "d", "5": "e"}}, "no key '0'"),
    ({"id2label": "daisy"}, "not a JSON str"),
    ([1, 2], "expected a JSON object"),
    # a null is no class name (it became the class "None")
    ({"id2label": {"0": None, "1": "b", "2": "c", "3": "d", "4": "e"}}, "class names must be strings, found None"),
    # JSON can spell a lone surrogate, which is no text: no UTF-8 output could hold the class name
    ({"id2label": {"0": "a", "1": "b\ud800", "2": "c", "3": "d", "4": "e"}}, "holds a lone surrogate"),
    # a key given twice: which name is meant? (the last one was kept, silently)
    (b'{"id2label": {"0": "a", "0": "z", "1": "b", "2": "c", "3": "d", "4": "e"}}', "key '0' twice"),
    (b'{"id2label": {"0": "x"}, "id2label": {"0": "a", "1": "b", "2": "c", "3": "d", "4": "e"}}',
     "key 'id2label' twice"),
])
def test_a_bad_config_json_is_named_with_what_to_do(tmp_path, config, problem):
    path = write_checkpoint_with_config(tmp_path / "hf", config)
    with pytest.raises(ConversionError, match="config.json") as info:
        convert_file(path, tmp_path / "out.npz")
    assert problem in str(info.value) and "--classes" in str(info.value)


# --------------------------------------------------------------------------------------------------
# safetensors out: `npshuffle export`, and loading the result as a model


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_every_bundled_model_exported_as_safetensors_loads_to_the_same_logits(tmp_path, entry, capsys):
    out = tmp_path / f"{entry.name}.safetensors"
    assert cli(["export", entry.name, "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    original, exported = load_model_file(bundled_path(entry)), load_model_file(out)
    assert exported.metadata == original.metadata
    crop = original.recipe["crop"]
    x = images(2, crop) * (60 if original.dialect == "megvii" else 1)
    np.testing.assert_array_equal(logits(out, x), logits(bundled_path(entry), x))
    with SafetensorsReader(out) as reader:  # an ordinary safetensors file: F32 tensors under plan names
        assert set(reader.entries) == set(original.weights) and list(reader.metadata) == ["npshuffle"]
        assert {e.dtype for e in reader.entries.values()} == {"F32"}
    loaded = safetensors_numpy.load_file(out)
    np.testing.assert_array_equal(loaded["stem.weight"], original.weights["stem.weight"])


def test_an_exported_safetensors_model_works_everywhere_a_model_file_does(tmp_path, capsys):
    out = tmp_path / "flowers.safetensors"
    assert cli(["export", "flowers", "-o", str(out)]) == 0
    tulip = str(REPO / "examples" / "tulip.jpg")
    want = npshuffle.predict(tulip, backend="numpy")
    got = npshuffle.predict(tulip, model=str(out), backend="numpy")
    assert got.label == want.label == "tulips"
    np.testing.assert_array_equal(got.logits, want.logits)
    capsys.readouterr()
    assert cli(["predict", tulip, "--model", str(out), "--device", "numpy", "-k", "1", "-f", "jsonl"]) == 0
    assert json.loads(capsys.readouterr().out)["top"][0]["label"] == "tulips"
    assert cli(["export", str(out), "-o", str(tmp_path / "back.npz")]) == 0  # and back to an .npz
    np.testing.assert_array_equal(load_model_file(tmp_path / "back.npz").weights["stem.weight"],
                                  load_model_file(out).weights["stem.weight"])


def test_convert_writes_a_safetensors_model_too(tmp_path):
    safetensors_torch.save_file(state_dict(SMALL_V1, "megvii"), tmp_path / "ckpt.safetensors")
    convert_file(tmp_path / "ckpt.safetensors", tmp_path / "model.safetensors")
    convert_file(tmp_path / "ckpt.safetensors", tmp_path / "model.npz")
    x = images()
    np.testing.assert_array_equal(logits(tmp_path / "model.safetensors", x), logits(tmp_path / "model.npz", x))


def exported(tmp_path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The flowers model as a .safetensors model file's tensors and metadata, to tamper with."""
    out = tmp_path / "flowers.safetensors"
    assert cli(["export", "flowers", "-o", str(out)]) == 0
    with SafetensorsReader(out) as reader:
        return reader.read_all(), dict(reader.metadata)


def tamper_metadata(metadata: dict[str, str], **changes) -> dict[str, str]:
    meta = json.loads(metadata["npshuffle"])
    meta.update(changes)
    return {"npshuffle": json.dumps(meta)}


def test_a_safetensors_model_file_gets_the_npz_checks(tmp_path):
    tensors, metadata = exported(tmp_path)
    cases = {
        "state dict": (tensors, {}, "no npshuffle metadata in its header"),
        "f16": ({**tensors, "stem.bias": tensors["stem.bias"].astype(np.float16)}, metadata,
                "stem.bias has dtype F16, expected F32"),
        "shape": ({**tensors, "stem.bias": tensors["stem.bias"][:3]}, metadata, "stem.bias has shape (3,), expected"),
        "missing": ({k: v for k, v in tensors.items() if k != "classifier.bias"}, metadata,
                    "missing tensors: classifier.bias"),
        "unexpected": ({**tensors, "extra.weight": np.zeros(2, np.float32)}, metadata, "unexpected tensors: extra"),
        "nan": ({**tensors, "stem.bias": np.full_like(tensors["stem.bias"], np.nan)}, metadata,
                "stem.bias holds NaN"),
        "format": (tensors, tamper_metadata(metadata, format_version=7), "model format version 7"),
        "classes": (tensors, tamper_metadata(metadata, class_names=["a"]), "class_names must be a list of 5"),
        "not json": (tensors, {"npshuffle": "{nope"}, "metadata is not valid JSON"),
    }
    for name, (arrays, meta, problem) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        write_safetensors(path, arrays, meta)
        with pytest.raises(ModelFileError) as info:
            load_model_file(path)
        assert str(path) in str(info.value) and problem in str(info.value), (name, str(info.value))


def test_a_state_dict_given_as_a_model_says_to_convert_it(tmp_path, capsys):
    safetensors_torch.save_file(state_dict(SMALL_V2, "torchvision"), tmp_path / "weights.safetensors")
    path = str(tmp_path / "weights.safetensors")
    assert cli(["predict", str(REPO / "examples" / "tulip.jpg"), "--model", path, "--device", "numpy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and path in err and "npshuffle convert" in err


def test_converting_a_model_file_says_it_is_one_already(tmp_path, capsys):
    out = tmp_path / "flowers.safetensors"
    assert cli(["export", "flowers", "-o", str(out)]) == 0
    assert cli(["convert", str(out), "-o", str(tmp_path / "again.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"npshuffle: error: {out}: already an npshuffle model") and err.count("\n") == 1


def test_export_refuses_what_it_cannot_write(tmp_path, capsys):
    for output, problem in ((tmp_path / "x.pt", "no format npshuffle writes as '.pt'; end the file name in "
                                                ".safetensors, .onnx or .npz"),
                            (tmp_path / "x", "no extension to tell the format by"), (tmp_path, "is a folder"),
                            (tmp_path / "no" / "x.safetensors", "does not exist")):
        assert cli(["export", "flowers", "-o", str(output)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("npshuffle: error: ") and problem in err and err.count("\n") == 1
    assert cli(["export", "no_such_model", "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err



def test_metadata_too_large_for_a_safetensors_header_is_one_line_not_a_traceback(tmp_path, capsys):
    """The model file's JSON may hold 16 MiB; the safetensors header escapes it once more, so 16 MiB
    of backslashes (or quotes) need 32 MiB there, more than a header may have: export and convert
    to ``.safetensors`` say so and write nothing (they raised ValueError with a traceback)."""
    from npshuffle.model_file import MAX_METADATA_BYTES

    original = load_model_file(bundled_path(ENTRIES[0]))
    room = MAX_METADATA_BYTES - len(json.dumps(original.metadata)) - 100
    model = tmp_path / "notes.npz"
    npshuffle.model_file.save_model_file(model, original.spec, original.dialect, original.weights,
                                         class_names=original.class_names, recipe=original.recipe,
                                         extra={"notes": "\\" * (room // 2)})
    out = tmp_path / "notes.safetensors"
    assert cli(["export", str(model), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"npshuffle: error: {out}: ") and err.count("\n") == 1, err[:500]
    assert "safetensors header" in err and ".npz" in err
    assert not out.exists() and os.listdir(tmp_path) == ["notes.npz"]  # no temporary file left either
    assert cli(["export", str(model), "-o", str(tmp_path / "copy.npz")]) == 0  # an .npz holds it

# --------------------------------------------------------------------------------------------------
# malformed files: one line each, naming the file and the problem


def raw_file(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file from parts: ``header`` (JSON-encoded unless bytes), its data, and the
    header length field (default: the true length)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def entry(dtype: str = "F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


GOOD = raw_file({"w": entry()}, bytes(8))
MALFORMED = {
    "empty": (b"", "too short to hold the 8-byte header length"),
    "truncated length": (GOOD[:5], "too short"),
    "truncated header": (GOOD[:20], "only 12 bytes follow it"),
    "truncated data": (GOOD[:-3], "not within the 5 bytes of data"),
    "header beyond the file": (raw_file({"w": entry()}, bytes(8), length=10_000), "says 10,000 bytes, but only"),
    "huge header": (raw_file({"w": entry()}, bytes(8), length=2**62), f"more than the {MAX_HEADER_BYTES:,}"),
    "not json": (raw_file(b"{this is not json}"), "not valid JSON"),
    "not utf-8": (raw_file(b'{"\xff": 1}'), "not UTF-8"),
    "not an object": (raw_file([1, 2]), "a JSON list, not an object"),
    "size lie": (raw_file({"w": entry(shape=(3,))}, bytes(8)), "needs 12 bytes, but its data_offsets give 8"),
    "offset lie": (raw_file({"w": entry(offsets=(0, 16))}, bytes(8)), "not within the 8 bytes of data"),
    "reversed offsets": (raw_file({"w": entry(offsets=(8, 0))}, bytes(8)), "are not within"),
    "negative offset": (raw_file({"w": entry(offsets=(-8, 0))}, bytes(8)), "are not within"),
    "overlap": (raw_file({"a": entry(), "b": entry(offsets=(4, 12))}, bytes(12)), "overlaps the tensor before it"),
    "gap": (raw_file({"a": entry(offsets=(4, 12))}, bytes(12)), "bytes 0..4 of the data belong to no tensor"),
    "unknown dtype": (raw_file({"w": entry(dtype="F31")}, bytes(8)), "unknown dtype 'F31'"),
    "float8": (raw_file({"w": entry(dtype="F8_E4M3", shape=(8,))}, bytes(8)), "dtype F8_E4M3, which npshuffle"),
    "dtype not a string": (raw_file({"w": entry(dtype=["F32"])}, bytes(8)), "unknown dtype"),
    "negative shape": (raw_file({"w": entry(shape=(-2,))}, bytes(8)), "non-negative integers"),
    "float shape": (raw_file({"w": entry(shape=(2.0,))}, bytes(8)), "non-negative integers"),
    "huge shape": (raw_file({"w": entry(shape=(2**40, 2**40))}, bytes(8)), "more than 4,294,967,296 elements"),
    "huge empty shape": (raw_file({"w": entry(shape=(0, 2**31, 2**31), offsets=(0, 0))}), "more than 4,294,967,296"),
    "size lie, 2-D": (raw_file({"w": entry(shape=(2**16, 2**16))}, bytes(8)), "but its data_offsets give 8"),
    "missing field": (raw_file({"w": {"dtype": "F32", "shape": [2]}}, bytes(8)), "dtype, shape and data_offsets"),
    "duplicate key": (raw_file(b'{"w": ' + json.dumps(entry()).encode() + b', "w": '
                               + json.dumps(entry()).encode() + b"}", bytes(8)), "names 'w' twice"),
    "bad metadata": (raw_file({"__metadata__": {"a": 1}, "w": entry()}, bytes(8)), "must map names to strings"),
    "deep json": (raw_file(b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_file_is_refused_by_convert_in_one_line(tmp_path, capsys, case):
    data, problem = MALFORMED[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    assert cli(["convert", str(path), "-o", str(tmp_path / "out.npz")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"npshuffle: error: {path}: ") and problem in captured.err, captured.err
    assert "Traceback" not in captured.err and not (tmp_path / "out.npz").exists()
    with pytest.raises(ModelFileError) as info:  # and as a model file, the same reason
        load_model_file(path)
    assert str(info.value).startswith(f"{path}: ") and problem in str(info.value)


def test_the_reader_reads_nothing_a_header_merely_claims(tmp_path):
    """A header declaring a 2**32-element tensor in a 16-byte file is refused before any allocation:
    the file's real size bounds everything."""
    path = tmp_path / "claims.safetensors"
    path.write_bytes(raw_file({"w": entry(shape=(2**16, 2**16), offsets=(0, 2**34))}, bytes(16)))
    with pytest.raises(SafetensorsError, match="not within the 16 bytes of data"):
        SafetensorsReader(path)


def test_a_malformed_file_gives_no_traceback_from_the_command_line(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(MALFORMED["overlap"][0])
    run = subprocess.run([sys.executable, "-m", "npshuffle", "convert", str(path), "-o", str(tmp_path / "o.npz")],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == f"npshuffle: error: {path}: not a valid safetensors file: tensor 'b' overlaps " \
                                 "the tensor before it"


# --------------------------------------------------------------------------------------------------
# fuzz: mutated files convert / load, or give one clear error

FUZZ_EXAMPLES = int(os.environ.get("NPSHUFFLE_FUZZ_EXAMPLES", "40"))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def fuzz_sources(tmp_path_factory) -> list:
    """A torchvision V2 state dict and an exported model file, both .safetensors."""
    folder = tmp_path_factory.mktemp("sources")
    safetensors_torch.save_file(state_dict(SMALL_V2, "torchvision"), folder / "ckpt.safetensors")
    assert cli(["export", "flowers_v2", "-o", str(folder / "model.safetensors")]) == 0
    return [folder / "ckpt.safetensors", folder / "model.safetensors"]


def check_one_clear_outcome(path) -> None:
    try:
        convert_checkpoint(path)
    except ConversionError as exc:
        assert str(path) in str(exc) and len(str(exc)) <= 400 and "\n" not in str(exc)
    try:
        load_model_file(path)
    except ModelFileError as exc:
        assert str(path) in str(exc) and len(str(exc)) < 700 and "\n" not in str(exc)


@pytest.mark.fuzz
@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_flips_truncations_and_header_edits(tmp_path_factory, fuzz_sources, data):
    source = bytearray(data.draw(st.sampled_from(fuzz_sources), label="file").read_bytes())
    (length,) = struct.unpack("<Q", source[:8])
    if data.draw(st.booleans(), label="edit the header"):
        header = json.loads(source[8: 8 + length])
        name = data.draw(st.sampled_from(sorted(header)), label="entry")
        if name != "__metadata__" and data.draw(st.booleans(), label="a field"):
            field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]), label="field")
            header[name][field] = data.draw(JSON_VALUES, label="value")
        else:
            header[name] = data.draw(JSON_VALUES, label="value")
        text = json.dumps(header).encode()
        source = bytearray(struct.pack("<Q", len(text)) + text + source[8 + length:])
    else:
        for _ in range(data.draw(st.integers(1, 6), label="flips")):  # mostly in the header and its length
            position = data.draw(st.integers(0, min(len(source), 8 + length + 64) - 1), label="byte")
            source[position] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        if data.draw(st.booleans(), label="truncate"):
            source = source[: data.draw(st.integers(0, len(source)), label="length")]
    path = tmp_path_factory.mktemp("fuzz") / "mutated.safetensors"
    path.write_bytes(bytes(source))
    check_one_clear_outcome(path)
