"""`npshuffle eval`: exact counts on hand-made cases (no torch needed)."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
from PIL import Image

from npshuffle.corruptions import CORRUPTIONS
from npshuffle.images import IMAGE_EXTENSIONS
from npshuffle.model_file import DEFAULT_RECIPES
from npshuffle.training import evaluate as E
from npshuffle.training.datasets import SEED_IMAGE_EXTENSIONS, seed_split, write_split


def test_summarize_counts_by_hand():
    names = ["a", "b", "c", "d", "e", "f"]
    labels = [0, 0, 0, 1, 1, 2, 5, 5]
    logits = np.full((8, 6), 0.0)
    # predictions: 0, 0, 1 | 1, 2 | 2 | 5, 0   -> 5 of 8 right
    for row, pred in enumerate([0, 0, 1, 1, 2, 2, 5, 0]):
        logits[row, pred] = 10.0
    # top-5 ranks: give the wrong rows' true class a rank inside (row 2) or outside (row 7) the top 5
    logits[2, 0] = 5.0  # true class 0 second: in top-5
    logits[7, :] = [10, 9, 8, 7, 6, -1]  # true class 5 ranked last: not in top-5
    logits[4, 1] = -5.0  # true class 1 ranked last: not in top-5
    r = E.summarize(labels, logits, names)
    assert r["count"] == 8
    assert r["top1"] == 5 / 8
    assert r["top5"] == 6 / 8
    assert r["confusion"] == [
        [2, 1, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0, 1],
    ]
    assert r["per_class"]["a"] == {"correct": 2, "total": 3, "accuracy": 2 / 3}
    assert r["per_class"]["b"] == {"correct": 1, "total": 2, "accuracy": 0.5}
    assert r["per_class"]["d"] == {"correct": 0, "total": 0, "accuracy": None}
    assert r["per_class"]["f"]["accuracy"] == 0.5
    text = E.format_report(r)
    assert "top-1 accuracy: 62.50% (5/8)" in text and "top-5 accuracy: 75.00%" in text
    assert "\n  a    2    1    0    0    0    0\n" in text


def test_no_top5_under_five_classes():
    r = E.summarize([0, 1], [[1.0, 0.0], [1.0, 0.0]], ["x", "y"])
    assert r["top5"] is None and r["top1"] == 0.5
    assert "top-5" not in E.format_report(r)


class ColourModel:
    """A stub model: predicts the brightest channel (red, green, blue) of the preprocessed image."""

    class_names = ["blue", "green", "red"]
    recipe = dict(DEFAULT_RECIPES["torchvision"], resize=40, crop=32)
    metadata: dict = {}

    def forward(self, batch):
        means = batch.mean(axis=(2, 3))  # (N, 3) in RGB order, normalised
        return means[:, ::-1]  # columns: blue, green, red


@pytest.fixture
def colour_dir(tmp_path):
    colours = {"red": (250, 0, 0), "green": (0, 250, 0), "blue": (0, 0, 250)}
    # 4 images per folder; the 'red' folder also holds one green image (a mislabelled photo)
    for name, rgb in colours.items():
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.new("RGB", (50, 44), rgb).save(tmp_path / name / f"{i}.png")
    Image.new("RGB", (50, 44), colours["green"]).save(tmp_path / "red" / "9.png")
    return tmp_path


def test_evaluate_model_counts_exactly(colour_dir):
    files = E.labelled_files(str(colour_dir), None)
    r = E.evaluate_model(ColourModel(), str(colour_dir), files, batch_size=3)
    assert r["count"] == 13
    assert r["confusion"] == [[4, 0, 0], [0, 4, 0], [0, 1, 4]]
    assert r["per_class"]["red"] == {"correct": 4, "total": 5, "accuracy": 0.8}
    assert r["top1"] == 12 / 13


def test_run_eval_on_a_split_file(colour_dir, tmp_path, monkeypatch, capsys):
    split = seed_split(colour_dir)
    split_path, _ = write_split(split, tmp_path / "run")
    monkeypatch.setattr(E, "load_model", lambda name, backend="numpy": ColourModel())
    args = E.add_eval_arguments(argparse.ArgumentParser()).parse_args(
        [str(colour_dir), "--model", "stub", "--split", split_path, "--json", str(tmp_path / "r.json")])
    assert E.run_eval(args) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    # int(4 * 0.2) = 0 val images for blue and green, int(5 * 0.2) = 1 for red
    assert r["count"] == len(split.val) == 1
    assert "top-1 accuracy" in capsys.readouterr().out


def test_unknown_folder_is_a_clear_error(colour_dir, monkeypatch, capsys):
    (colour_dir / "purple").mkdir()
    Image.new("RGB", (40, 40), (128, 0, 128)).save(colour_dir / "purple" / "0.png")
    monkeypatch.setattr(E, "load_model", lambda name, backend="numpy": ColourModel())
    args = E.add_eval_arguments(argparse.ArgumentParser()).parse_args([str(colour_dir), "--model", "stub"])
    assert E.run_eval(args) == 2
    assert "purple" in capsys.readouterr().err


def test_without_a_split_every_image_file_is_evaluated(colour_dir):
    # a split keeps to the seed's .jpg/.png; evaluating a folder takes what predict reads
    Image.new("RGB", (50, 44), (0, 0, 250)).save(colour_dir / "blue" / "7.jpeg")
    Image.new("RGB", (50, 44), (0, 0, 250)).save(colour_dir / "blue" / "8.WEBP")
    files = E.labelled_files(str(colour_dir), None)
    assert files[:6] == ["blue/0.png", "blue/1.png", "blue/2.png", "blue/3.png", "blue/7.jpeg", "blue/8.WEBP"]
    assert E.evaluate_model(ColourModel(), str(colour_dir), files)["count"] == 15


def test_the_seed_split_keeps_to_image_extensions_the_runtime_reads():
    # the split matches the seed's four spellings exactly; each is one npshuffle predict reads too
    assert SEED_IMAGE_EXTENSIONS == (".jpg", ".JPG", ".png", ".PNG")
    assert {ext.lower() for ext in SEED_IMAGE_EXTENSIONS} <= set(IMAGE_EXTENSIONS)


def test_robustness_report_counts_exactly(colour_dir):
    files = E.labelled_files(str(colour_dir), None)
    r = E.evaluate_model(ColourModel(), str(colour_dir), files, batch_size=4, corruptions=True)
    rob = r["robustness"]
    assert rob["count"] == 13 and rob["clean_top1"] == r["top1"] == 12 / 13
    assert list(rob["corruptions"]) == list(CORRUPTIONS)
    table = {name: row["correct"] for name, row in rob["corruptions"].items()}
    # flat colours: contrast scales deviations from the mean (there are none), brightness +51/+102
    # keeps the brightest channel brightest, a 50 x 44 photo is under 160 px (downscale leaves it)
    for name in ("contrast", "brightness", "downscale"):
        assert table[name] == [12, 12], name
    # saturation 0.5 keeps each colour's hue; 0 makes R = G = B, which after the ImageNet mean/std is
    # largest in blue for every grey: all 13 photos 'blue', right for the 4 blue ones only
    assert table["greyscale"] == [12, 4]
    values = [a for row in rob["corruptions"].values() for a in row["top1"]]
    assert len(values) == 16 and rob["mean_top1"] == pytest.approx(np.mean(values))
    assert rob["relative"] == pytest.approx(rob["mean_top1"] / rob["clean_top1"])
    # deterministic (seeded noise, seeded crop corners): a second run gives the same table
    assert E.evaluate_model(ColourModel(), str(colour_dir), files, batch_size=5, corruptions=True)["robustness"] == rob
    text = E.format_robustness(rob)
    assert "greyscale" in text and "92.31%" in text and "30.77%" in text
    assert f"mean corruption accuracy (unnormalised mean of the 16): {100 * rob['mean_top1']:.2f}%" in text


@pytest.mark.parametrize("views,count", [("flip", 2), ("ten-crop", 10)])
def test_tta_in_eval(colour_dir, views, count):
    files = E.labelled_files(str(colour_dir), None)
    r = E.evaluate_model(ColourModel(), str(colour_dir), files, batch_size=4, tta=views)
    t = r["tta"]
    # every crop and mirror of a flat colour is the same colour: TTA changes no prediction here
    assert t["views"] == views and t["views_per_photo"] == count
    assert t["top1"] == r["top1"] and t["confusion"] == r["confusion"]
    assert set(t["ms_per_photo"]) == {"decode", "plain", "tta"} and all(v > 0 for v in t["ms_per_photo"].values())
    assert "robustness" not in r
    assert f"({views}, {count} views per photo): top-1 92.31% (12/13; plain 92.31%)" in E.format_tta(t, r["top1"])


def test_run_eval_with_corruptions_and_tta(colour_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(E, "load_model", lambda name, backend="numpy": ColourModel())
    args = E.add_eval_arguments(argparse.ArgumentParser()).parse_args(
        [str(colour_dir), "--model", "stub", "--corruptions", "--tta", "--json", str(tmp_path / "r.json")])
    assert args.tta == "flip"  # --tta alone: the flip views
    assert E.run_eval(args) == 0
    out = capsys.readouterr().out
    assert "mean corruption accuracy" in out and "test-time augmentation (flip" in out
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["robustness"]["corruptions"]["greyscale"]["correct"] == [12, 4]
    assert r["tta"]["top1"] == r["top1"]


def eval_args(*argv):
    return E.add_eval_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def no_model(name, backend="numpy"):
    raise AssertionError("the model was loaded before the arguments were checked")


def one_line(err: str) -> str:
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    return err


@pytest.mark.parametrize("where", ["folder", "missing parent", "read-only folder", "proc", "pipe"])
@pytest.mark.parametrize("option", ["--json", "--png"])
def test_an_output_that_cannot_be_written_is_refused_before_evaluating(colour_dir, tmp_path, monkeypatch, capsys,
                                                                        where, option):
    if where == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder")
        (tmp_path / "ro").mkdir(mode=0o555)
    if where == "proc" and not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc, where no file can be made")
    if where == "pipe":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no named pipes here")
        os.mkfifo(tmp_path / "fifo")
    path = {"folder": str(colour_dir), "missing parent": str(tmp_path / "no" / "such" / "r.out"),
            "read-only folder": str(tmp_path / "ro" / "r.out"), "proc": "/proc/r.out",
            "pipe": str(tmp_path / "fifo")}[where]
    monkeypatch.setattr(E, "load_model", no_model)
    assert E.run_eval(eval_args(str(colour_dir), "--model", "stub", option, path)) == 2
    assert f"{option} {path}: " in one_line(capsys.readouterr().err)


def test_the_json_replaces_the_old_file_and_never_rewrites_it_in_place(colour_dir, tmp_path, monkeypatch):
    target, link = tmp_path / "r.json", tmp_path / "old.json"
    target.write_text("old")
    os.link(target, link)  # the old file's contents, as a reader that opened it before sees them
    monkeypatch.setattr(E, "load_model", lambda name, backend="numpy": ColourModel())
    assert E.run_eval(eval_args(str(colour_dir), "--model", "stub", "--json", str(target))) == 0
    assert json.loads(target.read_text())["count"] == 13
    assert link.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file left


def test_an_output_folder_gone_during_the_evaluation_is_one_line(colour_dir, tmp_path_factory, monkeypatch, capsys):
    out = tmp_path_factory.mktemp("out")  # (colour_dir is tmp_path: a folder there would be a class)
    evaluate = E.evaluate_model

    def evaluate_then_remove_the_folder(*args, **kwargs):
        result = evaluate(*args, **kwargs)
        out.rmdir()
        return result

    monkeypatch.setattr(E, "load_model", lambda name, backend="numpy": ColourModel())
    monkeypatch.setattr(E, "evaluate_model", evaluate_then_remove_the_folder)
    assert E.run_eval(eval_args(str(colour_dir), "--model", "stub", "--json", str(out / "r.json"))) == 2
    assert f"--json {out / 'r.json'}: cannot write it" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("size", ["0", "-3", "5000"])
def test_a_batch_size_out_of_range_is_refused_up_front(colour_dir, monkeypatch, capsys, size):
    monkeypatch.setattr(E, "load_model", no_model)
    assert E.run_eval(eval_args(str(colour_dir), "--model", "stub", "--batch-size", size)) == 2
    assert f"--batch-size must be a whole number from 1 to 4096 (got {size})" in one_line(capsys.readouterr().err)
    if int(size) < 1:
        with pytest.raises(E.EvalError, match="batch size"):
            E.evaluate_model(ColourModel(), str(colour_dir), ["red/0.png"], batch_size=int(size))


def test_an_empty_val_list_is_one_clear_line(colour_dir, tmp_path, monkeypatch, capsys):
    split = seed_split(colour_dir, val_rate=0.0)
    split_path, _ = write_split(split, tmp_path / "run")
    monkeypatch.setattr(E, "load_model", lambda name, backend="numpy": ColourModel())
    assert E.run_eval(eval_args(str(colour_dir), "--model", "stub", "--split", split_path)) == 2
    err = one_line(capsys.readouterr().err)
    assert f"{split_path}: its val list is empty" in err and "--part train" in err


def test_no_images_is_an_error_not_a_zero_accuracy(colour_dir, tmp_path, monkeypatch, capsys):
    with pytest.raises(E.EvalError, match="no images"):
        E.evaluate_model(ColourModel(), str(colour_dir), [])
    with pytest.raises(E.EvalError, match="no predictions"):
        E.summarize([], np.zeros((0, 3)), ColourModel.class_names)
    empty = tmp_path / "empty"
    (empty / "red").mkdir(parents=True)
    monkeypatch.setattr(E, "load_model", lambda name, backend="numpy": ColourModel())
    assert E.run_eval(eval_args(str(empty), "--model", "stub")) == 2
    assert f"{empty / 'red'}: class folder holds no images" in one_line(capsys.readouterr().err)


def test_a_folder_of_one_class_can_be_evaluated(tmp_path, monkeypatch, capsys):
    # (training refuses one class; the accuracy of a model on one kind of photo is a fair question)
    (tmp_path / "red").mkdir()
    for i in range(3):
        Image.new("RGB", (50, 44), (250, 0, 0)).save(tmp_path / "red" / f"{i}.png")
    monkeypatch.setattr(E, "load_model", lambda name, backend="numpy": ColourModel())
    assert E.run_eval(eval_args(str(tmp_path), "--model", "stub")) == 0
    assert "top-1 accuracy: 100.00% (3/3)" in capsys.readouterr().out


def test_the_same_file_for_json_and_png_is_refused_up_front(colour_dir, tmp_path_factory, monkeypatch, capsys):
    out = tmp_path_factory.mktemp("out")
    monkeypatch.setattr(E, "load_model", no_model)
    argv = [str(colour_dir), "--model", "stub", "--json", str(out / "r.out"), "--png", str(out / "." / "r.out")]
    assert E.run_eval(eval_args(*argv)) == 2
    assert "--png and --json name the same file" in one_line(capsys.readouterr().err)


def test_png_without_matplotlib_is_refused_before_evaluating(colour_dir, tmp_path_factory, monkeypatch, capsys):
    out = tmp_path_factory.mktemp("out")
    monkeypatch.setattr(E, "load_model", no_model)
    monkeypatch.setattr(E, "has_matplotlib", lambda: False)
    assert E.run_eval(eval_args(str(colour_dir), "--model", "stub", "--png", str(out / "m.png"))) == 2
    err = one_line(capsys.readouterr().err)
    assert "needs matplotlib" in err and "leave out --png" in err


def test_png_draws_the_confusion_matrix_when_matplotlib_is_there(colour_dir, tmp_path_factory, monkeypatch):
    pytest.importorskip("matplotlib")  # (in the train extra, not the test one)
    png = tmp_path_factory.mktemp("out") / "m.png"
    monkeypatch.setattr(E, "load_model", lambda name, backend="numpy": ColourModel())
    assert E.run_eval(eval_args(str(colour_dir), "--model", "stub", "--png", str(png))) == 0
    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) > 100


@pytest.mark.parametrize("which", ["model", "split", "photo"])
def test_a_report_never_replaces_an_input(colour_dir, tmp_path_factory, monkeypatch, capsys, which):
    out = tmp_path_factory.mktemp("inputs")
    model, split = out / "m.npz", out / "split.json"
    model.write_bytes(b"a model")
    write_split(seed_split(colour_dir), out)
    photo = colour_dir / "red" / "0.png"
    target = {"model": model, "split": split, "photo": photo}[which]
    before = target.read_bytes()
    monkeypatch.setattr(E, "load_model", no_model)
    argv = [str(colour_dir), "--model", str(model), "--split", str(split), "--json", str(target)]
    assert E.run_eval(eval_args(*argv)) == 2
    assert "which the report would replace" in one_line(capsys.readouterr().err)
    assert target.read_bytes() == before


def test_a_split_file_that_is_not_text_is_one_line_naming_it(colour_dir, monkeypatch, capsys):
    photo = str(colour_dir / "red" / "0.png")
    monkeypatch.setattr(E, "load_model", lambda name, backend="numpy": ColourModel())
    assert E.run_eval(eval_args(str(colour_dir), "--model", "stub", "--split", photo)) == 2
    assert f"{photo}: cannot read the split file" in one_line(capsys.readouterr().err)


def test_a_batch_ends_early_where_its_photos_would_pass_the_pixel_bound(colour_dir, monkeypatch):
    # each photo is 50 x 44 = 2,200 pixels: a bound of 5,000 holds two photos at most, whatever
    # --batch-size says; the counts are those of any batching
    files = E.labelled_files(str(colour_dir), None)
    sizes = [len(chunk) for chunk, *_ in E.decoded_batches(str(colour_dir), files, 4096, max_pixels=5_000)]
    assert sizes == [2, 2, 2, 2, 2, 2, 1]
    seen = []
    model = ColourModel()
    original_forward = model.forward
    monkeypatch.setattr(model, "forward", lambda batch: seen.append(len(batch)) or original_forward(batch))
    monkeypatch.setattr(E, "MAX_BATCH_PIXELS", 5_000 + 2 * E.RGB_PIXELS_PER_INPUT_PIXEL * model.recipe["crop"] ** 2)
    r = E.evaluate_model(model, str(colour_dir), files, batch_size=4096)
    assert max(seen) == 2 and r["count"] == 13 and r["top1"] == 12 / 13


def test_small_photos_count_the_network_input_they_become(colour_dir):
    # 2,200 pixels each plus 12,800 each for its network input: a bound of 30,000 takes two (30,000),
    # where their own pixels alone would take 13 (28,600)
    files = E.labelled_files(str(colour_dir), None)
    sizes = [len(chunk) for chunk, *_ in E.decoded_batches(str(colour_dir), files, 4096, max_pixels=30_000,
                                                           pixels_per_photo=12_800)]
    assert sizes == [2, 2, 2, 2, 2, 2, 1]


def test_files_done_add_up_to_every_file_when_unreadable_ones_come_last(colour_dir):
    (colour_dir / "red" / "99.png").write_bytes(b"not a png")  # sorted last of the last class
    (colour_dir / "red" / "98.png").write_bytes(b"")
    files = E.labelled_files(str(colour_dir), None)
    unreadable = []
    batches = list(E.decoded_batches(str(colour_dir), files, 4, unreadable=unreadable))
    assert [len(chunk) for chunk, *_ in batches] == [4, 4, 4, 1]
    assert sum(done for *_, done in batches) == len(files) == 15 and len(unreadable) == 2


def test_decode_seconds_leave_out_the_time_the_caller_spends_on_a_batch(colour_dir, monkeypatch):
    # the generator waits at each yield while the network runs; that wait is no decoding
    clock = iter(range(0, 10**6, 1))
    monkeypatch.setattr(E.time, "perf_counter", lambda: next(clock))  # each reading of the clock adds 1 s
    files = E.labelled_files(str(colour_dir), None)
    total = 0.0
    for *_, seconds, _done in E.decoded_batches(str(colour_dir), files, 4):
        for _ in range(100):  # the caller reads the clock 100 times while it works on the batch
            E.time.perf_counter()
        total += seconds
    assert total == len(files)  # one second (two readings) per photo, none of the caller's 100


def test_an_unreadable_photo_is_one_line_and_the_others_are_scored(colour_dir, tmp_path, monkeypatch, capsys):
    (colour_dir / "blue" / "5.png").write_bytes(b"not a png")
    files = E.labelled_files(str(colour_dir), None)
    r = E.evaluate_model(ColourModel(), str(colour_dir), files, batch_size=3)
    assert r["count"] == 13 and r["top1"] == 12 / 13  # the 13 readable photos, as before
    assert [row["path"] for row in r["unreadable"]] == ["blue/5.png"]
    monkeypatch.setattr(E, "load_model", lambda name, backend: ColourModel())
    assert E.main([str(colour_dir), "--model", "colours", "--json", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    assert "skipped:" in err and "5.png" in err and "1 photo(s) could not be read" in err and "Traceback" not in err
    assert json.loads((tmp_path / "r.json").read_text())["unreadable"][0]["path"] == "blue/5.png"


def test_no_readable_photo_is_an_error(tmp_path):
    for name in ("red", "blue"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "0.png").write_bytes(b"not a png")
    files = E.labelled_files(str(tmp_path), None)
    with pytest.raises(E.EvalError, match="none of the 2 photos could be read"):
        E.evaluate_model(ColourModel(), str(tmp_path), files)
