"""A training run (torch): its networks, optimiser and data loaders, and its epochs.

Every epoch trains on each batch (blended with a shuffled copy of itself first with ``--mix``: see
``mixing.py``; cross-entropy, with label smoothing when asked, mixed with Hinton's distillation loss
when teachers are given: one, or an ensemble), steps the cosine schedule once, validates,
appends a line to ``metrics.jsonl``, keeps the best weights (``best.pth``), saves what ``--resume``
needs (``last.pth``, also on Ctrl-C and SIGTERM) and redraws ``curves.png``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..archs import V1Spec, V2Spec, spec_from_dict, spec_to_dict, variant_name
from ..atomic import write_atomically
from ..model_file import DEFAULT_RECIPES
from ..progress import Progress
from .arguments import SEED_DEFAULTS, TrainError, describe_recipe, parse_arch
from .checkpoints import (
    CLASSIFIER_PREFIXES,
    atomic_save,
    infer_arch,
    init_from_checkpoint,
    load_state_dict_file,
    restore_resume_state,
    save_resume_state,
)
from .datasets import DatasetError, Split, read_headers
from .messages import listed
from .mixing import MixedBatch, mix_batch, mixed_correct, mixed_cross_entropy
from .pipeline import FolderDataset, Normalize, collate_photos
from .torch_ref import build_torch_model


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Run:
    """A run being trained: its configuration, networks, optimiser and data, and where it stands."""

    config: dict
    model: nn.Module
    normalize: Normalize
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    teachers: list[tuple[nn.Module, Normalize]] = field(default_factory=list)  # (network, its input normalisation)
    train_loader: torch.utils.data.DataLoader | None = None
    val_loader: torch.utils.data.DataLoader | None = None
    epoch: int = 0  # epochs completed when the current one began (before the loop: the first to run)
    best_acc: float = -1.0
    best_epoch: int = -1
    elapsed: float = 0.0  # seconds spent in epochs, over every session of the run
    skipped: set[str] = field(default_factory=set)  # paths of the photos that failed to decode

    def note_skipped(self, skipped: list[tuple[str, str]]) -> None:
        """Say, once per photo in this session (again after a --resume), that a photo which failed to
        decode (``skipped``: (path, reason) from :class:`PhotoBatch`) is left out and the run goes
        on: a photo damaged after the header scan costs itself, not the run."""
        for path, reason in skipped:
            if path not in self.skipped:
                self.skipped.add(path)
                log(f"note: skipped {reason}; training goes on without it (fix it to have it back)")

    def path(self, name: str) -> str:
        return os.path.join(self.config["out"], name)


# --------------------------------------------------------------------------------------------------
# setting a run up


def setup_run(config: dict, split: Split, resume_state: dict | None) -> Run:
    """The student (from --init or fresh), its optimiser and schedule, the teacher if any, then
    either the --resume state or fresh seeds, then the data loaders (in that order: the RNGs)."""
    model, spec, dialect = build_student(config, len(split.classes))
    config["dialect"] = dialect
    config["spec"] = spec_to_dict(spec)  # a --resume rebuilds the network from this, not from --init
    log(f"model: {variant_name(spec)} ({dialect} dialect), {sum(p.numel() for p in model.parameters()):,} parameters")
    log(describe_recipe(config))
    if config.get("mix", "none") != "none":
        log(f"mix: {config['mix']}, blend weight from Beta({config['mix_alpha']}, {config['mix_alpha']})")
    channels_last = config["channels_last"]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    normalize = Normalize(DEFAULT_RECIPES[dialect], channels_last)
    run = Run(config, model, normalize, *make_optimizer(model, config))
    for path in [input_file(config, p) for p in teacher_paths(config)]:
        if path.endswith(ENGINE_TEACHER_SUFFIXES):
            teacher, teacher_norm = build_engine_teacher(path, split.classes, config["threads"])
        else:
            teacher, teacher_norm, _ = build_teacher(path, channels_last, len(split.classes))
        run.teachers.append((teacher, teacher_norm))
    if resume_state is not None:
        try:
            restore_resume_state(run, resume_state)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise TrainError(f"{config['resume']}: its saved state does not fit this run's network and data "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        drop_metrics_after(run.path("metrics.jsonl"), run.epoch)
        log(f"resumed from epoch {run.epoch} (best val acc so far {100 * run.best_acc:.2f}% "
            f"at epoch {run.best_epoch})")
    else:
        seed = training_seed(config)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        if os.path.exists(run.path("metrics.jsonl")):
            os.remove(run.path("metrics.jsonl"))
    run.train_loader, run.val_loader = make_loaders(config, split)
    return run


def training_seed(config: dict) -> int:
    """The seed of the run's random numbers: --train-seed, else the split's --seed (as the seed
    project did, and as runs saved before --train-seed existed did)."""
    return config["train_seed"] if config.get("train_seed") is not None else config["seed"]


def input_file(config: dict, path: str) -> str:
    """A file the run's command line named (--init, --teacher), found from the folder the run began
    in (``started_in``), so that a --resume typed in another folder opens the same file; where that
    folder has moved (a project renamed or copied), from the current folder as given."""
    found = os.path.join(config.get("started_in", ""), path)
    return found if os.path.exists(found) else path


def build_student(config: dict, num_classes: int) -> tuple[nn.Module, V1Spec | V2Spec, str]:
    """(network, its spec, its dialect): --arch, or the --init checkpoint's architecture, with its
    weights. A resumed run rebuilds the network its configuration records and does not read --init
    again (its last.pth holds the weights; the file may have moved since)."""
    if config.get("resume") and config.get("spec") and config.get("dialect"):
        spec = spec_from_dict(config["spec"])
        return build_torch_model(spec, config["dialect"]), spec, config["dialect"]
    init_sd = None
    if config["init"]:
        init_path = input_file(config, config["init"])
        init_sd = load_state_dict_file(init_path)
        init_spec, init_dialect = infer_arch(init_sd, init_path)
    if config["arch"]:
        spec = parse_arch(config["arch"], num_classes)
    elif init_sd is not None:
        spec = type(init_spec)(**{**init_spec.__dict__, "num_classes": num_classes})
    else:
        spec = parse_arch("shufflenet_v2_x1_0", num_classes)
    default_dialect = "megvii" if spec.version == 1 else "torchvision"
    dialect = config["dialect"] or (init_dialect if init_sd is not None else default_dialect)
    torch.manual_seed(training_seed(config))
    model = build_torch_model(spec, dialect)
    if init_sd is not None:
        dropped = init_from_checkpoint(model, init_sd, init_path)
        log(f"initialised from {config['init']}" + (f" (re-initialised {', '.join(dropped)})" if dropped else ""))
    return model, spec, dialect


def teacher_paths(config: dict) -> list[str]:
    """The --teacher checkpoints: a list (a run saved before --teacher could repeat holds one string)."""
    teachers = config.get("teacher") or []
    return [teachers] if isinstance(teachers, str) else list(teachers)


def build_teacher(path: str, channels_last: bool, num_classes: int) -> tuple[nn.Module, Normalize, V1Spec | V2Spec]:
    """A frozen torch teacher from a trained .pth checkpoint of ``num_classes`` classes."""
    sd = load_state_dict_file(path)
    spec, dialect = infer_arch(sd, path)
    if spec.num_classes != num_classes:
        raise TrainError(f"{path}: the teacher has {spec.num_classes} classes, the data {num_classes}; "
                         "a teacher must be trained on the same classes")
    teacher = build_torch_model(spec, dialect)
    teacher.load_state_dict(sd, strict=True)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    log(f"teacher: {path} ({f'V1 g{spec.groups}' if spec.version == 1 else 'V2'}, {dialect} dialect)")
    return teacher, Normalize(DEFAULT_RECIPES[dialect], channels_last), spec


ENGINE_TEACHER_SUFFIXES = (".npz", ".safetensors")


class EngineTeacher:
    """A frozen teacher read from an npshuffle model file and run on npshuffle's Numba engine (its
    BN-folded weights cannot be trained, but they can teach): a float32 batch (N, 3, H, W), already
    normalised with the file's recipe -> logits (N, classes), as torch tensors."""

    def __init__(self, model):
        self.model = model

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.model.forward(images.contiguous().numpy()))


def build_engine_teacher(path: str, classes: list[str], threads: int) -> tuple[EngineTeacher, Normalize]:
    """An :class:`EngineTeacher` for ``path`` (.npz or .safetensors, checked as any model file is)
    and the normalisation of its recipe; its class names must be ``classes``, in that order, since
    the distillation compares the two networks' outputs index by index."""
    from ..model import Model
    from ..model_file import ModelFileError

    try:
        model = Model.load(path, backend="numba", threads=threads)
    except (OSError, ModelFileError) as exc:
        reason = str(exc).removeprefix(f"{path}: ")  # (the model file's own message starts with the path)
        raise TrainError(f"{path}: cannot load the teacher ({reason})") from None
    if list(model.class_names) != list(classes):
        raise TrainError(f"{path}: the teacher's classes ({listed(model.class_names)}) are not the data's "
                         f"({listed(classes)}); a teacher must "
                         "be trained on the same classes")
    log(f"teacher: {path} (an npshuffle model file, {model.metadata.get('variant', '?')}, on the Numba engine)")
    return EngineTeacher(model), Normalize(model.recipe, channels_last=False)


def make_optimizer(model: nn.Module, config: dict) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD over the trainable parameters (with --freeze: the classifier's) and the seed's cosine
    schedule from ``lr`` to ``lr * lrf``, stepped once per epoch."""
    if config["freeze"]:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(CLASSIFIER_PREFIXES))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config["lr"], momentum=SEED_DEFAULTS["momentum"],
                                weight_decay=config["weight_decay"])
    epochs, lrf = config["epochs"], config["lrf"]

    def lf(x):  # the seed's cosine schedule
        return ((1 + math.cos(x * math.pi / epochs)) / 2) * (1 - lrf) + lrf

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)


# The decoded-image cache holds at most this many pixels (4.5 GB as RGB bytes; flower_photos: 0.29 G):
# photos beyond it (a folder of 12-megapixel phone photos) are decoded from disk each epoch instead.
CACHE_MAX_PIXELS = 1_500_000_000


def read_photo_sizes(config: dict, split: Split) -> dict[str, tuple[int, int]]:
    """{path: (width, height)} of every photo of the split, from their headers, read before the
    first epoch: a photo whose header cannot be read (not an image, empty, a pipe, unreadable for
    its permissions) stops the run there, in one TrainError naming the first ones and how many
    there are, not in the middle of an epoch. (A photo cut short after its header is found when
    decoded: before the first epoch with the cache, where it stops the run as well; during an epoch
    with --no-cache, where it is skipped with a note, :meth:`Run.note_skipped`.)"""
    sizes, unreadable = read_headers(config["data_dir"], split.train + split.val)
    if unreadable:
        path, why = unreadable[0]
        others = [p for p, _ in unreadable[1:]]
        also = f"; also {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}" if others else ""
        raise TrainError(f"{os.path.join(config['data_dir'], path)}: {why}{also} ({len(unreadable)} photo(s) of "
                         "the split cannot be read); fix or remove them: training reads every photo of its split")
    return sizes


def use_cache(config: dict, sizes: dict[str, tuple[int, int]]) -> bool:
    """Whether the photos (``sizes``: their declared (width, height)) are decoded once into memory:
    unless --no-cache, or they add up to more than :data:`CACHE_MAX_PIXELS` (then said in one line)."""
    if not config["cache"]:
        return False
    pixels = sum(w * h for w, h in sizes.values())
    if pixels <= CACHE_MAX_PIXELS:
        return True
    short = sum(w * h * min(1.0, (256 / max(1, min(w, h))) ** 2) for w, h in sizes.values())  # shorter sides to 256
    hint = ("; copies resized to a shorter side of 256 px would fit" if short <= CACHE_MAX_PIXELS
            else f"; even resized to a shorter side of 256 px they would hold {short / 1e9:.2f} G")
    log(f"note: the photos hold {pixels / 1e9:.2f} G pixels ({3 * pixels / 2**30:.1f} GiB decoded), more than "
        f"the {CACHE_MAX_PIXELS / 1e9:.2f} G kept in memory: they are decoded from disk each epoch (slower{hint})")
    return False


def make_loaders(config: dict, split: Split) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    t_load = time.monotonic()
    cache = use_cache(config, read_photo_sizes(config, split))
    try:
        train_set = FolderDataset(config["data_dir"], split.train, split.labels("train"), config["img_size"], True,
                                  cache=cache, min_scale=config["min_scale"],
                                  augment=config.get("augment", "basic"))
        val_set = FolderDataset(config["data_dir"], split.val, split.labels("val"), config["val_crop"], False,
                                resize=config["val_resize"], cache=cache)
    except DatasetError as exc:  # (decoding into the cache: before the first epoch, nothing to lose yet)
        raise TrainError(f"{exc}; fix or remove it: training reads every photo of its split") from None
    log(f"data loaded in {time.monotonic() - t_load:.1f} s")
    workers = config["workers"]
    loader_args = dict(num_workers=workers, persistent_workers=workers > 0, collate_fn=collate_photos)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=config["batch_size"], shuffle=True,
                                               drop_last=len(train_set) > config["batch_size"], **loader_args)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=64, shuffle=False, **loader_args)
    return train_loader, val_loader


# --------------------------------------------------------------------------------------------------
# the epochs


def run_epochs(run: Run) -> int:
    """Train from ``run.epoch`` to the configured number of epochs: 0, or 130 when interrupted
    (Ctrl-C, SIGTERM), after saving last.pth and saying how to resume."""
    epochs = run.config["epochs"]
    metrics_path, best_path, last_path = run.path("metrics.jsonl"), run.path("best.pth"), run.path("last.pth")
    final_path = run.path("final.pth")
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for epoch in range(run.epoch, epochs):
            run.epoch = epoch
            row, epoch_time = train_epoch(run, epoch)
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            if row["val_acc"] > run.best_acc:
                run.best_acc, run.best_epoch = row["val_acc"], epoch + 1
                atomic_save(run.model.state_dict(), best_path)
            if epoch + 1 == epochs:
                atomic_save(run.model.state_dict(), final_path)
            save_resume_state(last_path, run, epoch + 1)
            log(f"epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}% | "
                f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}% | lr {row['lr']:.5f} | "
                f"{epoch_time:.0f} s" + (" (best)" if run.best_epoch == epoch + 1 else ""))
            plot_curves(read_metrics(metrics_path), run.path("curves.png"))
    except KeyboardInterrupt:
        save_resume_state(last_path, run, run.epoch)
        out = run.config["out"]
        cmd = f"npshuffle train {shlex.quote(run.config['data_dir'])} --out {shlex.quote(out)} --resume"
        log(f"\ninterrupted during epoch {run.epoch + 1}: saved {last_path}; resume with:\n  {cmd}")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return 0


def train_epoch(run: Run, epoch: int) -> tuple[dict, float]:
    """One epoch of training, then validation: (its metrics.jsonl row, its seconds)."""
    config, model, loader = run.config, run.model, run.train_loader
    t0 = time.monotonic()
    model.train()
    if config["freeze"]:  # frozen backbone: keep its BN statistics too
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
    lr = run.optimizer.param_groups[0]["lr"]
    bar = Progress(len(loader.dataset) if not loader.drop_last else len(loader) * config["batch_size"],
                   f"epoch {epoch + 1}/{config['epochs']}")
    loss_sum, correct, count = 0.0, 0, 0
    mix = config.get("mix", "none")  # (runs saved before --mix existed have no such key)
    skipped_count = 0
    for images, labels, skipped in loader:
        run.note_skipped(skipped)
        skipped_count += len(skipped)
        if not len(labels) or (skipped and len(labels) == 1):  # (BatchNorm may not train on one left)
            continue
        # unmixed, a batch is its own blend with weight 1: the same loss and accuracy as plain ones
        batch = mix_batch(images, labels, mix, config["mix_alpha"]) if mix != "none" else MixedBatch(
            images, labels, labels, 1.0)
        images = batch.images
        logits = model(run.normalize(images))
        loss = mixed_cross_entropy(logits, batch, config["label_smoothing"])
        if run.teachers:
            with torch.no_grad():
                t_log_probs = teacher_log_probs([t(norm(images)) for t, norm in run.teachers],
                                                config["kd_temperature"])
            loss = (1 - config["kd_alpha"]) * loss + config["kd_alpha"] * kd_loss(
                logits, t_log_probs, config["kd_temperature"])
        if not torch.isfinite(loss):  # a diverged run: every later step would only spread the NaN
            raise TrainError(f"the loss became {loss.item()} in epoch {epoch + 1} (after {count} of its images): "
                             f"training diverged; start again with a lower --lr (this run: {config['lr']})")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        n = len(labels)
        loss_sum += loss.item() * n
        correct += mixed_correct(logits, batch)
        count += n
        bar.update(n, loss=f"{loss_sum / count:.3f}", acc=f"{100 * correct / count:.1f}%")
    run.scheduler.step()
    val_loss, val_acc, val_count = evaluate_torch(model, run.normalize, run.val_loader, run.note_skipped)
    val_skipped = len(run.val_loader.dataset) - val_count
    if count == 0 or (val_count == 0 and val_skipped):
        part = "training" if count == 0 else "validation"
        raise TrainError(f"no photo of the {part} split could be used in epoch {epoch + 1} (each failed to decode, "
                         "as the notes above say): fix the photos, then resume with --resume")
    epoch_time = time.monotonic() - t0
    run.elapsed += epoch_time
    row = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1), "train_acc": correct / max(count, 1),
           "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "epoch_time_s": round(epoch_time, 2),
           "skipped": {"train": skipped_count, "val": val_skipped},  # photos that failed to decode
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return row, epoch_time


def evaluate_torch(model: nn.Module, normalize: Normalize, loader,
                   note_skipped: Callable[[list[tuple[str, str]]], None]) -> tuple[float, float, int]:
    """(mean loss, top-1 accuracy, count) of ``model`` on ``loader``'s batches (:class:`PhotoBatch`);
    the photos that failed to decode are given to ``note_skipped`` and left out of the count."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for images, labels, skipped in loader:
            note_skipped(skipped)
            if not len(labels):
                continue
            logits = model(normalize(images))
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
            count += len(labels)
    return loss_sum / max(count, 1), correct / max(count, 1), count


def teacher_log_probs(teacher_logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """log of the teachers' softened probabilities, averaged: log(mean_i softmax(logits_i / T)), (N, classes).

    Probabilities, not logits, are averaged, as an ensemble's prediction is; one teacher gives
    exactly log_softmax(logits / T)."""
    log_probs = torch.stack([F.log_softmax(t / temperature, 1) for t in teacher_logits])
    return torch.logsumexp(log_probs, 0) - math.log(len(teacher_logits))


def kd_loss(student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s distillation loss: T^2 * KL(p_teacher || softmax(s / T)), with
    ``teacher_log_probs`` = log p_teacher from :func:`teacher_log_probs` at the same temperature T."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), teacher_log_probs,
                    reduction="batchmean", log_target=True) * t * t


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# --------------------------------------------------------------------------------------------------
# metrics


def drop_metrics_after(path: str, epochs_done: int) -> None:
    """Keep the metrics.jsonl rows of the first ``epochs_done`` epochs (an interrupt between an epoch's
    row and its last.pth leaves one row the resumed run writes again; a kill while appending, half a
    row), rewritten atomically."""
    if not os.path.exists(path):
        return
    kept = [row for row in read_metrics(path) if isinstance(row, dict) and row.get("epoch", 0) <= epochs_done]
    text = "".join(json.dumps(row) + "\n" for row in kept)
    with open(path, encoding="utf-8") as f:
        if f.read() == text:
            return
    write_atomically(path, lambda out: out.write(text.encode("utf-8")))


def read_metrics(path: str) -> list[dict]:
    """The rows of a run's metrics.jsonl (one JSON object per epoch). A last line cut short (the run
    killed while appending it) is dropped; any other unreadable line is a TrainError naming the file."""
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    except (OSError, ValueError) as exc:
        raise TrainError(f"{path}: cannot read the run's metrics ({exc})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if number == len(lines) and not line.endswith("\n"):
                break
            raise TrainError(f"{path}: line {number} is not a metrics row; remove it to go on") from None
    return rows


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
