"""The npshuffle command, run as a user runs it (a subprocess), including its error paths."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from npshuffle.archs import V2Spec
from npshuffle.training.torch_ref import build_torch_model, randomize_
from tests.conftest import REPO

EXAMPLES = REPO / "examples"


def npshuffle(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "npshuffle", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Two good photos (one in a sub-folder), plus empty, truncated, text-as-jpg and a non-image file."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    (folder / "good.jpg").write_bytes((EXAMPLES / "tulip.jpg").read_bytes())
    (folder / "sub" / "nested.jpg").write_bytes((EXAMPLES / "daisy.jpg").read_bytes())
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes((EXAMPLES / "tulip.jpg").read_bytes()[:2000])
    (folder / "text.jpg").write_text("I am not a JPEG")
    (folder / "readme.txt").write_text("ignored: no image extension")
    return folder


def test_predict_one_example(tmp_path):
    result = npshuffle("predict", EXAMPLES / "daisy.jpg", "--top-k", "3", "--device", "numpy")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("daisy.jpg") and len(lines) == 4
    assert lines[1].split()[0] == "daisy" and lines[1].endswith("%")


def test_folder_with_broken_files_finishes_and_names_them(mixed_folder):
    result = npshuffle("predict", mixed_folder, "--format", "json", "-k", "2", "--device", "numpy")
    assert result.returncode == 1  # some inputs failed
    items = json.loads(result.stdout)  # the JSON output parses
    by_name = {item["source"].split("/")[-1]: item for item in items}
    assert set(by_name) == {"good.jpg", "nested.jpg", "empty.png", "truncated.jpg", "text.jpg"}
    assert len(by_name["good.jpg"]["top"]) == 2 and "error" not in by_name["nested.jpg"]
    assert "empty file" in by_name["empty.png"]["error"]
    assert "truncated" in by_name["truncated.jpg"]["error"]
    assert "not an image" in by_name["text.jpg"]["error"]
    assert "3 of 5 input(s) could not be classified" in result.stderr
    for name in ("empty.png", "truncated.jpg", "text.jpg"):
        assert name in result.stderr
    assert "skipped 1 file(s) without an image extension" in result.stderr
    assert "Traceback" not in result.stderr


def test_csv_output_and_glob(mixed_folder):
    result = npshuffle("predict", f"{mixed_folder}/*.jpg", "--format", "csv", "-k", "2", "--device", "numpy")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    sources = {r["source"].split("/")[-1] for r in rows}
    assert sources == {"good.jpg", "truncated.jpg", "text.jpg"}  # the glob does not descend into sub/
    good = [r for r in rows if r["source"].endswith("good.jpg")]
    assert [r["rank"] for r in good] == ["1", "2"] and float(good[0]["probability"]) >= float(good[1]["probability"])
    assert result.returncode == 1


def test_annotate_writes_labelled_copies(tmp_path):
    out = tmp_path / "annotated"
    result = npshuffle("predict", EXAMPLES / "tulip.jpg", EXAMPLES / "daisy.jpg", "--annotate", out,
                       "--device", "numpy")
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == ["daisy.jpg", "tulip.jpg"]
    original = Image.open(EXAMPLES / "daisy.jpg")
    annotated = Image.open(out / "daisy.jpg")
    assert annotated.size == original.size
    # the label box in the top-left corner is dark; the original there is not all dark
    assert annotated.convert("L").getpixel((1, 1)) < 40


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "no_such_model"], "unknown model 'no_such_model'"),
        (["--model", "missing.npz"], "missing.npz: no such model file"),
        (["--model", str(EXAMPLES)], "a folder, not a model file"),
        (["--model", "/dev/null"], "/dev/null: not a regular file"),
        (["--top-k", "0"], "--top-k must be at least 1"),
    ],
)
def test_model_and_argument_errors_are_one_clear_line(args, message):
    result = npshuffle("predict", EXAMPLES / "tulip.jpg", *args)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_model_file_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 definitely not a model")
    result = npshuffle("predict", EXAMPLES / "tulip.jpg", "--model", bad)
    assert result.returncode == 2 and "bad.npz" in result.stderr and "Traceback" not in result.stderr


def test_nothing_to_classify(tmp_path):
    result = npshuffle("predict", tmp_path)
    assert result.returncode == 2 and "no images found" in result.stderr


def test_missing_file_is_reported_with_exit_1(tmp_path):
    result = npshuffle("predict", tmp_path / "nope.jpg", "--device", "numpy")
    assert result.returncode == 1 and "nope.jpg: no such file" in result.stderr


def test_list_prints_the_zoo():
    result = npshuffle("list")
    assert result.returncode == 0
    assert "imagenet_v1_g3_x0_5" in result.stdout and "shufflenet_v1_g3_x0_5" in result.stdout
    rows = json.loads(npshuffle("list", "--format", "json").stdout)
    assert all(r["params"] > 0 for r in rows)


def test_convert_then_predict_with_the_converted_model(tmp_path):
    net = randomize_(build_torch_model(V2Spec(8, (16, 32), 32, (1, 1), 3), "torchvision"), torch.Generator())
    torch.save({"model": net.state_dict()}, tmp_path / "tiny.pth")
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    result = npshuffle("convert", tmp_path / "tiny.pth", "-o", tmp_path / "tiny.npz", "--classes",
                       tmp_path / "labels.txt")
    assert result.returncode == 0, result.stderr
    predicted = npshuffle("predict", EXAMPLES / "tulip.jpg", "--model", tmp_path / "tiny.npz", "--format", "json",
                          "--device", "numpy")
    assert predicted.returncode == 0, predicted.stderr
    (item,) = json.loads(predicted.stdout)
    assert {t["label"] for t in item["top"]} == {"cat", "dog", "bird"}
    failed = npshuffle("convert", tmp_path / "labels.txt", "-o", tmp_path / "x.npz")
    assert failed.returncode == 2 and "labels.txt" in failed.stderr and "Traceback" not in failed.stderr


def test_cuda_without_a_gpu_is_one_clear_line_not_a_silent_fallback():
    result = npshuffle("predict", EXAMPLES / "daisy.jpg", "--device", "cuda")
    assert result.returncode == 2 and result.stdout == ""
    assert "no CUDA GPU found" in result.stderr or "numba-cuda is not installed" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
