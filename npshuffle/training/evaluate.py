"""``npshuffle eval DATA_DIR --model M [--split FILE]``: accuracy of a model file on labelled images.

Runs the npshuffle engine (no torch): each image is preprocessed with the model's own recipe
(:func:`npshuffle.preprocess.preprocess_batch`) and classified by :class:`npshuffle.model.Model`.
The label of an image is its folder name, matched to the model's class names; reported are top-1
and top-5 accuracy (top-5 when the model has at least 5 classes), per-class accuracy and the
confusion matrix (rows: true class, columns: predicted class), as text and optionally as a PNG.

Images: the ``val`` list of a ``split.json`` written by ``npshuffle train`` (``--split``), else
every image of DATA_DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from ..backends import BackendError
from ..predict import load_model
from ..preprocess import preprocess_batch
from ..progress import Progress
from .datasets import DatasetError, class_of, list_dataset, load_image, read_split


class EvalError(ValueError):
    """An evaluation that cannot run (classes do not match, no images, ...)."""


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("data_dir", metavar="DATA_DIR", help="class-per-folder images (folder name = true class)")
    parser.add_argument("--model", "-m", required=True, help="model file (.npz) or bundled model name")
    parser.add_argument("--split", default=None, metavar="FILE",
                        help="split.json from `npshuffle train`: evaluate its val list (default: every image)")
    parser.add_argument("--part", choices=("val", "train"), default="val", help="which list of --split")
    parser.add_argument("--backend", default="numpy", help="npshuffle backend (numpy, numba, ...)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--png", default=None, metavar="FILE", help="also draw the confusion matrix (matplotlib)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    return parser


def labelled_files(data_dir: str, split_file: str | None, part: str = "val") -> list[str]:
    """Relative image paths to evaluate: the split's ``part`` list, or every image of the folder."""
    if split_file:
        files = getattr(read_split(split_file), part)
        missing = [p for p in files if not os.path.isfile(os.path.join(data_dir, p))]
        if missing:
            raise EvalError(f"{len(missing)} file(s) of {split_file} are not in {data_dir}, e.g. {missing[0]}")
    else:
        _, files = list_dataset(data_dir)
    if not files:
        raise EvalError("no images to evaluate")
    return files


def summarize(labels, logits, class_names: list[str]) -> dict:
    """Accuracy figures from true labels (N,) and logits/scores (N, C).

    Returns top1, top5 (None under 5 classes), per_class {name: {"correct", "total", "accuracy"}},
    confusion (C x C list, rows true, columns predicted) and count.
    """
    labels = np.asarray(labels, dtype=np.int64)
    logits = np.asarray(logits)
    n, c = logits.shape
    if labels.shape != (n,):
        raise EvalError(f"{labels.shape[0]} labels for {n} predictions")
    pred = logits.argmax(axis=1)
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    top5 = None
    if c >= 5:
        # stable sort on -logits: ties resolved towards the lower class index, like argmax
        order = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        top5 = float((order == labels[:, None]).any(axis=1).mean()) if n else 0.0
    per_class = {}
    for i, name in enumerate(class_names):
        total = int(confusion[i].sum())
        per_class[name] = {"correct": int(confusion[i, i]), "total": total,
                           "accuracy": confusion[i, i] / total if total else None}
    return {"count": int(n), "top1": float((pred == labels).mean()) if n else 0.0, "top5": top5,
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def evaluate_model(model, data_dir: str, files: list[str], batch_size: int = 32, progress=None) -> dict:
    """Run ``model`` (an npshuffle Model) on ``files`` (relative to ``data_dir``); returns :func:`summarize`."""
    names = list(model.class_names)
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({class_of(p) for p in files} - set(index))
    if unknown:
        raise EvalError(f"folders {unknown} are not classes of the model (its classes: {', '.join(names)})")
    labels = [index[class_of(p)] for p in files]
    logits = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        batch = preprocess_batch([load_image(os.path.join(data_dir, p)) for p in chunk], model.recipe)
        logits.append(np.asarray(model.forward(batch), dtype=np.float64))
        if progress:
            progress(len(chunk))
    return summarize(labels, np.concatenate(logits), names)


def run_eval(args: argparse.Namespace) -> int:
    """Entry point of ``npshuffle eval``; returns the process exit status."""
    try:
        model = load_model(args.model, backend=args.backend)
        files = labelled_files(args.data_dir, args.split, args.part)
        start = time.monotonic()
        progress = Progress(len(files), "evaluating", log=False)
        try:
            result = evaluate_model(model, args.data_dir, files, args.batch_size, progress.update)
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
    print(f"\n{result['count']} images in {seconds:.1f} s ({args.backend} backend)")
    if args.png:
        if plot_confusion(result, args.png, f"{os.path.basename(str(args.model))}: top-1 {100 * result['top1']:.2f}%"):
            print(f"confusion matrix drawn in {args.png}")
        else:
            print("matplotlib is not installed: no PNG written", file=sys.stderr)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({**result, "model": str(args.model), "seconds": seconds}, f, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m npshuffle.training.evaluate",
                                     description=__doc__.split("\n")[0])
    return run_eval(add_eval_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
