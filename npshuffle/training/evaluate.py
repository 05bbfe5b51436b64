"""``npshuffle eval DATA_DIR --model M [--split FILE]``: accuracy of a model file on labelled images.

Runs the npshuffle engine (no torch): each image is preprocessed with the model's own recipe
(:func:`npshuffle.preprocess.preprocess_batch`) and classified by :class:`npshuffle.model.Model`.
The label of an image is its folder name, matched to the model's class names; reported are top-1
and top-5 accuracy (top-5 when the model has at least 5 classes), per-class accuracy and the
confusion matrix (rows: true class, columns: predicted class), as text and optionally as a PNG.

Images: the ``val`` list of a ``split.json`` written by ``npshuffle train`` (``--split``), else
every image file of DATA_DIR's class folders (any extension ``npshuffle predict`` reads).

Two optional reports, on the same photos in the same pass (each photo is decoded once):

* ``--corruptions``: the robustness report. Every photo again under each corruption of
  :data:`npshuffle.corruptions.CORRUPTIONS` (8 of them) at both severities, applied to the decoded
  photo before the model's preprocessing, the random ones seeded by the photo's relative path
  (:func:`npshuffle.corruptions.photo_seed`): the same numbers on every run and machine. Reported:
  top-1 per corruption and severity, and the *mean corruption accuracy*, the plain (unnormalised)
  mean of those 16 top-1 accuracies, each over the same photos. (ImageNet-C's mCE divides each
  corruption's error by AlexNet's; there is no reference model here, so the mean is unnormalised.)
* ``--tta [flip|ten-crop]``: top-1/top-5 with test-time augmentation (:mod:`npshuffle.tta`:
  probabilities averaged over the views), and the time per photo of the plain and the TTA
  classification, measured batch by batch in the same run (decoding timed apart, done once).

Corrupted photos are classified plainly (no TTA). Memory stays bounded: one batch of decoded photos
(and the first photo of the next) is held at a time (``--batch-size`` photos, fewer where they
would pass :data:`MAX_BATCH_PIXELS`, their network inputs counted: see
:data:`RGB_PIXELS_PER_INPUT_PIXEL`), and of
each corrupted version of a batch only its predictions are kept.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

import numpy as np

from ..atomic import write_atomically
from ..backends import BackendError
from ..corruptions import CORRUPTIONS, SEVERITIES, corrupt, photo_seed
from ..predict import load_model
from ..preprocess import preprocess_batch
from ..progress import Progress
from ..tta import TTA_VIEWS, tta_probabilities
from .datasets import DatasetError, class_of, list_dataset, load_image, read_split
from .messages import listed


class EvalError(ValueError):
    """An evaluation that cannot run (classes do not match, no images, ...)."""


# --batch-size: a batch of decoded photos is held at once; the same bounds as `npshuffle train --batch-size`
BATCH_SIZES = (1, 4096)


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("data_dir", metavar="DATA_DIR", help="class-per-folder images (folder name = true class)")
    parser.add_argument("--model", "-m", required=True, help="model file (.npz) or bundled model name")
    parser.add_argument("--split", default=None, metavar="FILE",
                        help="split.json from `npshuffle train`: evaluate its val list (default: every image)")
    parser.add_argument("--part", choices=("val", "train"), default="val", help="which list of --split")
    parser.add_argument("--backend", default="numpy", help="npshuffle backend (numpy, numba, ...)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="photos decoded and classified at once (default 32; fewer where they would "
                             f"pass {MAX_BATCH_PIXELS // 1_000_000} M pixels, their network inputs counted)")
    parser.add_argument("--png", default=None, metavar="FILE", help="also draw the confusion matrix (matplotlib)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--corruptions", action="store_true",
                        help="also the robustness report: top-1 under 8 corruptions at 2 severities each "
                             "(npshuffle/corruptions.py) and their mean; 17 network passes per photo")
    parser.add_argument("--tta", nargs="?", const="flip", default=None, choices=tuple(TTA_VIEWS),
                        help="also top-1 with test-time augmentation, probabilities averaged over the views "
                             "(flip, the default: centre crop + mirror; ten-crop: centre + 4 corners, each "
                             "+ mirror), and its time per photo beside the plain one")
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse, before the model is loaded, a --batch-size out of range, a --json/--png file that
    cannot be written or that is an input (the model, the split, a file in a class folder), one
    file named by both, and --png without matplotlib (so a long evaluation
    never ends in an error for them); one line each."""
    low, high = BATCH_SIZES
    if not low <= args.batch_size <= high:
        raise EvalError(f"--batch-size must be a whole number from {low} to {high} (got {args.batch_size})")
    for option in ("json", "png"):
        path = getattr(args, option)
        problem = output_problem(path, option) if path is not None else None
        if problem:
            raise EvalError(f"--{option} {path}: {problem}")
    for option in ("json", "png"):
        path = getattr(args, option)
        if path is not None and os.path.exists(path):
            kept = [what for what, other in (("the model file", args.model), ("the --split file", args.split))
                    if other is not None and os.path.exists(other) and same_file(path, other)]
            if not kept and os.path.isdir(args.data_dir) and in_a_class_folder(path, args.data_dir):
                kept = [f"a file in a class folder of {args.data_dir}"]
            if kept:
                raise EvalError(f"--{option} {path}: is {kept[0]}, which the report would replace; give another path")
    if args.png is not None and args.json is not None and same_file(args.png, args.json):
        raise EvalError(f"--png and --json name the same file ({args.png}); the second would replace the first")
    if args.png is not None and not has_matplotlib():
        raise EvalError(f"--png {args.png}: drawing needs matplotlib, which is not installed; "
                        "`pip install matplotlib`, or leave out --png")


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (an existing file's links included)."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def in_a_class_folder(path: str, data_dir: str) -> bool:
    """Whether ``path`` lies in a sub-folder of ``data_dir`` (where the photos are; links resolved)."""
    relative = os.path.relpath(os.path.realpath(path), os.path.realpath(data_dir))
    return not relative.startswith(os.pardir) and os.sep in relative


def has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def output_problem(path: str, extension: str) -> str | None:
    """Why the file ``path`` cannot be written (a folder, a device or pipe, a missing or read-only
    folder), or None."""
    if os.path.isdir(path):
        return f"is a folder; give the file to write, e.g. {os.path.join(path, 'eval.' + extension)}"
    if os.path.exists(path) and not os.path.isfile(path):  # the atomic rename would put a file in its place
        return "is not a regular file (a device or a pipe); give the file to write"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"the folder {folder} does not exist; create it or give another path"
    try:  # (os.access can say yes on a read-only mount; creating a file cannot)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        return f"cannot write in {folder} ({exc.strerror or exc}); give another path"
    return None


def labelled_files(data_dir: str, split_file: str | None, part: str = "val") -> list[str]:
    """Relative image paths to evaluate: the split's ``part`` list, or every image file of the folder
    (``.jpeg`` and ``.webp`` too, which a split leaves out; the folder may hold one class: a model's
    accuracy on one kind of photo is a fair question)."""
    if not split_file:
        return list_dataset(data_dir, min_classes=1, every_image=True)[1]
    files = getattr(read_split(split_file), part)
    if not files:
        other = "train" if part == "val" else "val"
        raise EvalError(f"{split_file}: its {part} list is empty, so there is nothing to evaluate; give "
                        f"--part {other}, or leave out --split to evaluate every image of {data_dir}")
    missing = [p for p in files if not os.path.isfile(os.path.join(data_dir, p))]
    if missing:
        raise EvalError(f"{len(missing)} file(s) of {split_file} are not in {data_dir}, e.g. {missing[0]}")
    return files


def summarize(labels, logits, class_names: list[str]) -> dict:
    """Accuracy figures from true labels (N,) and logits/scores (N, C).

    Returns top1, top5 (None under 5 classes), per_class {name: {"correct", "total", "accuracy"}},
    confusion (C x C list, rows true, columns predicted) and count.
    """
    labels = np.asarray(labels, dtype=np.int64)
    logits = np.asarray(logits)
    n, c = logits.shape
    if n == 0:  # an accuracy of no predictions would read as 0 %
        raise EvalError("no predictions to summarize")
    if labels.shape != (n,):
        raise EvalError(f"{labels.shape[0]} labels for {n} predictions")
    pred = logits.argmax(axis=1)
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    top5 = None
    if c >= 5:
        # stable sort on -logits: ties resolved towards the lower class index, like argmax
        order = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        top5 = float((order == labels[:, None]).any(axis=1).mean())
    per_class = {}
    for i, name in enumerate(class_names):
        total = int(confusion[i].sum())
        per_class[name] = {"correct": int(confusion[i, i]), "total": total,
                           "accuracy": confusion[i, i] / total if total else None}
    return {"count": int(n), "top1": float((pred == labels).mean()), "top5": top5,
            "per_class": per_class, "confusion": confusion.tolist(), "class_names": list(class_names)}


def format_report(result: dict) -> str:
    names = result["class_names"]
    lines = [f"images: {result['count']}",
             f"top-1 accuracy: {100 * result['top1']:.2f}% "
             f"({sum(v['correct'] for v in result['per_class'].values())}/{result['count']})"]
    if result["top5"] is not None:
        lines.append(f"top-5 accuracy: {100 * result['top5']:.2f}%")
    width = max(len(n) for n in names)
    lines += ["", "per-class accuracy:"]
    for name, v in result["per_class"].items():
        acc = f"{'-':>7}" if v["accuracy"] is None else f"{100 * v['accuracy']:6.2f}%"
        lines.append(f"  {name:<{width}}  {acc}  ({v['correct']}/{v['total']})")
    cell = max(5, min(10, width) + 1, max(len(str(x)) for row in result["confusion"] for x in row) + 1)
    short = [n[:cell - 1] for n in names]
    lines += ["", "confusion matrix (rows: true class, columns: predicted):",
              " " * (width + 2) + "".join(f"{s:>{cell}}" for s in short)]
    for name, row in zip(names, result["confusion"], strict=True):
        lines.append(f"  {name:<{width}}" + "".join(f"{x:>{cell}}" for x in row))
    return "\n".join(lines)


def plot_confusion(result: dict, path: str, title: str = "") -> bool:
    """The confusion matrix as a PNG; False (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    m = np.asarray(result["confusion"])
    names = result["class_names"]
    size = 1.2 + 0.6 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_title(title or f"top-1 {100 * result['top1']:.2f}%")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    try:
        write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return True


# Pixels held at once: a batch ends early where one more photo would pass this many (48 M pixels,
# about 150 MB as RGB bytes, each photo's network input counted as below), so --batch-size 4096 on
# 12-megapixel photos holds 3 of them, not 150 GB.
MAX_BATCH_PIXELS = 48_000_000

# What a photo costs on its way through the network, per pixel of the network's input (crop x crop),
# counted in the unit above (an RGB pixel): its float32 input, the network's activations, the
# corrupted copies. Measured: --corruptions with a 224 px crop on 40 x 40 px photos held 1.75 MB more
# per photo at --batch-size 512 than at 32, 11.6 x 224 x 224 RGB pixels. So small photos count too:
# 512 of them are not 48 M pixels of photos but 300 M of network inputs.
RGB_PIXELS_PER_INPUT_PIXEL = 12


def decoded_batches(data_dir: str, files: list[str], batch_size: int, max_pixels: int | None = None,
                    unreadable: list | None = None, pixels_per_photo: int = 0):
    """Yield (relative paths, their decoded RGB images, seconds spent decoding them, files done) for
    ``files`` in order: ``batch_size`` photos at a time, or fewer where one more would pass
    ``max_pixels`` (default :data:`MAX_BATCH_PIXELS`; each photo counts its own pixels plus
    ``pixels_per_photo``; a batch holds one photo at least). "Files done" counts the files a batch
    stands for, what a progress bar adds: its photos, the unreadable files after it up to the next
    batch, and for the first batch those before it too (so they add up to ``len(files)`` whenever
    a photo could be read). A photo that cannot be read raises its DatasetError, or with
    ``unreadable`` (a list) is appended to it as (path, message) and left out."""
    max_pixels = max_pixels or MAX_BATCH_PIXELS
    chunk, images, pixels, seconds, done = [], [], 0, 0.0, 0
    for path in files:
        t0 = time.perf_counter()
        try:
            image = load_image(os.path.join(data_dir, path))
        except DatasetError as exc:
            if unreadable is None:
                raise
            unreadable.append((path, str(exc)))
            image = None
        took = time.perf_counter() - t0  # before the yield below, which waits while the caller works
        if image is not None:
            # Hand a batch over only when the next readable photo does not fit in it (or at the end),
            # so that the unreadable files since its last photo count in its "files done".
            cost = image.width * image.height + pixels_per_photo
            if chunk and (len(chunk) == batch_size or pixels + cost > max_pixels):
                yield chunk, images, seconds, done
                chunk, images, pixels, seconds, done = [], [], 0, 0.0, 0
            chunk.append(path)
            images.append(image)
            pixels += cost
        done += 1
        seconds += took
    if chunk:
        yield chunk, images, seconds, done


def evaluate_model(model, data_dir: str, files: list[str], batch_size: int = 32, progress=None, *,
                   corruptions: bool = False, tta: str | None = None) -> dict:
    """Run ``model`` (an npshuffle Model) on ``files`` (relative to ``data_dir``); returns :func:`summarize`
    of the photos that could be read, ``"unreadable"`` ([{"path", "error"}] of the others, not counted),
    plus ``"robustness"`` (:func:`robustness_summary`) with ``corruptions``, and ``"tta"`` (the
    :func:`summarize` of the averaged probabilities, with ``views``, ``views_per_photo`` and
    ``ms_per_photo``: decode, plain, tta) with ``tta`` (a :data:`npshuffle.tta.TTA_VIEWS` name)."""
    if not files:
        raise EvalError(f"no images to evaluate in {data_dir}")
    if batch_size < 1:
        raise EvalError(f"batch size must be at least 1 (got {batch_size})")
    names = list(model.class_names)
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({class_of(p) for p in files} - set(index))
    if unknown:
        raise EvalError(f"folders {listed(unknown)} are not classes of the model "
                        f"(its classes: {listed(names)}); evaluate a model trained on these folders")
    labels, unreadable = [], []
    logits, averaged = [], []
    predicted = {(name, s): [] for name in CORRUPTIONS for s in SEVERITIES} if corruptions else {}
    seconds = {"decode": 0.0, "plain": 0.0, "tta": 0.0}
    if tta:  # a backend's one-time setup (Numba loads its kernels on the first call) timed in neither
        model.forward(np.zeros((1, 3, model.recipe["crop"], model.recipe["crop"]), np.float32))
    input_pixels = RGB_PIXELS_PER_INPUT_PIXEL * model.recipe["crop"] ** 2
    for chunk, images, decode_seconds, done in decoded_batches(data_dir, files, batch_size, unreadable=unreadable,
                                                               pixels_per_photo=input_pixels):
        labels.extend(index[class_of(p)] for p in chunk)
        t1 = time.perf_counter()
        batch = preprocess_batch(images, model.recipe)
        logits.append(np.asarray(model.forward(batch), dtype=np.float64))
        t2 = time.perf_counter()
        seconds["decode"] += decode_seconds
        seconds["plain"] += t2 - t1
        if tta:  # timed right after the plain pass on the same photos: the two see the same machine
            averaged.append(tta_probabilities(model, images, tta, batch_size))
            seconds["tta"] += time.perf_counter() - t2
        for (name, severity), out in predicted.items():
            corrupted = [corrupt(image, name, severity, photo_seed(p)) for image, p in zip(images, chunk, strict=True)]
            out.append(np.asarray(model.forward(preprocess_batch(corrupted, model.recipe))).argmax(axis=1))
        if progress:
            progress(done)
    if not labels:
        raise EvalError(f"none of the {len(files)} photos could be read (the first: {unreadable[0][1]})")
    result = summarize(labels, np.concatenate(logits), names)
    result["unreadable"] = [{"path": path, "error": message} for path, message in unreadable]
    if predicted:
        result["robustness"] = robustness_summary(
            labels, {key: np.concatenate(out) for key, out in predicted.items()}, result["top1"])
    if tta:
        result["tta"] = {**summarize(labels, np.concatenate(averaged), names), "views": tta,
                         "views_per_photo": TTA_VIEWS[tta],
                         "ms_per_photo": {k: 1000 * v / len(labels) for k, v in seconds.items()}}
    return result


def robustness_summary(labels, predictions: dict, clean_top1: float) -> dict:
    """The robustness report from true labels (N,) and, per ``(corruption, severity)``, the predicted
    classes (N,). Returns ``clean_top1``, ``corruptions`` ({name: {"parameter", "levels", "correct":
    [sev 1, sev 2], "top1": [sev 1, sev 2], "mean_top1"}}), ``mean_top1`` (the unnormalised mean of
    every corruption-and-severity top-1; see the module docstring), ``relative`` (mean_top1 /
    clean_top1) and ``count``."""
    labels = np.asarray(labels)
    table = {}
    # every severity 1 first (a stable sort keeps the corruptions' order), so each row's lists are sev 1, sev 2
    for (name, _), pred in sorted(predictions.items(), key=lambda item: item[0][1]):
        row = table.setdefault(name, {"parameter": CORRUPTIONS[name].parameter,
                                      "levels": list(CORRUPTIONS[name].levels), "correct": [], "top1": []})
        correct = int((np.asarray(pred) == labels).sum())
        row["correct"].append(correct)
        row["top1"].append(correct / len(labels))
    for row in table.values():
        row["mean_top1"] = float(np.mean(row["top1"]))
    mean = float(np.mean([a for row in table.values() for a in row["top1"]]))
    return {"count": len(labels), "clean_top1": clean_top1, "corruptions": table, "mean_top1": mean,
            "relative": mean / clean_top1 if clean_top1 else None,
            "mean": "unnormalised mean of the top-1 of every corruption at every severity"}


def format_robustness(robustness: dict) -> str:
    """The robustness report as a text table (percent)."""
    table = robustness["corruptions"]
    width = max(len("clean"), *(len(n) for n in table))
    lines = [f"robustness: top-1 on the same {robustness['count']} photos, corrupted before preprocessing",
             f"  {'corruption':<{width}}  {'severity 1':>10}  {'severity 2':>10}  {'mean':>7}  parameter (sev. 1, 2)",
             f"  {'clean':<{width}}  {100 * robustness['clean_top1']:9.2f}%"]
    for name, row in table.items():
        levels = ", ".join(f"{x:g}" for x in row["levels"])
        lines.append(f"  {name:<{width}}  {100 * row['top1'][0]:9.2f}%  {100 * row['top1'][1]:9.2f}%  "
                     f"{100 * row['mean_top1']:6.2f}%  {row['parameter']}: {levels}")
    count = sum(len(row["top1"]) for row in table.values())
    lines.append(f"mean corruption accuracy (unnormalised mean of the {count}): {100 * robustness['mean_top1']:.2f}% "
                 f"(clean {100 * robustness['clean_top1']:.2f}%, relative {robustness['relative']:.3f})")
    return "\n".join(lines)


def format_tta(tta: dict, plain_top1: float) -> str:
    """The TTA lines: accuracy beside the plain one, and the time per photo of each."""
    ms = tta["ms_per_photo"]
    correct = sum(v["correct"] for v in tta["per_class"].values())
    line = (f"test-time augmentation ({tta['views']}, {tta['views_per_photo']} views per photo): "
            f"top-1 {100 * tta['top1']:.2f}% ({correct}/{tta['count']}; plain {100 * plain_top1:.2f}%)")
    if tta["top5"] is not None:
        line += f", top-5 {100 * tta['top5']:.2f}%"
    ratio = ms["tta"] / ms["plain"] if ms["plain"] else float("nan")
    whole = (ms["decode"] + ms["tta"]) / (ms["decode"] + ms["plain"]) if ms["decode"] + ms["plain"] else float("nan")
    return "\n".join([line, f"time per photo: plain {ms['plain']:.2f} ms, TTA {ms['tta']:.2f} ms ({ratio:.2f}x) "
                            f"(preprocessing + network); decoding {ms['decode']:.2f} ms more for either "
                            f"({whole:.2f}x with it)"])


def run_eval(args: argparse.Namespace) -> int:
    """Entry point of ``npshuffle eval``; returns the process exit status."""
    try:
        check_arguments(args)
        model = load_model(args.model, backend=args.backend)
        files = labelled_files(args.data_dir, args.split, args.part)
        start = time.monotonic()
        progress = Progress(len(files), "evaluating", log=False)
        try:
            result = evaluate_model(model, args.data_dir, files, args.batch_size, progress.update,
                                    corruptions=args.corruptions, tta=args.tta)
        finally:
            progress.close()
        seconds = time.monotonic() - start
    except (EvalError, DatasetError, BackendError, ValueError, OSError) as exc:
        print(f"npshuffle eval: error: {exc}", file=sys.stderr)
        return 2
    header = f"model: {args.model}"
    stored = getattr(model, "metadata", {}).get("val_accuracy")
    if stored is not None:
        header += f" (val accuracy stored at training: {100 * stored:.2f}%)"
    print(header)
    print(format_report(result))
    if "tta" in result:
        print("\n" + format_tta(result["tta"], result["top1"]))
    if "robustness" in result:
        print("\n" + format_robustness(result["robustness"]))
    print(f"\n{result['count']} images in {seconds:.1f} s ({args.backend} backend)")
    for row in result["unreadable"]:
        print(f"npshuffle eval: skipped: {row['error']}", file=sys.stderr)
    if result["unreadable"]:
        print(f"npshuffle eval: {len(result['unreadable'])} photo(s) could not be read and are not counted in "
              f"the figures above ({result['count']} are); fix or remove them", file=sys.stderr)
    try:
        write_outputs(args, result, seconds)
    except EvalError as exc:
        print(f"npshuffle eval: error: {exc}", file=sys.stderr)
        return 2
    return 0


def write_outputs(args: argparse.Namespace, result: dict, seconds: float) -> None:
    """The --png confusion matrix and the --json results, each written atomically. Both files were
    checked before the evaluation, so an OSError here is a change since (a full disk, a removed
    folder): an EvalError naming the file."""
    if args.png:
        title = f"{os.path.basename(str(args.model))}: top-1 {100 * result['top1']:.2f}%"
        try:
            drawn = plot_confusion(result, args.png, title)
        except OSError as exc:
            raise EvalError(f"--png {args.png}: cannot write it ({exc.strerror or exc})") from None
        if drawn:
            print(f"confusion matrix drawn in {args.png}")
        else:
            print("matplotlib is not installed: no PNG written", file=sys.stderr)
    if args.json:
        text = json.dumps({**result, "model": str(args.model), "seconds": seconds}, indent=1)
        try:
            write_atomically(args.json, lambda f: f.write(text.encode("utf-8")))
        except OSError as exc:
            raise EvalError(f"--json {args.json}: cannot write it ({exc.strerror or exc})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m npshuffle.training.evaluate",
                                     description=__doc__.split("\n")[0])
    return run_eval(add_eval_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
