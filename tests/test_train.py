"""The trainer: seed-style split, arch names, a tiny end-to-end run -> model file, resume, distillation."""

from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from npshuffle.archs import V1Spec, V2Spec, v1_spec, v2_spec  # noqa: E402
from npshuffle.model import Model  # noqa: E402
from npshuffle.model_file import DEFAULT_RECIPES  # noqa: E402
from npshuffle.preprocess import preprocess_batch  # noqa: E402
from npshuffle.progress import Progress  # noqa: E402
from npshuffle.training import train as T  # noqa: E402
from npshuffle.training.arguments import parse_arch  # noqa: E402
from npshuffle.training.datasets import read_split, seed_split, write_split  # noqa: E402
from npshuffle.training.loop import build_engine_teacher, build_teacher, kd_loss, teacher_log_probs  # noqa: E402
from npshuffle.training.pipeline import Normalize, random_resized_crop_params  # noqa: E402
from npshuffle.training.torch_ref import build_torch_model  # noqa: E402

TINY_V2 = "v2:stem=4,stages=8-16,repeats=1-1,head=16"
TINY_V1 = "v1:groups=2,stem=4,stages=16-32,repeats=1-1"
CLASSES = ("cat", "dog", "eel")
COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "eel": (40, 40, 200)}


def seed_read_split_data(root: str, val_rate: float = 0.2):
    """The seed project's utils.read_split_data, as published (global random, os.listdir)."""
    random.seed(0)
    flower_class = [cla for cla in os.listdir(root) if os.path.isdir(os.path.join(root, cla))]
    flower_class.sort()
    class_indices = dict((k, v) for v, k in enumerate(flower_class))
    train_images_path, train_images_label, val_images_path, val_images_label = [], [], [], []
    supported = [".jpg", ".JPG", ".png", ".PNG"]
    for cla in flower_class:
        cla_path = os.path.join(root, cla)
        images = [os.path.join(root, cla, i) for i in os.listdir(cla_path) if os.path.splitext(i)[-1] in supported]
        images.sort()
        image_class = class_indices[cla]
        val_path = random.sample(images, k=int(len(images) * val_rate))
        for img_path in images:
            if img_path in val_path:
                val_images_path.append(img_path)
                val_images_label.append(image_class)
            else:
                train_images_path.append(img_path)
                train_images_label.append(image_class)
    return train_images_path, train_images_label, val_images_path, val_images_label, class_indices


def make_images(root, per_class: int = 5, size=(48, 40)) -> str:
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(COLOURS[cls], 30, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, cls, f"img{i:02d}.jpg"))
    return str(root)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data"))


def tiny_args(data_dir, out, *extra):
    return [data_dir, "--out", str(out), "--arch", TINY_V2, "--epochs", "1", "--batch-size", "4",
            "--img-size", "32", "--val-resize", "40", "--val-crop", "32", "--workers", "0", "--threads", "1",
            "--lr", "0.05", *extra]


@pytest.fixture(scope="module")
def tiny_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert T.main(tiny_args(data_dir, out)) == 0
    return out


# --------------------------------------------------------------------------------------------------


def test_split_matches_the_seed_and_is_reproducible(tmp_path):
    counts = {"b_class": 11, "a_class": 7, "c_class": 23}
    for cls, n in counts.items():
        (tmp_path / cls).mkdir()
        for i in range(n):
            ext = [".jpg", ".JPG", ".png", ".PNG"][i % 4]
            (tmp_path / cls / f"f{(i * 7919) % 101:03d}{ext}").write_bytes(b"")
        (tmp_path / cls / "notes.txt").write_bytes(b"")  # not an image: ignored
        (tmp_path / cls / "x.jpeg").write_bytes(b"")  # not a seed extension: ignored
    (tmp_path / "stray.jpg").write_bytes(b"")  # not in a class folder: ignored

    split = seed_split(tmp_path)
    again = seed_split(tmp_path)
    assert (split.train, split.val) == (again.train, again.val)

    train, train_labels, val, val_labels, indices = seed_read_split_data(str(tmp_path))
    assert split.classes == sorted(counts) == list(indices)
    rel = lambda paths: [os.path.relpath(p, tmp_path).replace(os.sep, "/") for p in paths]  # noqa: E731
    assert split.train == rel(train)
    assert split.val == rel(val)
    assert split.labels("train") == train_labels and split.labels("val") == val_labels
    assert len(split.val) == sum(int(n * 0.2) for n in counts.values())

    split_path, classes_path = write_split(split, tmp_path / "out")
    assert read_split(split_path).val == split.val
    assert json.loads(open(classes_path).read()) == {"0": "a_class", "1": "b_class", "2": "c_class"}


def test_arch_names():
    assert parse_arch("shufflenet_v1_g3_x0_5", 5) == v1_spec(3, "0.5x", 5)
    assert parse_arch("shufflenet_v2_x1_0", 5) == v2_spec("1.0x", 5)
    assert parse_arch(TINY_V2, 3) == V2Spec(4, (8, 16), 16, (1, 1), 3)
    assert parse_arch(TINY_V1, 3) == V1Spec(2, 4, (16, 32), (1, 1), 3)
    for bad in ("shufflenet_v3_x1_0", "shufflenet_v2_x0_7", "v2:stem=4", "v1:groups=3,stem=4,stages=10,repeats=1"):
        with pytest.raises(Exception, match="architecture|ShuffleNet"):
            parse_arch(bad, 3)


def test_random_resized_crop_is_torchvisions_algorithm():
    torch.manual_seed(1)
    for _ in range(200):
        top, left, h, w = random_resized_crop_params(60, 40)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60 and h > 0 and w > 0
    # the fallback: impossible scales give the central crop clipped to the ratio range
    assert random_resized_crop_params(100, 20, scale=(5.0, 5.0)) == (0, 36, 20, 27)


def test_tiny_training_run_writes_a_model_file_the_engine_runs(tiny_run, data_dir):
    out = tiny_run
    for name in ("split.json", "class_indices.json", "metrics.jsonl", "last.pth", "best.pth", "final.pth", "model.npz"):
        assert (out / name).exists(), name
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1]
    assert set(rows[0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr"}

    model = Model.load(out / "model.npz")
    assert model.class_names == list(CLASSES)
    assert model.metadata["val_accuracy"] == pytest.approx(rows[0]["val_acc"])
    assert model.metadata["trained"]["epochs"] == 1
    assert (model.recipe["resize"], model.recipe["crop"]) == (40, 32)

    # the engine's logits equal the torch network's (final.pth: --select last) on the same preprocessed images
    torch_model = build_torch_model(parse_arch(TINY_V2, 3), "torchvision")
    torch_model.load_state_dict(torch.load(out / "final.pth", weights_only=True))
    torch_model.eval()
    split = read_split(out / "split.json")
    images = [Image.open(os.path.join(data_dir, p)).convert("RGB") for p in split.train[:6]]
    batch = preprocess_batch(images, model.recipe)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(model.forward(batch), expected, rtol=1e-4, atol=1e-4)


def test_normalize_matches_each_dialects_recipe():
    pixels = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    for dialect, recipe in DEFAULT_RECIPES.items():
        got = Normalize(recipe, channels_last=True)(pixels).numpy()
        x = pixels.numpy().astype(np.float32)
        if recipe["channel_order"] == "BGR":
            x = x[..., ::-1]
        want = ((x * recipe["scale"] - np.float32(recipe["mean"])) / np.float32(recipe["std"])).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=dialect)


def cli_train(argv: list[str]) -> int:
    """``npshuffle train ARGV`` as the console command runs it (its parser adds the handler ``run``;
    the command recorded in the model file is read from ``sys.argv``)."""
    import sys

    from npshuffle.cli import main

    saved, sys.argv = sys.argv, ["npshuffle", "train", *argv]
    try:
        return main(["train", *argv])
    finally:
        sys.argv = saved


def interrupted_run(data_dir, out, monkeypatch, epochs: int = 3, train=T.main) -> list[str]:
    """A tiny run of ``epochs`` epochs stopped by Ctrl-C in epoch 2 (last.pth: 1 epoch done) through
    ``train`` (a main function); its argv."""
    original = Progress.update

    def interrupt_in_epoch_2(self, n, **stats):
        if self.label.startswith("epoch 2/"):
            raise KeyboardInterrupt
        return original(self, n, **stats)

    monkeypatch.setattr(Progress, "update", interrupt_in_epoch_2)
    args = tiny_args(data_dir, out)
    args[args.index("--epochs") + 1] = str(epochs)
    assert train(args) == 130
    monkeypatch.setattr(Progress, "update", original)
    return args


@pytest.mark.parametrize("train", [T.main, cli_train], ids=["train.main", "npshuffle train"])
def test_resume_after_interrupt_continues_at_the_right_epoch(train, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_run(data_dir, out, monkeypatch, epochs=3, train=train)
    state = torch.load(out / "last.pth", weights_only=True)  # data alone: no function of the CLI's in it
    assert state["epoch"] == 1 and not (out / "model.npz").exists()
    assert train([data_dir, "--out", str(out), "--resume"]) == 0
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 3
    # the lr schedule continued where it stopped: epoch 3 uses the cosine factor of step 2
    lf = ((1 + np.cos(2 * np.pi / 3)) / 2) * (1 - 0.1) + 0.1
    assert rows[2]["lr"] == pytest.approx(0.05 * lf)
    trained = Model.load(out / "model.npz").metadata["trained"]
    assert trained["epochs"] == 3 and trained["resumed_with"][0].endswith("--resume")


def test_resume_reads_a_last_pth_that_holds_the_cli_handler_and_nothing_else(data_dir, tmp_path, monkeypatch,
                                                                           capsys):
    """Runs of `npshuffle train` before the fix stored its handler, run_train, in last.pth: --resume
    takes them (the one global of ours let through) and drops it; any other global is refused."""
    out = tmp_path / "run"
    interrupted_run(data_dir, out, monkeypatch, epochs=2)
    state = torch.load(out / "last.pth", weights_only=True)
    state["config"]["run"] = T.run_train  # as the earlier versions' CLI runs saved it
    torch.save(state, out / "last.pth")
    assert T.main([data_dir, "--out", str(out), "--resume"]) == 0
    assert [json.loads(line)["epoch"] for line in open(out / "metrics.jsonl")] == [1, 2]

    state["config"]["run"] = os.system  # anything else is not loaded
    torch.save(state, tmp_path / "hostile.pth")
    capsys.readouterr()
    assert T.main([data_dir, "--out", str(out), "--resume", str(tmp_path / "hostile.pth")]) != 0
    assert "cannot load the resume checkpoint" in capsys.readouterr().err


def test_resume_continues_in_the_folder_of_its_last_pth_and_refuses_another_out(data_dir, tmp_path, monkeypatch,
                                                                                 capsys):
    interrupted_run(data_dir, tmp_path / "first", monkeypatch)
    os.rename(tmp_path / "first", tmp_path / "moved")  # the folder moved: the stored --out is stale
    capsys.readouterr()
    assert T.main([data_dir, "--resume", str(tmp_path / "moved" / "last.pth"), "--out", str(tmp_path / "x")]) == 2
    assert "continues the run in the folder of its last.pth" in capsys.readouterr().err
    assert T.main([data_dir, "--resume", str(tmp_path / "moved" / "last.pth")]) == 0
    assert (tmp_path / "moved" / "model.npz").exists() and not (tmp_path / "first").exists()


def test_resume_refuses_options_it_would_ignore_and_takes_the_runs_own(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = interrupted_run(data_dir, out, monkeypatch)
    capsys.readouterr()
    assert T.main([data_dir, "--out", str(out), "--resume", "--lr", "0.5", "--augment", "strong"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.5 (the run has 0.05)" in err and "--augment strong (the run has basic)" in err
    assert len(err.strip().splitlines()) == 1
    assert T.main([*args, "--resume"]) == 0  # the run's own command line again, with --resume: fine


def test_an_interrupt_after_an_epochs_metrics_row_does_not_repeat_the_row(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_run(data_dir, out, monkeypatch)
    # Ctrl-C between epoch 2's row and its last.pth: the row is there, last.pth says 1 epoch done
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5,
                            "lr": 0.05, "epoch_time_s": 1.0, "time": "x"}) + "\n")
    assert T.main([data_dir, "--out", str(out), "--resume"]) == 0
    assert [json.loads(line)["epoch"] for line in open(out / "metrics.jsonl")] == [1, 2, 3]


def test_a_new_run_does_not_wipe_an_earlier_one(tiny_run, data_dir, capsys):
    before = (tiny_run / "metrics.jsonl").read_bytes()
    assert T.main(tiny_args(data_dir, tiny_run)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tiny_run / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("content", ["best", "list", "empty_config"])
def test_resume_from_a_file_that_is_not_a_last_pth_is_one_line(tiny_run, data_dir, tmp_path, capsys, content):
    path = tmp_path / "last.pth"
    obj = {"best": torch.load(tiny_run / "best.pth", weights_only=True), "list": [1, 2, 3],
           "empty_config": {"config": {}}}[content]
    torch.save(obj, path)
    assert T.main([data_dir, "--resume", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not the last.pth of an `npshuffle train` run" in err and "Traceback" not in err


def test_resume_without_its_split_is_refused(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupted_run(data_dir, out, monkeypatch)
    os.remove(out / "split.json")
    capsys.readouterr()
    assert T.main([data_dir, "--out", str(out), "--resume"]) == 2
    assert "split.json is missing" in capsys.readouterr().err


def test_a_file_torch_cannot_load_is_named_with_what_to_do_instead(tmp_path):
    import argparse

    from npshuffle.training.checkpoints import load_failure

    def failure(obj=None, data=None, resume=False):
        path = tmp_path / "f.pth"
        if data is not None:
            path.write_bytes(data)
        else:
            torch.save(obj, path)
        with pytest.raises(Exception) as caught:
            torch.load(path, weights_only=True)
        return load_failure(caught.value, resume)

    # a training script's dict, the weights beside its arguments: how to keep the weights alone
    ckpt = {"model": torch.nn.Linear(2, 2).state_dict(), "args": argparse.Namespace(lr=0.1)}
    assert failure(ckpt).endswith("torch.save(checkpoint['model'], 'weights.pth')")
    assert "(argparse.Namespace)" in failure(ckpt)
    assert failure(ckpt, resume=True).endswith("--resume takes the last.pth that `npshuffle train` writes after "
                                                "every epoch")
    assert failure(torch.nn.Linear(2, 2)).endswith("torch.save(model.state_dict(), 'weights.pth')")
    for data, start in ((b"", "the file is empty"), (b"epoch 1: loss 0.3\n", "not a torch checkpoint"),
                        (b"PK\x03\x04 cut", "not a torch checkpoint")):
        message = failure(data=data)
        assert message.startswith(start), message
        assert "KeyError" not in message and "EOFError" not in message and len(message) < 300, message
    zipped = tmp_path / "real.pth"
    torch.save({"w": torch.zeros(3)}, zipped)
    message = failure(data=zipped.read_bytes()[:200])  # a real checkpoint cut short
    assert message.startswith("not a torch checkpoint, or one damaged or cut short") and "this can" not in message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_checkpoint_that_is_a_pipe_a_folder_or_missing_is_refused_before_anything_is_written(data_dir, tmp_path,
                                                                                               capsys):
    os.mkfifo(tmp_path / "pipe.pth")  # torch.load would wait for a writer forever
    os.symlink(tmp_path / "gone.pth", tmp_path / "dangling.pth")
    cases = [(["--init", "pipe.pth"], "--init {}: not a regular file"),
             (["--teacher", "pipe.pth"], "--teacher {}: not a regular file"),
             (["--init", "dangling.pth"], "--init {}: a link to nothing"),
             (["--init", "missing.pth"], "--init {}: no such file"), (["--teacher", "."], "--teacher {}: a folder"),
             (["--resume", "pipe.pth"], "{}: nothing to resume: not a regular file")]
    for (option, name), message in cases:
        path = str(tmp_path / name)
        assert T.main(tiny_args(data_dir, tmp_path / "o", option, path)) == 2, option
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("npshuffle train: error: " + message.format(path)), last
        assert not (tmp_path / "o").exists()


def test_the_split_notes_the_images_it_leaves_out_from_its_one_listing(tmp_path, monkeypatch, capsys):
    data = make_images(tmp_path / "data", per_class=5)
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / CLASSES[0] / "extra.jpeg")
    listed = []
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda folder: listed.append(folder) or real_listdir(folder))
    config = {"out": str(tmp_path / "out"), "data_dir": data, "val_rate": 0.2, "seed": 0, "max_images": None}
    split, _ = T.prepare_split(config, resuming=False)
    assert f"note: 1 image(s) left out, e.g. {CLASSES[0]}/extra.jpeg" in capsys.readouterr().err
    assert f"{CLASSES[0]}/extra.jpeg" not in split.train + split.val
    assert len(listed) == 1 + len(CLASSES)  # the data folder and each class folder, once


def test_train_seed_draws_other_weights_on_the_same_split(data_dir, tmp_path, tiny_run):
    out = tmp_path / "other_draw"
    assert T.main(tiny_args(data_dir, out, "--train-seed", "7")) == 0
    assert (out / "split.json").read_text() == (tiny_run / "split.json").read_text()
    ours, theirs = torch.load(out / "final.pth"), torch.load(tiny_run / "final.pth")
    assert any(not torch.equal(ours[k], theirs[k]) for k in ours)
    assert Model.load(out / "model.npz").metadata["trained"]["train_seed"] == 7
    assert Model.load(tiny_run / "model.npz").metadata["trained"]["train_seed"] == 0  # --seed's, by default


def test_a_diverging_run_stops_at_the_first_non_finite_loss(data_dir, tmp_path, monkeypatch, capsys):
    from npshuffle.training import loop

    monkeypatch.setattr(loop, "mixed_cross_entropy", lambda logits, batch, smoothing: logits.sum() * float("nan"))
    assert T.main(tiny_args(data_dir, tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "the loss became nan in epoch 1" in err and "lower --lr" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "model.npz").exists()


def test_unusable_files_and_folders_are_one_line(data_dir, tmp_path, capsys):
    (tmp_path / "garbage.pth").write_bytes(b"\x80\x02not a pickle at all" * 10)
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["--init", str(tmp_path / "garbage.pth")], "cannot load the checkpoint"),
        (["--teacher", str(tmp_path / "garbage.pth")], "cannot load the checkpoint"),
        (["--val-rate", "0.01"], "a run needs both"),
        (["--init", str(tmp_path / "module.pth")], "holds a pickled Python object (torch.nn.modules.linear.Linear)"),
        (["--teacher", str(tmp_path / "garbage.npz")], "cannot load the teacher (not a readable npshuffle model"),
    ]
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a whole module, not a state_dict
    (tmp_path / "garbage.npz").write_bytes(b"not an archive")
    for extra, message in cases:
        assert T.main(tiny_args(data_dir, tmp_path / "o", *extra)) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()[-1]) < 400, (extra, err)
        assert err.strip().splitlines()[-1].startswith("npshuffle train: error:"), err
    assert T.main(tiny_args(data_dir, tmp_path / "a_file" / "run")) == 2
    assert "cannot create the output folder" in capsys.readouterr().err


def test_init_drops_a_mismatched_classifier_and_distillation_runs(tiny_run, data_dir, tmp_path):
    # a 7-class "pretrained" V1 checkpoint in Megvii keys: the classifier must be re-initialised
    spec = parse_arch(TINY_V1, 7)
    pretrained = build_torch_model(spec, "megvii")
    torch.save({"state_dict": {"module." + k: v for k, v in pretrained.state_dict().items()}}, tmp_path / "init.pth")
    out = tmp_path / "student"
    args = [data_dir, "--out", str(out), "--init", str(tmp_path / "init.pth"), "--epochs", "1",
            "--batch-size", "4", "--img-size", "32", "--val-resize", "40", "--val-crop", "32", "--workers", "0",
            "--threads", "1", "--freeze", "--teacher", str(tiny_run / "best.pth"),
            "--teacher", str(tiny_run / "final.pth"), "--lr", "0.01"]
    assert T.main(args) == 0
    model = Model.load(out / "model.npz")
    assert model.metadata["trained"]["teacher"] == [str(tiny_run / "best.pth"), str(tiny_run / "final.pth")]
    assert model.file.dialect == "megvii" and model.file.spec == parse_arch(TINY_V1, 3)
    trained = torch.load(out / "best.pth", weights_only=True)
    for key, value in pretrained.state_dict().items():  # frozen: only the classifier changed
        if not key.startswith("classifier."):
            assert torch.equal(trained[key], value), key
    assert trained["classifier.0.weight"].shape == (3, 32)


def test_a_model_file_teaches_as_its_checkpoint_does(tiny_run, data_dir, tmp_path):
    # the run's model.npz (its last epoch, BN folded) on the Numba engine gives the logits its
    # final.pth gives in torch, so either can be the teacher; then a run distils from the .npz
    classes = json.loads((tiny_run / "split.json").read_text())["classes"]
    engine, engine_norm = build_engine_teacher(str(tiny_run / "model.npz"), classes, threads=1)
    torch_teacher, torch_norm, _ = build_teacher(str(tiny_run / "final.pth"), False, len(classes))
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 36, 44, 3), dtype=np.uint8))
    expected = torch_teacher(torch_norm(images))
    assert torch.allclose(engine(engine_norm(images)), expected, rtol=1e-4, atol=1e-4)
    out = tmp_path / "student"
    assert T.main(tiny_args(data_dir, out, "--teacher", str(tiny_run / "model.npz"))) == 0
    assert Model.load(out / "model.npz").metadata["trained"]["teacher"] == [str(tiny_run / "model.npz")]


def test_a_teacher_of_other_classes_is_refused_before_training(tiny_run, data_dir, tmp_path, capsys):
    other = tmp_path / "other"
    make_images(other, per_class=5)
    os.rename(other / "eel", other / "zinnia")
    assert T.main(tiny_args(str(other), tmp_path / "a", "--teacher", str(tiny_run / "model.npz"))) == 2
    err = capsys.readouterr().err
    assert "the teacher's classes" in err and "Traceback" not in err
    spec = parse_arch(TINY_V2, 7)
    torch.save(build_torch_model(spec, "torchvision").state_dict(), tmp_path / "seven.pth")
    assert T.main(tiny_args(data_dir, tmp_path / "b", "--teacher", str(tmp_path / "seven.pth"))) == 2
    err = capsys.readouterr().err
    assert "the teacher has 7 classes, the data 3" in err and "Traceback" not in err


def test_an_ensemble_of_teachers_averages_their_softened_probabilities():
    torch.manual_seed(0)
    a, b, student = torch.randn(6, 5) * 3, torch.randn(6, 5) * 3, torch.randn(6, 5)
    t = 4.0
    assert torch.allclose(teacher_log_probs([a], t), torch.log_softmax(a / t, 1), atol=1e-6)
    mean_probs = (torch.softmax(a / t, 1) + torch.softmax(b / t, 1)) / 2
    ensemble = teacher_log_probs([a, b], t)
    assert torch.allclose(ensemble.exp(), mean_probs, atol=1e-6)
    # the loss is T^2 * KL(p_teacher || p_student), zero when the student agrees with the ensemble
    expected = (mean_probs * (mean_probs.log() - torch.log_softmax(student / t, 1))).sum(1).mean() * t * t
    assert torch.allclose(kd_loss(student, ensemble, t), expected, atol=1e-5)
    assert kd_loss(ensemble * t, ensemble, t).abs() < 1e-5


def test_bad_init_is_a_clear_error(data_dir, tmp_path, capsys):
    spec = parse_arch(TINY_V1, 3)
    torch.save(build_torch_model(spec, "megvii").state_dict(), tmp_path / "v1.pth")
    code = T.main([data_dir, "--out", str(tmp_path / "o"), "--arch", TINY_V2, "--init", str(tmp_path / "v1.pth"),
                   "--epochs", "1", "--workers", "0"])
    assert code == 2
    assert "does not fit" in capsys.readouterr().err
    (tmp_path / "m.npz").write_bytes(b"PK")  # it must exist, or the check of input files says "no such file" first
    assert T.main([data_dir, "--out", str(tmp_path / "o"), "--init", str(tmp_path / "m.npz"), "--workers", "0"]) == 2
    assert "BN-folded" in capsys.readouterr().err


def _config_of(*words: str) -> dict:
    import argparse

    from npshuffle.training.arguments import add_train_arguments, resolve_config

    return resolve_config(add_train_arguments(argparse.ArgumentParser()).parse_args(["DATA", *words]))


def test_init_switches_the_defaults_to_the_fine_tuning_recipe_and_given_options_win():
    from npshuffle.training.arguments import FINE_TUNE_DEFAULTS, RECIPE_OPTIONS, SEED_DEFAULTS

    scratch = _config_of("--arch", "shufflenet_v2_x0_5")
    tuned = _config_of("--init", "some.pth")
    for option in RECIPE_OPTIONS:
        assert scratch[option] == SEED_DEFAULTS[option], option
        assert tuned[option] == FINE_TUNE_DEFAULTS[option], option
    assert tuned["lr"] < scratch["lr"]  # the seed's lr 0.1 wrecks pretrained features
    mixed = _config_of("--init", "some.pth", "--lr", "0.1", "--epochs", "3", "--label-smoothing", "0")
    assert (mixed["lr"], mixed["epochs"], mixed["label_smoothing"]) == (0.1, 3, 0.0)
    assert mixed["batch_size"] == FINE_TUNE_DEFAULTS["batch_size"]


def test_help_names_both_defaults():
    import argparse

    from npshuffle.training.arguments import add_train_arguments

    text = add_train_arguments(argparse.ArgumentParser()).format_help()
    assert "(default 0.1; with --init 0.02)" in " ".join(text.split())


@pytest.mark.parametrize("select, augment", [("last", "strong"), ("val", "strong-augmix")])
def test_select_decides_which_epoch_becomes_the_model_file(data_dir, tmp_path, select, augment):
    out = tmp_path / select
    args = tiny_args(data_dir, out, "--select", select, "--augment", augment)
    args[args.index("--epochs") + 1] = "3"
    assert T.main(args) == 0
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    model = Model.load(out / "model.npz")
    trained = model.metadata
    if select == "last":
        expected_epoch, expected_acc = 3, rows[-1]["val_acc"]
        state = torch.load(out / "final.pth", weights_only=True)
    else:
        best = max(rows, key=lambda r: r["val_acc"])  # the first of equal bests, as the loop keeps it
        expected_epoch, expected_acc = best["epoch"], best["val_acc"]
        state = torch.load(out / "best.pth", weights_only=True)
    assert trained["trained"]["epoch"] == expected_epoch
    assert trained["val_accuracy"] == pytest.approx(expected_acc)
    assert select in ("last", "val") and ("last epoch" in trained["trained"]["selected"]) == (select == "last")
    assert trained["trained"]["augment"] == augment
    # model.npz holds the selected state's weights: its logits are that checkpoint's
    torch_model = build_torch_model(parse_arch(TINY_V2, 3), "torchvision")
    torch_model.load_state_dict(state)
    torch_model.eval()
    split = read_split(out / "split.json")
    batch = preprocess_batch([Image.open(os.path.join(data_dir, p)).convert("RGB") for p in split.val], model.recipe)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(model.forward(batch), expected, rtol=1e-4, atol=1e-4)


def test_strong_augment_is_seeded_keeps_the_crop_shape_and_changes_pixels():
    from npshuffle.training.pipeline import strong_augment

    crop = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 40, 3), dtype=np.uint8))
    torch.manual_seed(5)
    first = [strong_augment(crop) for _ in range(20)]
    torch.manual_seed(5)
    again = [strong_augment(crop) for _ in range(20)]
    original = np.asarray(crop)
    for a, b in zip(first, again, strict=True):
        assert a.shape == original.shape and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
    changed = sum(not np.array_equal(a, original) for a in first)
    assert changed >= 15  # jitter (p 0.8), greyscale (0.1) or erasing (0.25): most draws change the crop
    grey = [a for a in first if np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])]
    assert len(grey) < 10


def test_strong_blur_blurs_the_crop(monkeypatch):
    from npshuffle.training import pipeline

    for name in ("JITTER_P", "GREY_P", "ERASE_P"):
        monkeypatch.setattr(pipeline, name, 0.0)  # only the blur acts
    monkeypatch.setattr(pipeline, "BLUR_P", 1.0)
    crop = Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 40, 3), dtype=np.uint8))
    torch.manual_seed(0)
    roughness = [np.abs(np.diff(pipeline.strong_augment(crop, blur=True).astype(float), axis=1)).mean()
                 for _ in range(5)]
    original = np.abs(np.diff(np.asarray(crop, dtype=float), axis=1)).mean()
    assert max(roughness) < 0.9 * original  # each of these seeded draws (sigma in 0.1-2 px) smooths the noise
    np.testing.assert_array_equal(pipeline.strong_augment(crop, blur=False), np.asarray(crop))


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_mix_trains_with_a_teacher_and_is_recorded(tiny_run, data_dir, tmp_path, mix, monkeypatch):
    from npshuffle.training import loop, mixing

    kinds = []

    def counting(images, labels, kind, alpha):
        kinds.append(kind)
        return mixing.mix_batch(images, labels, kind, alpha)

    monkeypatch.setattr(loop, "mix_batch", counting)
    out = tmp_path / mix
    assert T.main(tiny_args(data_dir, out, "--mix", mix, "--teacher", str(tiny_run / "final.pth"))) == 0
    assert kinds and set(kinds) == {mix}  # every training batch was blended
    trained = Model.load(out / "model.npz").metadata["trained"]
    assert trained["mix"] == mix and trained["mix_alpha"] == {"mixup": 0.2, "cutmix": 1.0}[mix]
    row = json.loads(open(out / "metrics.jsonl").readline())
    assert 0 <= row["train_acc"] <= 1 and np.isfinite(row["train_loss"])


@pytest.mark.parametrize("options, message", [
    (["--mix", "mixup", "--mix-alpha", "0"], "--mix-alpha must be a number from 0.01 to 100"),
    (["--mix", "mixup", "--mix-alpha", "1e-10"], "--mix-alpha must be a number from 0.01 to 100"),
    (["--mix", "cutmix", "--mix-alpha", "inf"], "--mix-alpha must be a number from 0.01 to 100"),
    (["--mix-alpha", "0.5"], "--mix-alpha needs --mix mixup or --mix cutmix"),
])
def test_a_mix_alpha_that_cannot_work_is_refused(data_dir, tmp_path, capsys, options, message):
    assert T.main(tiny_args(data_dir, tmp_path / "o", *options)) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (["--epochs", "0"], "--epochs must be a whole number from 1"),
    (["--epochs", "-1"], "--epochs must be a whole number from 1"),
    (["--batch-size", "0"], "--batch-size must be a whole number from 1"),
    (["--threads", "0"], "--threads must be a whole number from 1"),
    (["--workers", "-2"], "--workers must be a whole number from 0"),
    (["--seed", "-1"], "--seed must be a whole number from 0"),
    (["--img-size", "0"], "--img-size must be a whole number from 32 to 1024"),
    (["--img-size", "100000"], "--img-size must be a whole number from 32 to 1024"),
    (["--val-resize", "-5"], "--val-resize must be a whole number from 32"),
    (["--val-resize", "40", "--val-crop", "48"], "--val-crop (48) must not exceed --val-resize (40)"),
    (["--lr", "-0.1"], "--lr must be a number above 0"),
    (["--lr", "nan"], "--lr must be a number above 0"),
    (["--lrf", "2"], "--lrf must be a number from 0 to 1"),
    (["--weight-decay=-1e-4"], "--weight-decay must be a number from 0"),
    (["--label-smoothing", "1"], "--label-smoothing must be a number from 0 up to"),
    (["--label-smoothing", "nan"], "--label-smoothing must be a number from 0 up to"),
    (["--min-scale", "0"], "--min-scale must be a number above 0, at most 1"),
    (["--min-scale", "1.5"], "--min-scale must be a number above 0, at most 1"),
    (["--val-rate", "1"], "--val-rate must be a number between 0 and 1"),
])
def test_numbers_that_cannot_make_a_run_are_refused_up_front(data_dir, tmp_path, capsys, options, message):
    assert T.main(tiny_args(data_dir, tmp_path / "o", *options)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.parametrize("options, message", [
    (["--kd-alpha", "0.5"], "--kd-alpha needs --teacher"),
    (["--kd-temperature", "2"], "--kd-temperature needs --teacher"),
    (["--teacher", "t.pth", "--kd-alpha", "1.5"], "--kd-alpha must be a number from 0 to 1"),
    (["--teacher", "t.pth", "--kd-alpha", "nan"], "--kd-alpha must be a number from 0 to 1"),
    (["--teacher", "t.pth", "--kd-temperature", "0"], "--kd-temperature must be a number from 0.1 to 100"),
    (["--teacher", "t.pth", "--kd-temperature", "1e200"], "--kd-temperature must be a number from 0.1 to 100"),
])
def test_distillation_settings_that_cannot_work_are_refused(data_dir, tmp_path, capsys, options, message):
    assert T.main(tiny_args(data_dir, tmp_path / "o", *options)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def truncate(path: str) -> str:
    with open(path, "r+b") as f:  # a valid header, the pixels cut off: found only when decoded
        f.truncate(os.path.getsize(path) // 2)
    return path


def test_photos_that_fail_to_decode_in_a_loader_worker_are_skipped_with_one_note_each(tmp_path, capsys):
    data = make_images(tmp_path / "data")
    split = seed_split(data)
    broken = [truncate(os.path.join(data, split.train[0])), truncate(os.path.join(data, split.val[0]))]
    argv = tiny_args(data, tmp_path / "out", "--no-cache")
    argv[argv.index("--workers") + 1] = "1"
    argv[argv.index("--epochs") + 1] = "2"
    assert T.main(argv) == 0
    err = capsys.readouterr().err  # (the progress log goes there too)
    assert "Traceback" not in err, err
    notes = sorted(line for line in err.splitlines() if line.startswith("note: skipped"))
    assert len(notes) == 2, notes  # one each, though both epochs meet them
    for note, path in zip(notes, sorted(broken), strict=True):
        assert note.startswith(f"note: skipped {path}: broken or truncated")
    assert (tmp_path / "out" / "model.npz").exists()
    rows = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert [row["skipped"] for row in rows] == [{"train": 1, "val": 1}] * 2


def test_a_validation_split_whose_every_photo_fails_to_decode_stops_the_run(tmp_path, capsys):
    data = make_images(tmp_path / "data")
    for path in seed_split(data).val:
        truncate(os.path.join(data, path))
    assert T.main(tiny_args(data, tmp_path / "out", "--no-cache")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("npshuffle train: error: no photo of the validation split")


def test_collate_keeps_the_photos_that_decoded_and_the_reasons_of_the_others():
    from npshuffle.training.pipeline import collate_photos

    crop = torch.zeros(4, 5, 3, dtype=torch.uint8)
    batch = collate_photos([(crop, 2), (None, ("a.jpg", "a.jpg: broken")), (crop + 1, 0)])
    assert batch.images.shape == (2, 4, 5, 3) and batch.labels.tolist() == [2, 0]
    assert batch.skipped == [("a.jpg", "a.jpg: broken")] and int(batch.images[1].max()) == 1
    empty = collate_photos([(None, ("b.jpg", "b.jpg: broken"))])
    assert empty.images.shape == (0, 0, 0, 3) and empty.labels.shape == (0,) and len(empty.skipped) == 1


def test_a_photo_that_fails_to_decode_into_the_cache_stops_the_run_in_one_line(tmp_path, capsys):
    data = make_images(tmp_path / "data")
    broken = truncate(os.path.join(data, CLASSES[0], "img00.jpg"))
    assert T.main(tiny_args(data, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"npshuffle train: error: {broken}: broken or truncated") and "fix or remove it" in last


@pytest.mark.parametrize("cache", [[], ["--no-cache"]])
def test_a_photo_whose_header_cannot_be_read_stops_the_run_before_the_first_epoch(tmp_path, capsys, monkeypatch,
                                                                                    cache):
    from npshuffle.training import loop

    data = make_images(tmp_path / "data")
    for name in ("img00.jpg", "img01.jpg"):
        with open(os.path.join(data, CLASSES[0], name), "wb") as f:
            f.write(b"not a photo at all")
    monkeypatch.setattr(loop, "FolderDataset", lambda *a, **k: pytest.fail("the data loaders were built"))
    assert T.main(tiny_args(data, tmp_path / "out", *cache)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"npshuffle train: error: {os.path.join(data, CLASSES[0], 'img00.jpg')}: not an image")
    assert f"also {CLASSES[0]}/img01.jpg (2 photo(s) of the split cannot be read)" in last


def test_a_metrics_row_cut_short_by_a_kill_is_dropped_on_resume(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_run(data_dir, out, monkeypatch, epochs=2)
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"epoch": 2, "train_lo')  # the kill came while the row was written
    assert T.main([data_dir, "--out", str(out), "--resume"]) == 0
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_a_garbled_metrics_line_is_one_line_naming_the_file(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupted_run(data_dir, out, monkeypatch, epochs=2)
    metrics = out / "metrics.jsonl"
    metrics.write_text("not json\n" + metrics.read_text())
    capsys.readouterr()
    assert T.main([data_dir, "--out", str(out), "--resume"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"{metrics}: line 1 is not a metrics row; "
                                                                     "remove it to go on")


def test_resume_refuses_fewer_epochs_than_done(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = tiny_args(data_dir, out)
    args[args.index("--epochs") + 1] = "2"
    assert T.main(args) == 0
    capsys.readouterr()
    assert T.main([data_dir, "--out", str(out), "--resume", "--epochs", "1"]) == 2
    assert "--epochs 1: the run has done 2 epochs already" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--img-size", "224"], ["--no-cache"], ["--lr", "0.05"]],
                         ids=["the parser's default", "a switch", "the run's own value"])
def test_resume_refuses_an_option_it_would_ignore_even_at_its_default(data_dir, tmp_path, monkeypatch, capsys,
                                                                      option):
    out = tmp_path / "run"
    interrupted_run(data_dir, out, monkeypatch, epochs=2)  # --img-size 32, the cache on, --lr 0.05
    capsys.readouterr()
    code = T.main([data_dir, "--out", str(out), "--resume", *option])
    if option[0] == "--lr":
        assert code == 0
        return
    assert code == 2
    assert f"{option[0]}" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_second_run_on_a_folder_in_use_is_refused(data_dir, tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "run"
    out.mkdir()
    with open(out / T.LOCK_FILE, "a") as held:  # as the first run holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert T.main(tiny_args(data_dir, out)) == 2
        assert "another `npshuffle train` is running in this folder" in capsys.readouterr().err
    assert not (out / "metrics.jsonl").exists()
    assert T.main(tiny_args(data_dir, out)) == 0  # released: the run goes ahead


def test_a_run_extended_by_resume_follows_the_longer_schedule(data_dir, tmp_path):
    out = tmp_path / "run"
    assert T.main(tiny_args(data_dir, out)) == 0  # 1 epoch of 1: it ended at lr 0.05 x lrf
    assert T.main([data_dir, "--out", str(out), "--resume", "--epochs", "3"]) == 0
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]

    def lf(x, epochs=3, lrf=0.1):
        return ((1 + np.cos(x * np.pi / epochs)) / 2) * (1 - lrf) + lrf

    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows[1:]] == pytest.approx([0.05 * lf(1), 0.05 * lf(2)])  # a 3-epoch run's


def test_a_run_resumes_from_another_folder_and_without_its_init_file(tiny_run, data_dir, tmp_path, monkeypatch):
    # --init and --teacher given as relative paths where the run began; --resume typed elsewhere,
    # after the --init file is gone: the teacher is found from the run's first folder, and the
    # network is rebuilt from the recorded architecture (last.pth holds the weights)
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir(), elsewhere.mkdir()
    shutil.copy(tiny_run / "final.pth", start / "init.pth")
    shutil.copy(tiny_run / "final.pth", start / "teacher.pth")
    out = start / "run"

    def without_arch(args):
        at = args.index("--arch")
        return T.main(args[:at] + args[at + 2:] + ["--init", "init.pth", "--teacher", "teacher.pth"])

    monkeypatch.chdir(start)
    interrupted_run(data_dir, out, monkeypatch, epochs=2, train=without_arch)
    (start / "init.pth").unlink()
    monkeypatch.chdir(elsewhere)
    assert T.main([data_dir, "--out", str(out), "--resume"]) == 0
    model = Model.load(out / "model.npz")
    assert model.metadata["trained"]["teacher"] == ["teacher.pth"] and model.metadata["trained"]["epoch"] == 2
    assert model.file.spec == parse_arch(TINY_V2, 3)


def test_photos_too_large_to_keep_in_memory_are_decoded_each_epoch(data_dir, tmp_path, monkeypatch, capsys):
    from npshuffle.training import loop

    split = seed_split(data_dir, 0.2, 0)
    files = split.train + split.val
    sizes, unreadable = loop.read_headers(data_dir, files)
    pixels = sum(w * h for w, h in sizes.values())
    assert not unreadable and pixels == sum(np.prod(Image.open(os.path.join(data_dir, f)).size) for f in files)
    caches = []
    dataset = loop.FolderDataset
    monkeypatch.setattr(loop, "FolderDataset", lambda *a, **k: caches.append(k["cache"]) or dataset(*a, **k))
    monkeypatch.setattr(loop, "CACHE_MAX_PIXELS", pixels - 1)
    assert T.main(tiny_args(data_dir, tmp_path / "big")) == 0
    assert caches == [False, False] and "decoded from disk each epoch" in capsys.readouterr().err
    monkeypatch.setattr(loop, "CACHE_MAX_PIXELS", pixels)
    assert T.main(tiny_args(data_dir, tmp_path / "fits")) == 0
    assert caches[2:] == [True, True]
