"""``npshuffle train DATA_DIR``: fine-tune or train a ShuffleNet on a class-per-folder data set (torch, CPU).

The default recipe is the seed project's (WZMIAOMIAO ``Test7_shufflenet/train.py``): the seed-style
split (see :mod:`npshuffle.datasets`), RandomResizedCrop + horizontal flip for training,
Resize(256) + CenterCrop(224) for validation, SGD (momentum 0.9, weight decay 4e-5), a cosine
learning-rate schedule from ``lr`` down to ``lr * lrf`` stepped once per epoch, 30 epochs of batch
16, and the best-validation-accuracy weights kept. At the end the best weights become an npshuffle
model file (``model.npz``) with the class names and the validation accuracy in its metadata.

Output folder (``--out``)::

    split.json, class_indices.json   the split (files per part) and the class names
    metrics.jsonl                    one line per epoch: loss, accuracy, lr, time
    last.pth                         everything needed to --resume (also written on Ctrl-C)
    best.pth                         the best epoch's state_dict (torchvision/Megvii keys)
    model.npz                        best.pth converted by weights_convert
    curves.png                       loss/accuracy curves, when matplotlib is installed

Input recipes differ per dialect (Megvii: BGR 0..255; torchvision: RGB normalised), so the data
pipeline yields uint8 RGB crops and each network (student, and teacher when distilling) normalises
the same crop its own way.

This module and :mod:`npshuffle.torch_ref` are the only ones that import torch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shlex
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .archs import V1_CHANNELS, V2_CHANNELS, WIDTHS, ArchError, V1Spec, V2Spec, check_spec, v1_spec, v2_spec
from .datasets import DatasetError, Split, load_image, read_split, seed_split, write_split
from .model_file import DEFAULT_RECIPES
from .preprocess import center_crop, resize_shorter_side
from .torch_ref import build_torch_model

SEED_DEFAULTS = dict(epochs=30, batch_size=16, lr=0.1, lrf=0.1, momentum=0.9, weight_decay=4e-5)
CLASSIFIER_PREFIXES = ("fc.", "classifier.")


class TrainError(RuntimeError):
    """A training set-up that cannot work; the message says why."""


# --------------------------------------------------------------------------------------------------
# architecture names


def parse_arch(name: str, num_classes: int) -> V1Spec | V2Spec:
    """A spec from a zoo name or a custom description.

    * ``shufflenet_v2_x1_0``, ``shufflenet_v2_x0_5``, ... (V2 widths 0.5/1.0/1.5/2.0)
    * ``shufflenet_v1_g3_x0_5``, ``shufflenet_v1_g8_x1_0``, ... (V1 groups 1/2/3/4/8)
    * ``v2:stem=4,stages=8-16,repeats=1-1,head=16`` and ``v1:groups=2,stem=4,stages=16-32,repeats=1-1``
      (tiny custom networks, for tests)
    """
    m = re.fullmatch(r"shufflenet_v2_x(\d)_(\d)", name)
    if m:
        return v2_spec(f"{m[1]}.{m[2]}x", num_classes)
    m = re.fullmatch(r"shufflenet_v1_g(\d)_x(\d)_(\d)", name)
    if m:
        return v1_spec(int(m[1]), f"{m[2]}.{m[3]}x", num_classes)
    m = re.fullmatch(r"(v[12]):(.*)", name)
    if m:
        try:
            fields = dict(item.split("=", 1) for item in m[2].split(","))
            stages = tuple(int(v) for v in fields.pop("stages").split("-"))
            repeats = tuple(int(v) for v in fields.pop("repeats").split("-"))
            stem = int(fields.pop("stem"))
            if m[1] == "v2":
                spec = V2Spec(stem, stages, int(fields.pop("head")), repeats, num_classes)
            else:
                spec = V1Spec(int(fields.pop("groups")), stem, stages, repeats, num_classes)
            if fields:
                raise ValueError(f"unknown fields {sorted(fields)}")
            check_spec(spec)
            return spec
        except (KeyError, ValueError) as exc:
            raise TrainError(f"bad custom architecture {name!r}: {exc}") from None
    names = [f"shufflenet_v2_x{w[:-1].replace('.', '_')}" for w in V2_CHANNELS]
    names += [f"shufflenet_v1_g{g}_x{w[:-1].replace('.', '_')}" for g, w in V1_CHANNELS if w in WIDTHS]
    raise TrainError(f"unknown architecture {name!r}: use one of {', '.join(names)}")


# --------------------------------------------------------------------------------------------------
# checkpoints


def _unwrap_state_dict(obj: object, path: str) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in ("state_dict", "model", "model_state_dict", "net")
                          if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TrainError(f"{path}: no state_dict of tensors found in the checkpoint")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """A .pth/.pth.tar checkpoint's state_dict (``weights_only`` loading: runs no pickled code)."""
    if path.endswith(".npz"):
        raise TrainError(
            f"{path}: an npshuffle model file holds BN-folded weights, which cannot be trained further; "
            "pass the .pth checkpoint it was converted from (a training run's best.pth)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise TrainError(f"{path}: cannot load the checkpoint ({exc})") from None
    return _unwrap_state_dict(obj, path)


def infer_arch(state_dict: dict[str, torch.Tensor], path: str) -> tuple[V1Spec | V2Spec, str]:
    """(spec, dialect) of a torchvision/Megvii state_dict, via the converter's shape inference."""
    from weights_convert.convert import detect
    from weights_convert.keymap import ConversionError

    arrays = {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
    try:
        module, version = detect(arrays)
        spec = module.infer_spec(arrays, version)
        check_spec(spec)
    except (ConversionError, ArchError) as exc:
        raise TrainError(f"{path}: {exc}") from None
    return spec, module.DIALECT


def init_from_checkpoint(model: nn.Module, state_dict: dict[str, torch.Tensor], path: str) -> list[str]:
    """Load ``state_dict`` strictly except the classifier, which is dropped (and stays freshly
    initialised) when its class count differs. Returns the keys dropped."""
    own = model.state_dict()
    dropped = [k for k in state_dict if k.startswith(CLASSIFIER_PREFIXES) and k in own
               and state_dict[k].shape != own[k].shape]
    sd = {k: v for k, v in state_dict.items() if k not in dropped}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k not in dropped]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    if problems:
        raise TrainError(f"{path} does not fit the chosen architecture/dialect: " + "; ".join(problems))
    return dropped


def atomic_save(obj: object, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# data


def random_resized_crop_params(width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision ``RandomResizedCrop.get_params`` (same algorithm and torch RNG calls): (top, left, h, w)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,)).item()
            j = torch.randint(0, width - w + 1, size=(1,)).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)  # fallback: central crop
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class FolderDataset(torch.utils.data.Dataset):
    """Images of a split part -> (uint8 HWC RGB crop, label). ``train``: RandomResizedCrop(size) +
    horizontal flip; else Resize(resize) + CenterCrop(size). ``cache`` keeps decoded images in memory
    (decoded once in the main process, shared copy-on-write with forked loader workers)."""

    def __init__(self, root: str, files: list[str], labels: list[int], size: int, train: bool,
                 resize: int = 256, cache: bool = True, min_scale: float = 0.08):
        self.root, self.files, self.labels = root, files, labels
        self.scale = (min_scale, 1.0)
        self.size, self.train, self.resize = size, train, resize
        self.images = [self._open(i) for i in range(len(files))] if cache else None

    def _open(self, index: int) -> Image.Image:
        return load_image(os.path.join(self.root, self.files[index]))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        image = self.images[index] if self.images is not None else self._open(index)
        if self.train:
            top, left, h, w = random_resized_crop_params(*image.size, scale=self.scale)
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR,
                                 box=(left, top, left + w, top + h))
            if torch.rand(1).item() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            image = center_crop(resize_shorter_side(image, self.resize), self.size)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()), self.labels[index]


class Normalize(nn.Module):
    """uint8 NHWC RGB batch -> float NCHW input of one recipe (channel order, scale, mean, std)."""

    def __init__(self, recipe: dict, channels_last: bool):
        super().__init__()
        order = [2, 1, 0] if recipe["channel_order"] == "BGR" else [0, 1, 2]
        self.order = order
        scale = torch.tensor(recipe["scale"], dtype=torch.float32)
        self.register_buffer("mul", (scale / torch.tensor(recipe["std"])).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("sub", (torch.tensor(recipe["mean"]) / torch.tensor(recipe["std"])).view(1, 3, 1, 1),
                             persistent=False)
        self.channels_last = channels_last

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch[..., self.order].permute(0, 3, 1, 2).float() * self.mul - self.sub
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


# --------------------------------------------------------------------------------------------------
# progress and logs


class Progress:
    """A minimal progress bar on stderr: redrawn in place on a terminal, a few lines in a log file."""

    def __init__(self, total: int, label: str, stream=None):
        self.total, self.label, self.stream = total, label, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = self.last = time.monotonic()
        self.done = 0
        self.next_log = 0.25

    def update(self, n: int, **stats: str) -> None:
        self.done += n
        now = time.monotonic()
        finished = self.done >= self.total
        if self.tty:
            if now - self.last < 0.2 and not finished:
                return
        elif self.done / self.total < self.next_log and not finished:
            return
        else:
            self.next_log = math.floor(self.done / self.total * 4 + 1) / 4
        self.last = now
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        filled = int(24 * self.done / self.total)
        bar = "#" * filled + "." * (24 - filled)
        extra = " ".join(f"{k} {v}" for k, v in stats.items())
        text = (f"{self.label} [{bar}] {self.done}/{self.total} {extra} {rate:.0f} img/s "
                f"{_clock(elapsed)}<{_clock(eta)}")
        if self.tty:
            self.stream.write("\r" + text + ("\n" if finished else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(metrics: list[dict], path: str) -> bool:
    """Loss and accuracy per epoch as a PNG; False (and nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [m["epoch"] for m in metrics]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [m["train_loss"] for m in metrics], label="train")
    ax1.plot(epochs, [m["val_loss"] for m in metrics], label="val")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(epochs, [100 * m["train_acc"] for m in metrics], label="train")
    ax2.plot(epochs, [100 * m["val_acc"] for m in metrics], label="val")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("top-1 accuracy (%)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------------
# arguments

# Options that --resume takes from the command line when given (everything else from the checkpoint).
RESUME_OVERRIDABLE = ("epochs", "workers", "threads")


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``npshuffle train`` options (defaults: the seed's recipe)."""
    d = SEED_DEFAULTS
    parser.add_argument("data_dir", metavar="DATA_DIR", help="class-per-folder images (e.g. flower_photos)")
    parser.add_argument("--out", default=None, help="output folder (default runs/<arch>)")
    parser.add_argument("--arch", default=None,
                        help="shufflenet_v2_x1_0 (default without --init), shufflenet_v1_g3_x0_5, ...; "
                             "default with --init: the checkpoint's architecture")
    parser.add_argument("--dialect", choices=("torchvision", "megvii"), default=None,
                        help="graph/key dialect (default: the --init checkpoint's, else megvii for V1, "
                             "torchvision for V2)")
    parser.add_argument("--init", default=None, metavar="CKPT",
                        help="start from this .pth checkpoint (Megvii or torchvision keys); a classifier "
                             "with another class count is re-initialised")
    parser.add_argument("--freeze", action="store_true", help="train only the classifier")
    parser.add_argument("--epochs", type=int, default=None, help=f"(default {d['epochs']})")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"])
    parser.add_argument("--lr", type=float, default=d["lr"], help="initial learning rate")
    parser.add_argument("--lrf", type=float, default=d["lrf"], help="final lr as a fraction of --lr (cosine)")
    parser.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--img-size", type=int, default=224, help="training crop size (RandomResizedCrop)")
    parser.add_argument("--min-scale", type=float, default=0.08, help="RandomResizedCrop's smallest area fraction")
    parser.add_argument("--val-resize", type=int, default=256, help="validation Resize (shorter side)")
    parser.add_argument("--val-crop", type=int, default=224, help="validation CenterCrop")
    parser.add_argument("--val-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0, help="split seed (the seed project's 0) and training seed")
    parser.add_argument("--workers", type=int, default=None, help="data loader processes (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch compute threads (default 2)")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="decode images from disk every epoch instead of once into memory")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="NCHW instead of channels-last tensors (channels-last is faster on CPU here)")
    parser.add_argument("--teacher", default=None, metavar="CKPT",
                        help="distil from this trained checkpoint (e.g. runs/flowers/best.pth)")
    parser.add_argument("--kd-alpha", type=float, default=0.7, help="weight of the distillation loss")
    parser.add_argument("--kd-temperature", type=float, default=4.0)
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="LAST_PTH",
                        help="continue an interrupted run (default: OUT/last.pth); --epochs may extend it")
    parser.add_argument("--max-images", type=int, default=None, help=argparse.SUPPRESS)  # tests: subsample
    return parser


# --------------------------------------------------------------------------------------------------
# training


def _resolve_config(args: argparse.Namespace) -> dict:
    config = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    config["epochs"] = config["epochs"] if config["epochs"] is not None else SEED_DEFAULTS["epochs"]
    config["workers"] = config["workers"] if config["workers"] is not None else 1
    config["threads"] = config["threads"] if config["threads"] is not None else 2
    return config


def _build_student(config: dict, num_classes: int, log) -> tuple[nn.Module, V1Spec | V2Spec, str]:
    init_sd = None
    if config["init"]:
        init_sd = load_state_dict_file(config["init"])
        init_spec, init_dialect = infer_arch(init_sd, config["init"])
    if config["arch"]:
        spec = parse_arch(config["arch"], num_classes)
    elif init_sd is not None:
        spec = type(init_spec)(**{**init_spec.__dict__, "num_classes": num_classes})
    else:
        spec = parse_arch("shufflenet_v2_x1_0", num_classes)
    default_dialect = "megvii" if spec.version == 1 else "torchvision"
    dialect = config["dialect"] or (init_dialect if init_sd is not None else default_dialect)
    torch.manual_seed(config["seed"])
    model = build_torch_model(spec, dialect)
    if init_sd is not None:
        dropped = init_from_checkpoint(model, init_sd, config["init"])
        log(f"initialised from {config['init']}" + (f" (re-initialised {', '.join(dropped)})" if dropped else ""))
    return model, spec, dialect


def _build_teacher(path: str, channels_last: bool, log):
    sd = load_state_dict_file(path)
    spec, dialect = infer_arch(sd, path)
    teacher = build_torch_model(spec, dialect)
    teacher.load_state_dict(sd, strict=True)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    log(f"teacher: {path} ({f'V1 g{spec.groups}' if spec.version == 1 else 'V2'}, {dialect} dialect)")
    return teacher, Normalize(DEFAULT_RECIPES[dialect], channels_last), spec


def _rng_state() -> dict:
    """Every RNG's state, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def evaluate_torch(model: nn.Module, normalize: Normalize, loader) -> tuple[float, float, int]:
    """(mean loss, top-1 accuracy, count) of ``model`` on ``loader``."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in loader:
            logits = model(normalize(images))
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
            count += len(labels)
    return loss_sum / max(count, 1), correct / max(count, 1), count


def run_train(args: argparse.Namespace) -> int:
    """Entry point of ``npshuffle train``; returns the process exit status."""
    try:
        return _train(args)
    except (TrainError, DatasetError, ArchError) as exc:
        print(f"npshuffle train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the first epoch began: nothing to save
        print("\nnpshuffle train: interrupted before training started", file=sys.stderr)
        return 130


def _train(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    config = _resolve_config(args)
    out = config["out"] or os.path.join("runs", config["arch"] or "train")
    resume_state = None
    if config["resume"]:
        resume_path = os.path.join(out, "last.pth") if config["resume"] == "auto" else config["resume"]
        if not os.path.exists(resume_path):
            raise TrainError(f"{resume_path}: nothing to resume (no such file)")
        try:
            resume_state = torch.load(resume_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
            raise TrainError(f"{resume_path}: cannot load the resume checkpoint ({exc})") from None
        stored = resume_state["config"]
        for key in RESUME_OVERRIDABLE:
            if getattr(args, key, None) is not None:
                stored[key] = getattr(args, key)
        stored["resume"] = config["resume"]
        stored["resumed_with"] = [*stored.get("resumed_with", []), args_command_line(args)]
        config = stored
        out = config["out"] or os.path.dirname(resume_path)
        config["out"] = out
    config["out"] = out
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(config["threads"])

    split = seed_split(config["data_dir"], config["val_rate"], config["seed"])
    if config.get("max_images"):
        k = config["max_images"]
        train = split.train[:: max(1, len(split.train) // k)][:k]  # evenly over the classes
        val = split.val[:: max(1, 4 * len(split.val) // k)][: max(1, k // 4)]
        split = Split(split.classes, train, val, split.seed, split.val_rate)
    if resume_state is not None and os.path.exists(os.path.join(out, "split.json")):
        old = read_split(os.path.join(out, "split.json"))
        if (old.train, old.val, old.classes) != (split.train, split.val, split.classes):
            raise TrainError(f"{out}/split.json differs from the split of {config['data_dir']} now: data changed?")
    split_path, classes_path = write_split(split, out)
    log(f"data: {len(split.classes)} classes, {len(split.train)} train / {len(split.val)} val images "
        f"(split written to {split_path})")

    model, spec, dialect = _build_student(config, len(split.classes), log)
    config["dialect"] = dialect
    from .archs import variant_name

    log(f"model: {variant_name(spec)} ({dialect} dialect), {sum(p.numel() for p in model.parameters()):,} parameters")
    channels_last = config["channels_last"]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    recipe = DEFAULT_RECIPES[dialect]
    normalize = Normalize(recipe, channels_last)

    if config["freeze"]:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(CLASSIFIER_PREFIXES))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config["lr"], momentum=SEED_DEFAULTS["momentum"],
                                weight_decay=config["weight_decay"])
    epochs, lrf = config["epochs"], config["lrf"]

    def lf(x):  # the seed's cosine schedule
        return ((1 + math.cos(x * math.pi / epochs)) / 2) * (1 - lrf) + lrf

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)

    teacher = teacher_norm = None
    if config["teacher"]:
        teacher, teacher_norm, _ = _build_teacher(config["teacher"], channels_last, log)

    start_epoch, best_acc, best_epoch, elapsed = 0, -1.0, -1, 0.0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        start_epoch = resume_state["epoch"]
        best_acc, best_epoch = resume_state["best_acc"], resume_state["best_epoch"]
        elapsed = resume_state.get("elapsed", 0.0)
        _set_rng_state(resume_state["rng"])
        log(f"resumed from epoch {start_epoch} (best val acc so far {100 * best_acc:.2f}% at epoch {best_epoch})")
    else:
        torch.manual_seed(config["seed"])
        np.random.seed(config["seed"])
        random.seed(config["seed"])
        if os.path.exists(os.path.join(out, "metrics.jsonl")):
            os.remove(os.path.join(out, "metrics.jsonl"))

    t_load = time.monotonic()
    train_set = FolderDataset(config["data_dir"], split.train, split.labels("train"), config["img_size"], True,
                              cache=config["cache"], min_scale=config["min_scale"])
    val_set = FolderDataset(config["data_dir"], split.val, split.labels("val"), config["val_crop"], False,
                            resize=config["val_resize"], cache=config["cache"])
    log(f"data loaded in {time.monotonic() - t_load:.1f} s")
    workers = config["workers"]
    loader_args = dict(num_workers=workers, persistent_workers=workers > 0)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=config["batch_size"], shuffle=True,
                                               drop_last=len(train_set) > config["batch_size"], **loader_args)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=64, shuffle=False, **loader_args)
    metrics_path = os.path.join(out, "metrics.jsonl")
    last_path, best_path = os.path.join(out, "last.pth"), os.path.join(out, "best.pth")

    def save_last(epoch_done: int) -> None:
        atomic_save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch_done, "best_acc": best_acc, "best_epoch": best_epoch, "elapsed": elapsed,
            "rng": _rng_state(), "config": config,
        }, last_path)

    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, epochs):
            t0 = time.monotonic()
            model.train()
            if config["freeze"]:  # frozen backbone: keep its BN statistics too
                for module in model.modules():
                    if isinstance(module, nn.BatchNorm2d):
                        module.eval()
            lr = optimizer.param_groups[0]["lr"]
            bar = Progress(len(train_loader.dataset) if not train_loader.drop_last
                           else len(train_loader) * config["batch_size"], f"epoch {epoch + 1}/{epochs}")
            loss_sum, correct, count = 0.0, 0, 0
            for images, labels in train_loader:
                logits = model(normalize(images))
                loss = F.cross_entropy(logits, labels, label_smoothing=config["label_smoothing"])
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(teacher_norm(images))
                    loss = (1 - config["kd_alpha"]) * loss + config["kd_alpha"] * kd_loss(
                        logits, t_logits, config["kd_temperature"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                n = len(labels)
                loss_sum += loss.item() * n
                correct += (logits.argmax(1) == labels).sum().item()
                count += n
                bar.update(n, loss=f"{loss_sum / count:.3f}", acc=f"{100 * correct / count:.1f}%")
            scheduler.step()
            val_loss, val_acc, _ = evaluate_torch(model, normalize, val_loader)
            epoch_time = time.monotonic() - t0
            elapsed += epoch_time
            row = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1), "train_acc": correct / max(count, 1),
                   "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "epoch_time_s": round(epoch_time, 2),
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            if val_acc > best_acc:
                best_acc, best_epoch = val_acc, epoch + 1
                atomic_save(model.state_dict(), best_path)
            save_last(epoch + 1)
            log(f"epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}% | "
                f"val loss {val_loss:.4f} acc {100 * val_acc:.2f}% | lr {lr:.5f} | {epoch_time:.0f} s"
                + (" (best)" if best_epoch == epoch + 1 else ""))
            plot_curves(read_metrics(metrics_path), os.path.join(out, "curves.png"))
    except KeyboardInterrupt:
        save_last(epoch)
        cmd = f"npshuffle train {shlex.quote(config['data_dir'])} --out {shlex.quote(out)} --resume"
        log(f"\ninterrupted during epoch {epoch + 1}: saved {last_path}; resume with:\n  {cmd}")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_handler)

    from weights_convert.convert import convert_file

    model_path = os.path.join(out, "model.npz")
    trained = {
        "command": config.get("command_line") or _command_line(), "resumed_with": config.get("resumed_with", []),
        "epochs": epochs, "best_epoch": best_epoch,
        "train_time_s": round(elapsed, 1), "data": os.path.basename(os.path.normpath(config["data_dir"])),
        "split": {"seed": config["seed"], "val_rate": config["val_rate"], "train": len(split.train),
                  "val": len(split.val)},
        "init": os.path.basename(config["init"]) if config["init"] else None,
        "teacher": config["teacher"], "img_size": config["img_size"],
    }
    convert_file(best_path, model_path, classes=classes_path, resize=config["val_resize"], crop=config["val_crop"],
                 extra={"val_accuracy": round(best_acc, 6), "trained": trained})
    log(f"best val acc {100 * best_acc:.2f}% (epoch {best_epoch}); training time {elapsed / 60:.1f} min; "
        f"model file: {model_path}")
    return 0


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s distillation loss: T^2 * KL(softmax(t / T) || softmax(s / T))."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def args_command_line(args: argparse.Namespace) -> str:
    return getattr(args, "command_line", None) or _command_line()


def _command_line() -> str:
    words = sys.argv[1:]
    if os.path.basename(sys.argv[0]) == "npshuffle" and words[:1] == ["train"]:
        words = words[1:]
    return " ".join(shlex.quote(a) for a in ["npshuffle", "train", *words])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m npshuffle.train", description=__doc__.split("\n")[0])
    args = add_train_arguments(parser).parse_args(argv)
    words = sys.argv[1:] if argv is None else argv
    args.command_line = " ".join(shlex.quote(a) for a in ["npshuffle", "train", *words])
    return run_train(args)


if __name__ == "__main__":
    sys.exit(main())
