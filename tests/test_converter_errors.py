"""The converter refuses bad checkpoints by name, and the model loader refuses bad model files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from npshuffle.archs import V2Spec
from npshuffle.model import Model
from npshuffle.model_file import METADATA_KEY, ModelFileError, load_model_file
from npshuffle.training.torch_ref import build_torch_model, randomize_
from tests.conftest import REPO
from weights_convert import ConversionError, convert_file

SMALL_V2 = V2Spec(8, (16, 32), 48, (1, 2), num_classes=5)


def small_state_dict(dialect: str = "torchvision") -> dict[str, torch.Tensor]:
    net = randomize_(build_torch_model(SMALL_V2, dialect), torch.Generator().manual_seed(1))
    return dict(net.state_dict())


def save(tmp_path, obj, name="ckpt.pth", **kwargs):
    path = tmp_path / name
    torch.save(obj, path, **kwargs)
    return path


class Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, legacy):
    sentinel = tmp_path / "PWNED"
    state = small_state_dict()
    state["fc.bias"] = Exploit(sentinel)
    path = save(tmp_path, state, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ConversionError, match=r"(posix|os)\.system"):
        convert_file(path, tmp_path / "out.npz")
    assert not sentinel.exists()
    assert not (tmp_path / "out.npz").exists()


def test_truncated_checkpoint_is_refused(tmp_path):
    path = save(tmp_path, small_state_dict())
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 3, len(data) - 5):
        path.write_bytes(data[:cut])
        with pytest.raises(ConversionError):
            convert_file(path, tmp_path / "out.npz")


def test_wrong_shape_is_named(tmp_path):
    state = small_state_dict()
    state["stage3.1.branch2.3.weight"] = torch.zeros(16, 1, 5, 5)
    message = r"stage3\.1\.branch2\.3\.weight has shape \(16, 1, 5, 5\), expected \(16, 1, 3, 3\)"
    with pytest.raises(ConversionError, match=message):
        convert_file(save(tmp_path, state), tmp_path / "out.npz")


def test_nan_weights_are_named(tmp_path):
    state = small_state_dict()
    state["stage2.0.branch1.1.running_var"][3] = float("nan")
    state["conv5.0.weight"][0, 0] = float("inf")
    with pytest.raises(ConversionError) as info:
        convert_file(save(tmp_path, state), tmp_path / "out.npz")
    assert "stage2.0.branch1.1.running_var holds NaN" in str(info.value)
    assert "conv5.0.weight holds NaN or infinite" in str(info.value)


def test_unknown_and_missing_keys_are_listed(tmp_path):
    state = small_state_dict()
    state["aux_head.weight"] = torch.zeros(3)
    del state["stage3.0.branch2.4.running_mean"]
    with pytest.raises(ConversionError) as info:
        convert_file(save(tmp_path, state), tmp_path / "out.npz")
    assert "unexpected keys: aux_head.weight" in str(info.value)
    assert "missing key stage3.0.branch2.4.running_mean" in str(info.value)


def test_negative_variance_is_refused(tmp_path):
    state = small_state_dict("megvii")
    state["conv_last.1.running_var"][0] = -1.0
    with pytest.raises(ConversionError, match=r"conv_last\.1\.running_var has negative"):
        convert_file(save(tmp_path, state), tmp_path / "out.npz")


def test_other_networks_are_refused(tmp_path):
    resnet_like = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64)}
    with pytest.raises(ConversionError, match="not a ShuffleNet checkpoint"):
        convert_file(save(tmp_path, resnet_like), tmp_path / "out.npz")
    with pytest.raises(ConversionError, match="no state_dict found"):
        convert_file(save(tmp_path, [1, 2, 3], "list.pth"), tmp_path / "out.npz")


def test_class_names_files(tmp_path):
    path = save(tmp_path, small_state_dict())
    names = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    (tmp_path / "class_indices.json").write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
    meta = convert_file(path, tmp_path / "a.npz", classes=str(tmp_path / "class_indices.json"))
    assert meta["class_names"] == names
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    assert Model.load(tmp_path / "a.npz").class_names == names
    assert convert_file(path, tmp_path / "b.npz", classes=str(tmp_path / "labels.txt"))["class_names"] == names
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(ConversionError, match="2 class names, but the checkpoint has 5 classes"):
        convert_file(path, tmp_path / "c.npz", classes=str(tmp_path / "short.txt"))


def test_recipe_overrides(tmp_path):
    path = save(tmp_path, small_state_dict())
    meta = convert_file(path, tmp_path / "a.npz", resize=232, crop=224)
    assert meta["preprocess"]["resize"] == 232 and meta["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    with pytest.raises(ConversionError, match="crop <= resize"):
        convert_file(path, tmp_path / "b.npz", resize=200, crop=224)


def test_command_line(tmp_path):
    path = save(tmp_path, small_state_dict("megvii"))
    out = tmp_path / "m.npz"
    ok = subprocess.run([sys.executable, "-m", "weights_convert", str(path), "-o", str(out)],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "shufflenet_v2_custom (megvii dialect), 5 classes" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "weights_convert", str(tmp_path / "nope.pth"), "-o", str(out)],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "nope.pth" in bad.stderr and "Traceback" not in bad.stderr


# --- model files -----------------------------------------------------------------------------------


@pytest.fixture
def model_file(tmp_path):
    out = tmp_path / "good.npz"
    convert_file(save(tmp_path, small_state_dict()), out)
    return out


def rewrite(model_file, path, edit):
    with np.load(model_file) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays[METADATA_KEY].tobytes())
    arrays, meta = edit(arrays, meta)
    if meta is not None:
        arrays[METADATA_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda a, m: ({k: v for k, v in a.items() if k != "head.bias"}, m), "missing tensors: head.bias"),
        (lambda a, m: ({**a, "stem.weight": a["stem.weight"][:4]}, m), r"stem.weight has shape \(4, 3, 3, 3\)"),
        (lambda a, m: ({**a, "stem.bias": a["stem.bias"] * np.nan}, m), "stem.bias holds NaN"),
        (lambda a, m: ({**a, "stem.bias": a["stem.bias"].astype(np.float64)}, m), "dtype float64"),
        (lambda a, m: ({**a, "extra": np.zeros(2)}, m), "unexpected tensors: extra"),
        (lambda a, m: (a, {**m, "format_version": 99}), "format version 99"),
        (lambda a, m: (a, {**m, "format": "other"}), "not an npshuffle model file"),
        (lambda a, m: (a, {**m, "dialect": "caffe"}), "unknown dialect"),
        (lambda a, m: (a, {**m, "class_names": ["a"]}), "class_names must be a list of 5 strings"),
        (lambda a, m: (a, {**m, "arch": {"version": 7}}), "malformed architecture"),
        (lambda a, m: (a, {**m, "preprocess": {"resize": 256}}), "recipe lacks"),
        (lambda a, m: ({k: v for k, v in a.items() if k != METADATA_KEY}, None), "no __metadata__"),
    ],
)
def test_malformed_model_files_are_refused(model_file, tmp_path, edit, message):
    bad = rewrite(model_file, tmp_path / "bad.npz", edit)
    with pytest.raises(ModelFileError, match=message) as info:
        load_model_file(bad)
    assert "bad.npz" in str(info.value)


def test_unreadable_model_files_are_refused(model_file, tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model_file(tmp_path / "missing.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(model_file.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="not a readable npshuffle model file"):
        load_model_file(truncated)
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(ModelFileError):
        load_model_file(text)


def test_a_pickled_object_array_is_never_loaded(model_file, tmp_path):
    bad = rewrite(model_file, tmp_path / "pickled.npz",
                  lambda a, m: ({**a, "stem.bias": np.array([object()], dtype=object)}, m))
    with pytest.raises(ModelFileError):
        load_model_file(bad)


def test_megvii_v2_must_widen():
    from npshuffle.archs import ArchError, build_plan
    with pytest.raises(ArchError, match="wider than its input"):
        build_plan(V2Spec(24, (16,), 32, (1,)), "megvii")


@pytest.mark.parametrize("width,classes,resize", [("1.5x", 1000, 232), ("2.0x", 1000, 232), ("1.0x", 1000, 256),
                                                  ("1.5x", 5, 256)])
def test_torchvision_imagenet_x15_x20_default_to_resize_232(tmp_path, width, classes, resize):
    from npshuffle.archs import v2_spec

    net = build_torch_model(v2_spec(width, classes), "torchvision")
    meta = convert_file(save(tmp_path, net.state_dict()), tmp_path / "out.npz")
    assert meta["preprocess"]["resize"] == resize
    assert convert_file(tmp_path / "ckpt.pth", tmp_path / "b.npz", resize=240)["preprocess"]["resize"] == 240


# --- hostile checkpoints and arguments: one-line errors, never a traceback (issue 12) ----------------

MESSAGE_LIMIT = 500


def run_cli(*args, module="npshuffle"):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def assert_one_line_error(result, exit_code, *words):
    assert result.returncode == exit_code, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr) < MESSAGE_LIMIT + 40, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def assert_short(error: Exception) -> None:
    message = str(error)
    assert len(message) < MESSAGE_LIMIT and "\n" not in message, message


@pytest.mark.parametrize("key", [5, (1, 2), b"conv1.0.weight"], ids=["int", "tuple", "bytes"])
def test_non_string_keys_are_refused_in_one_line(tmp_path, key):
    state = {**small_state_dict(), key: torch.zeros(2)}
    path = save(tmp_path, state)
    with pytest.raises(ConversionError) as info:
        convert_file(path, tmp_path / "out.npz")
    assert_short(info.value)
    assert_one_line_error(run_cli("convert", path, "-o", tmp_path / "out.npz"), 2, "key")


@pytest.mark.parametrize(
    "key,value",
    [("conv1.0.weight", torch.tensor(1.0)), ("conv1.0.weight", torch.zeros(8)), ("fc.weight", torch.zeros(5)),
     ("fc.weight", torch.zeros(5, 48, 1)), ("stage2.0.branch1.2.weight", torch.tensor(2.0)),
     ("conv5.0.weight", torch.zeros(48, 32))],
    ids=["0-d-stem", "1-d-stem", "1-d-fc", "3-d-fc", "0-d-unit", "2-d-head"],
)
def test_weights_of_the_wrong_rank_are_named(tmp_path, key, value):
    state = small_state_dict()
    state[key] = value
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")) as info:
        convert_file(save(tmp_path, state), tmp_path / "out.npz")
    assert_short(info.value)


def test_megvii_weights_of_the_wrong_rank_are_named(tmp_path):
    state = small_state_dict("megvii")
    state["classifier.0.weight"] = torch.zeros(5)
    with pytest.raises(ConversionError, match=r"classifier\.0\.weight has shape \(5, \), expected 2 dimensions"):
        convert_file(save(tmp_path, state), tmp_path / "out.npz")


def test_huge_storage_count_is_one_line_from_the_command_line(tmp_path):
    # data.pkl of {'w': tensor} whose storage claims 10**5000 elements (str() of that int raises)
    count = 10**5000
    raw = count.to_bytes((count.bit_length() + 8) // 8, "little", signed=True)
    pid = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu\x8b"
    pid += len(raw).to_bytes(4, "little") + raw + b"t"
    pickled = (b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"QK\x00K\x02\x85K\x01\x85"
               + b"\x89}tRs.")
    path = tmp_path / "count.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/data/0", bytes(8))
    assert_one_line_error(run_cli("convert", path, "-o", tmp_path / "out.npz"), 2, "integer")


def test_batch_norm_fold_overflowing_float32_is_named(tmp_path):
    state = small_state_dict()
    state["conv1.0.weight"].fill_(1e30)
    state["conv1.1.weight"].fill_(3e38)  # gamma
    path = save(tmp_path, state)
    with pytest.raises(ConversionError, match=r"folding conv1\.1 into conv1\.0 overflows float32") as info:
        convert_file(path, tmp_path / "out.npz")
    assert_short(info.value)
    assert_one_line_error(run_cli(path, "-o", tmp_path / "out.npz", module="weights_convert"), 1, "overflows")
    assert not (tmp_path / "out.npz").exists()


def test_output_into_a_missing_folder_or_onto_a_folder(tmp_path):
    path = save(tmp_path, small_state_dict())
    assert_one_line_error(run_cli("convert", path, "-o", tmp_path / "missing" / "m.npz"), 2, "does not exist")
    (tmp_path / "folder").mkdir()
    assert_one_line_error(run_cli("convert", path, "-o", tmp_path / "folder"), 2, "is a folder")
    with pytest.raises(ConversionError, match="is a folder"):
        convert_file(path, tmp_path)



@pytest.mark.parametrize("output, problem", [
    ("model.onnx", "for ONNX, convert to an .npz and `npshuffle export` it"),
    ("model.pt", "writes .npz or .safetensors"),
    ("model", "writes .npz or .safetensors"),
])
def test_an_output_name_of_another_format_is_refused(tmp_path, output, problem):
    """-o model.onnx wrote an .npz archive under the .onnx name, exit 0: a file that no ONNX tool
    can open. Only the two formats convert writes are taken; nothing is written otherwise."""
    path = save(tmp_path, small_state_dict())
    with pytest.raises(ConversionError, match="model") as info:
        convert_file(path, tmp_path / output)
    assert str(info.value).startswith(str(tmp_path / output)) and problem in str(info.value)
    assert not (tmp_path / output).exists()
    convert_file(path, tmp_path / "MODEL.NPZ")  # (the extension in any case)


def test_unwritable_output_folder_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    path = save(tmp_path, small_state_dict())
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert_one_line_error(run_cli("convert", path, "-o", locked / "m.npz"), 2, "cannot write")


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("five.json", "5", "not a JSON int"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("nested.json", json.dumps(["a", "b", ["c"], "d", "e"]), "must be strings"),
        ("gaps.json", json.dumps({"0": "a", "2": "b"}), "no key '1'"),
        ("bad.json", "{", "not valid JSON"),
        ("binary.txt", b"\xff\xfe\x00", "cannot read class names"),
    ],
)
def test_bad_class_names_files(tmp_path, name, content, message):
    path = save(tmp_path, small_state_dict())
    classes = tmp_path / name
    classes.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConversionError, match=message) as info:
        convert_file(path, tmp_path / "out.npz", classes=str(classes))
    assert_short(info.value)
    if name == "deep.json":
        assert_one_line_error(run_cli("convert", path, "-o", tmp_path / "o.npz", "--classes", classes), 2, message)


def test_class_names_from_a_json_list(tmp_path):
    path = save(tmp_path, small_state_dict())
    (tmp_path / "names.json").write_text(json.dumps(["a", "b", "c", "d", 5]))
    assert convert_file(path, tmp_path / "o.npz", classes=str(tmp_path / "names.json"))["class_names"][-1] == "5"


def test_many_problems_make_a_short_message(tmp_path):
    state = {key: value[..., :0] if value.ndim else value for key, value in small_state_dict().items()}
    state.update({f"extra.{i}.weight": torch.zeros(1) for i in range(500)})
    with pytest.raises(ConversionError, match=r"problem\(s\): .* and \d+ more") as info:
        convert_file(save(tmp_path, state), tmp_path / "out.npz")
    assert_short(info.value)


# --- the output file is replaced whole or not at all ------------------------------------------------

KILL_DURING_WRITE = """
import os, signal, sys
import numpy as np

def dying_savez_compressed(file, **arrays):
    file.write(b"PK\\x03\\x04 half a model")
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)

np.savez_compressed = dying_savez_compressed
from weights_convert import convert_file
convert_file(sys.argv[1], sys.argv[2])
"""


def test_a_kill_during_the_write_keeps_the_previous_model(tmp_path, model_file):
    before = model_file.read_bytes()
    checkpoint = save(tmp_path, small_state_dict("megvii"), "other.pth")
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, str(checkpoint), str(model_file)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert model_file.read_bytes() == before
    assert len(Model.load(model_file).class_names) == 5


def test_a_failed_write_keeps_the_previous_model_and_leaves_no_temporary_file(tmp_path, model_file, monkeypatch):
    before = model_file.read_bytes()
    files_before = sorted(os.listdir(tmp_path))

    def disk_full(file, **arrays):
        file.write(b"PK\x03\x04 a bit")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_full)
    with pytest.raises(ConversionError, match="No space left on device"):
        convert_file(tmp_path / "ckpt.pth", model_file)
    assert model_file.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == files_before
