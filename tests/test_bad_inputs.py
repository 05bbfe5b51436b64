"""No input sinks a run: in a list or a folder, each input that cannot be classified is one error
row naming it, and every other input is classified; outputs stay valid and inputs untouched."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

import npshuffle
from npshuffle import cli
from npshuffle.model_file import load_model_file, save_model_file
from tests.conftest import REPO

TULIP = str(REPO / "examples" / "tulip.jpg")
DAISY = str(REPO / "examples" / "daisy.jpg")


@pytest.fixture(scope="module")
def model():
    return npshuffle.load_model("flowers", backend="numpy")


def truncated_jpeg(path) -> str:
    data = open(TULIP, "rb").read()
    path.write_bytes(data[: len(data) // 3])
    return str(path)


def test_unusable_images_in_a_list_are_error_rows(model, tmp_path):
    lazy_truncated = Image.open(truncated_jpeg(tmp_path / "cut.jpg"))  # not decoded yet
    closed = Image.open(DAISY)
    closed.close()
    inputs = [
        DAISY,
        np.zeros((0, 0, 3), np.uint8),  # no pixels
        np.zeros((1, 10000, 3), np.uint8),  # a 1x10000 strip
        lazy_truncated,
        closed,
        Image.new("RGB", (0, 5)),
        TULIP,
    ]
    results = npshuffle.predict(inputs, model=model)
    assert [r.ok for r in results] == [True, False, False, False, False, False, True]
    assert results[0].label == "daisy" and results[-1].label == "tulips"
    assert "empty" in results[1].error and "aspect ratio" in results[2].error
    assert all(r.error.startswith(r.source) for r in results if not r.ok)  # each names its input
    assert "truncated" in results[3].error and "closed" in results[4].error and "empty" in results[5].error
    for bad in inputs[1:-1]:  # alone, each is one ImageError, not a ZeroDivisionError or OSError
        with pytest.raises(npshuffle.ImageError):
            npshuffle.predict(bad, model=model)


@pytest.fixture
def folder_with_a_strip(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(DAISY, folder / "a_daisy.jpg")
    Image.new("RGB", (1, 10000), (200, 30, 30)).save(folder / "b_strip.png")
    shutil.copy(TULIP, folder / "c_tulip.jpg")
    return folder


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "table"])
def test_a_thin_image_in_a_folder_is_one_error_row_and_the_rest_are_classified(folder_with_a_strip, capsys, fmt):
    code = cli.main(["predict", str(folder_with_a_strip), "-f", fmt, "-k", "1"])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_SOME_FAILED
    assert "b_strip.png" in err and "aspect ratio" in err
    if fmt == "json":
        rows = json.loads(out)
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in out.splitlines()]
    else:
        rows = None
    if rows is not None:
        assert [("error" in r, r["source"].rsplit("/", 1)[-1]) for r in rows] == [
            (False, "a_daisy.jpg"), (True, "b_strip.png"), (False, "c_tulip.jpg")]
    else:
        assert "tulips" in out and "daisy" in out


def test_json_output_stays_valid_when_the_run_is_interrupted(folder_with_a_strip, capsys, monkeypatch):
    predict_module = sys.modules["npshuffle.predict"]  # (npshuffle.predict is also the function's name)
    real = predict_module.predict_stream

    def interrupted(*args, **kwargs):
        for i, prediction in enumerate(real(*args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield prediction

    monkeypatch.setattr(predict_module, "predict_stream", interrupted)
    code = cli.main(["predict", str(folder_with_a_strip), "-f", "json"])
    out, err = capsys.readouterr()
    assert code == 130 and "interrupted" in err
    assert len(json.loads(out)) == 2  # the two finished rows, in a closed array


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_annotate_never_overwrites_an_input_photo(folder_with_a_strip, capsys):
    before = {p.name: digest(p) for p in folder_with_a_strip.iterdir()}
    code = cli.main(["predict", str(folder_with_a_strip), "--annotate", str(folder_with_a_strip), "--overwrite"])
    _, err = capsys.readouterr()
    assert code == cli.EXIT_SOME_FAILED and "would overwrite an input photo" in err
    assert {p.name: digest(p) for p in folder_with_a_strip.iterdir()} == before


def test_annotate_never_overwrites_another_input_of_the_run(tmp_path, capsys):
    """`predict photos/ x/a.jpg --annotate photos --overwrite`: the copy of x/a.jpg would land on
    photos/a.jpg, an input of the same run."""
    photos, other = tmp_path / "photos", tmp_path / "x"
    photos.mkdir()
    other.mkdir()
    shutil.copy(DAISY, photos / "a.jpg")
    shutil.copy(TULIP, other / "a.jpg")
    before = digest(photos / "a.jpg")
    code = cli.main(["predict", str(other / "a.jpg"), str(photos), "--annotate", str(photos), "--overwrite"])
    assert code == cli.EXIT_SOME_FAILED and "would overwrite an input photo" in capsys.readouterr().err
    assert digest(photos / "a.jpg") == before


def test_annotate_keeps_existing_files_unless_asked(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tulip.jpg").write_bytes(b"mine")
    assert cli.main(["predict", TULIP, "--annotate", str(out)]) == cli.EXIT_SOME_FAILED
    assert "already exists" in capsys.readouterr().err and (out / "tulip.jpg").read_bytes() == b"mine"
    assert cli.main(["predict", TULIP, "--annotate", str(out), "--overwrite"]) == cli.EXIT_OK
    assert Image.open(out / "tulip.jpg").size == Image.open(TULIP).size
    assert [p.name for p in out.iterdir()] == ["tulip.jpg"]  # no temporary file left behind


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_annotate_into_an_unusable_folder_is_one_line_before_any_work(tmp_path, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    target = blocker if where == "a file" else blocker / "sub"
    assert cli.main(["predict", TULIP, "--annotate", str(target)]) == cli.EXIT_ERROR
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "--annotate" in err and "Traceback" not in err


def doctored_model(tmp_path, **changes):
    """The `flowers` model file saved again with changed weights or class names."""
    from npshuffle.zoo import ZOO, bundled_path

    original = load_model_file(bundled_path(ZOO["flowers"]))
    weights = dict(original.weights)
    if "scale" in changes:
        name = next(k for k in weights if k.endswith(".weight") and weights[k].ndim == 2)  # the classifier
        weights[name] = weights[name] * np.float32(changes["scale"])
    path = tmp_path / "doctored.npz"
    save_model_file(path, original.spec, original.dialect, weights,
                    class_names=changes.get("class_names", original.class_names), recipe=original.recipe)
    return str(path)


def test_absurd_weights_are_an_error_naming_the_model_not_nan_percent(tmp_path, capsys):
    path = doctored_model(tmp_path, scale=2.8e38)
    assert cli.main(["predict", TULIP, "--model", path]) == cli.EXIT_SOME_FAILED
    out, err = capsys.readouterr()
    assert "nan" not in out.lower() and "doctored.npz" in err and "non-finite" in err


def test_class_names_cannot_send_escape_sequences_to_the_terminal(tmp_path, capsys):
    names = ["\x1b[2J\x1b[31mdaisy", "dandelion\x85", "roses", "sunflowers", "tulips\x07"]
    path = doctored_model(tmp_path, class_names=names)
    assert cli.main(["predict", TULIP, "--model", path]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b[31mdaisy" in out and "tulips\\x07" in out
    for fmt in ("json", "jsonl"):  # JSON escapes control characters itself
        assert cli.main(["predict", TULIP, "--model", path, "-f", fmt]) == cli.EXIT_OK
        assert "\x1b" not in capsys.readouterr().out
    # CSV is data, usually for a file: the names as they are
    assert cli.main(["predict", TULIP, "--model", path, "-f", "csv"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "\x1b[2J\x1b[31mdaisy" in out and "dandelion\x85" in out


def test_a_class_name_with_a_lone_surrogate_is_refused_with_the_model_file(tmp_path, capsys):
    """JSON can spell a lone surrogate (``"\\ud800"``), which no UTF-8 output can hold: such a
    model file made ``predict -o out.csv`` end in a UnicodeEncodeError traceback after the header,
    its rows lost. Now the model file is refused when it is loaded, in one line."""
    from npshuffle.zoo import ZOO, bundled_path

    original = load_model_file(bundled_path(ZOO["flowers"]))
    metadata = {**original.metadata, "class_names": ["daisy", "dandelion\ud800", "roses", "sunflowers", "tulips"]}
    path = tmp_path / "surrogate.npz"
    np.savez(path, **original.weights, __metadata__=np.frombuffer(json.dumps(metadata).encode(), np.uint8))
    out = tmp_path / "out.csv"
    assert cli.main(["predict", TULIP, "--model", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"npshuffle: error: {path}: ") and err.count("\n") == 1, err
    assert "class name 1" in err and "surrogate" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="surrogate"):  # nor can one be saved
        save_model_file(tmp_path / "again.npz", original.spec, original.dialect, original.weights,
                        class_names=metadata["class_names"], recipe=original.recipe)


def test_printable_survives_a_strict_terminal_encoding(monkeypatch):
    monkeypatch.setattr(cli.sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="ascii"))
    assert cli.printable("caf\u00e9 \ud800") == "caf\\xe9 \\ud800"


def test_output_into_a_closed_pipe_ends_quietly():
    """`npshuffle predict ... | head -1`: the reader leaves early; exit 0, no traceback, no
    'Exception ignored' from the interpreter's last flush."""
    import subprocess

    command = [sys.executable, "-m", "npshuffle", "predict", TULIP, DAISY, TULIP, "-k", "1000",
               "--model", "imagenet_v1_g3_x0_5"]  # ~90 KB of output: more than a pipe holds
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == b"", err.decode()


def test_a_named_pipe_among_the_photos_is_an_error_row_not_a_hang(model, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    results = npshuffle.predict([DAISY, str(fifo), TULIP], model=model)  # (would block forever if opened)
    assert [r.ok for r in results] == [True, False, True] and "not a regular file" in results[1].error
