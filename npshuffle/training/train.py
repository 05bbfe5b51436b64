"""``npshuffle train DATA_DIR``: fine-tune or train a ShuffleNet on a class-per-folder data set (torch, CPU).

The default recipe is the seed project's (WZMIAOMIAO ``Test7_shufflenet/train.py``): the seed-style
split (see :mod:`npshuffle.training.datasets`), RandomResizedCrop + horizontal flip for training,
Resize(256) + CenterCrop(224) for validation, SGD (momentum 0.9, weight decay 4e-5), a cosine
learning-rate schedule from ``lr`` down to ``lr * lrf`` stepped once per epoch, 30 epochs of batch
16. With ``--init`` the defaults are a fine-tuning recipe instead
(:data:`~.arguments.FINE_TUNE_DEFAULTS`: 12 epochs of batch 32 at lr 0.02, milder crops, label
smoothing). At the end the last epoch's weights (``--select val``: the best on validation, as the
seed kept) become an npshuffle model file (``model.npz``) with the class names and the validation
accuracy in its metadata.

Output folder (``--out``)::

    split.json, class_indices.json   the split (files per part) and the class names
    metrics.jsonl                    one line per epoch: loss, accuracy, lr, time
    last.pth                         everything needed to --resume (also written on Ctrl-C)
    best.pth                         the best epoch's state_dict (torchvision/Megvii keys)
    final.pth                        the last epoch's state_dict
    model.npz                        final.pth (--select last, the default) or best.pth (--select val),
                                     converted by weights_convert
    curves.png                       loss/accuracy curves, when matplotlib is installed

Input recipes differ per dialect (Megvii: BGR 0..255; torchvision: RGB normalised), so the data
pipeline yields uint8 RGB crops and each network (student, and teacher when distilling) normalises
the same crop its own way.

The run's parts: :mod:`~npshuffle.training.arguments` (options, configuration),
:mod:`~npshuffle.training.checkpoints` (.pth files, --init, --resume), :mod:`~npshuffle.training.pipeline`
(crops and normalisation) and :mod:`~npshuffle.training.loop` (networks, optimiser, epochs).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys

import torch

from weights_convert import convert_file
from weights_convert.keymap import ConversionError

from ..archs import ArchError
from ..file_checks import input_file_problem
from .arguments import TrainError, add_train_arguments, args_command_line, command_line, default_out, resolve_config
from .checkpoints import atomic_save, load_resume
from .datasets import SEED_IMAGE_EXTENSIONS, DatasetError, Split, read_split, seed_split, write_split
from .loop import Run, log, read_metrics, run_epochs, setup_run, teacher_paths, training_seed


def run_train(args: argparse.Namespace) -> int:
    """Entry point of ``npshuffle train``; returns the process exit status."""
    try:
        return train(args)
    except (TrainError, DatasetError, ArchError, ConversionError) as exc:
        print(f"npshuffle train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the first epoch began: nothing to save
        print("\nnpshuffle train: interrupted before training started", file=sys.stderr)
        return 130


def given_options(args: argparse.Namespace) -> dict[str, str]:
    """{dest: option as typed} of the options this command line gave (a default is not one): the
    recorded words parsed again with every default suppressed."""
    parser = add_train_arguments(argparse.ArgumentParser(add_help=False))
    names = {}
    for action in parser._actions:  # (set_defaults would put the SUPPRESS marker in the namespace)
        names[action.dest] = action.option_strings[0] if action.option_strings else action.dest
        action.default = argparse.SUPPRESS
    words = shlex.split(args_command_line(args))[2:]  # (less "npshuffle train")
    given, _ = parser.parse_known_args(words)
    return {dest: names[dest] for dest in vars(given)}


def train(args: argparse.Namespace) -> int:
    """A run from its options to its model file (or to last.pth when interrupted: 130)."""
    config = resolve_config(args)
    out = default_out(config)
    resume_state = None
    if config["resume"]:
        resume_state, config = load_resume(config["resume"], out, args, given_options(args))
        out = config["out"]
    else:
        refuse_to_overwrite(out)
        config["started_in"] = os.getcwd()
        check_input_files(config)
    config["out"] = out
    make_output_folder(out)
    with claim_output_folder(out):
        torch.set_num_threads(config["threads"])
        split, classes_path = prepare_split(config, resuming=resume_state is not None)
        run = setup_run(config, split, resume_state)
        if run_epochs(run) != 0:
            return 130
        write_model_file(run, split, classes_path)
    return 0


def check_input_files(config: dict) -> None:
    """Refuse an --init or --teacher path that :func:`npshuffle.file_checks.input_file_problem`
    rejects (missing, a link to nothing, a folder, a pipe or device) before the output folder is
    made. A resumed run skips this: its loaders check the paths as they open them."""
    named = [("--init", config["init"])] if config["init"] else []
    for option, path in named + [("--teacher", path) for path in teacher_paths(config)]:
        problem = input_file_problem(path)
        if problem:
            raise TrainError(f"{option} {path}: {problem}")


LOCK_FILE = ".npshuffle-train.lock"


@contextlib.contextmanager
def claim_output_folder(out: str):
    """Hold an exclusive lock on ``out`` for the run: a second `npshuffle train` on the same folder
    (started before the first wrote anything, or a --resume of a run still going) is refused instead
    of both writing one metrics.jsonl and last.pth. The lock is the operating system's (flock), so a
    killed run leaves none behind. Where there is no flock (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = os.path.join(out, LOCK_FILE)
    try:
        handle = open(path, "a")
    except OSError as exc:
        raise TrainError(f"--out {out}: cannot create {LOCK_FILE} there ({exc.strerror or exc})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise TrainError(f"{out}: another `npshuffle train` is running in this folder; wait for it, or "
                             "give another --out") from None
        yield


RUN_FILES = ("last.pth", "metrics.jsonl")  # what a run writes from its first epoch on


def refuse_to_overwrite(out: str) -> None:
    """A new run must not wipe an earlier one's files (a re-typed command without --resume would)."""
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(out, name))]
    if found:
        raise TrainError(f"{out} already holds a run ({', '.join(found)}): continue it with --resume, or give "
                         "another --out (or remove that folder to start over)")


def make_output_folder(out: str) -> None:
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise TrainError(f"--out {out}: cannot create the output folder ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise TrainError(f"--out {out}: the output folder is not writable; give another --out")


def prepare_split(config: dict, resuming: bool) -> tuple[Split, str]:
    """The seed-style split of the data folder (subsampled by --max-images), written to the output
    folder; a resumed run must find the split it began with. Returns (split, class_indices.json)."""
    out = config["out"]
    split = seed_split(config["data_dir"], config["val_rate"], config["seed"])
    if split.left_out:
        log(f"note: {len(split.left_out)} image(s) left out, e.g. {split.left_out[0]}: the split takes the seed's "
            f"{'/'.join(SEED_IMAGE_EXTENSIONS)} files only; rename the others to include them")
    if config.get("max_images"):
        k = config["max_images"]
        train = split.train[:: max(1, len(split.train) // k)][:k]  # evenly over the classes
        val = split.val[:: max(1, 4 * len(split.val) // k)][: max(1, k // 4)]
        split = Split(split.classes, train, val, split.seed, split.val_rate)
    if resuming:
        if not os.path.exists(os.path.join(out, "split.json")):
            raise TrainError(f"{out}/split.json is missing: without it the run cannot check that "
                             f"{config['data_dir']} holds the photos it began with; restore it to resume")
        old = read_split(os.path.join(out, "split.json"))
        if (old.train, old.val, old.classes) != (split.train, split.val, split.classes):
            raise TrainError(f"{out}/split.json differs from the split of {config['data_dir']} now: data changed? "
                             "A resumed run needs the photos it began with")
    if not split.train or not split.val:
        raise TrainError(f"{config['data_dir']}: {len(split.train)} training and {len(split.val)} validation "
                         f"photos with --val-rate {config['val_rate']}; a run needs both (add photos, or change "
                         "--val-rate)")
    split_path, classes_path = write_split(split, out)
    log(f"data: {len(split.classes)} classes, {len(split.train)} train / {len(split.val)} val images "
        f"(split written to {split_path})")
    return split, classes_path


def write_model_file(run: Run, split: Split, classes_path: str) -> None:
    """The selected epoch (``--select``: the last, or the best on validation) -> model.npz, with the
    class names, the validation recipe, that epoch's validation accuracy and how the run was made in
    its metadata."""
    config = run.config
    model_path = run.path("model.npz")
    metrics = read_metrics(run.path("metrics.jsonl"))
    if config.get("select", "val") == "last" and metrics:
        source, epoch, accuracy = "final.pth", metrics[-1]["epoch"], metrics[-1]["val_acc"]
        how = "the last epoch (the validation split only scores it)"
        if not os.path.exists(run.path(source)):  # a run resumed after its last epoch: the model is that epoch's
            atomic_save(run.model.state_dict(), run.path(source))
    else:
        source, epoch, accuracy = "best.pth", run.best_epoch, run.best_acc
        how = "the best epoch on the validation split (which also scores it: optimistic)"
    trained = {
        "command": config.get("command_line") or command_line(), "resumed_with": config.get("resumed_with", []),
        "epochs": config["epochs"], "epoch": epoch, "selected": how, "best_epoch": run.best_epoch,
        "best_val_accuracy": round(run.best_acc, 6),
        "train_time_s": round(run.elapsed, 1), "data": os.path.basename(os.path.normpath(config["data_dir"])),
        "split": {"seed": config["seed"], "val_rate": config["val_rate"], "train": len(split.train),
                  "val": len(split.val)},
        "train_seed": training_seed(config),
        "init": os.path.basename(config["init"]) if config["init"] else None,
        "teacher": teacher_paths(config) or None, "img_size": config["img_size"],
        "augment": config.get("augment", "basic"), "mix": config.get("mix", "none"),
        "mix_alpha": config.get("mix_alpha"),
    }
    convert_file(run.path(source), model_path, classes=classes_path, resize=config["val_resize"],
                 crop=config["val_crop"], extra={"val_accuracy": round(accuracy, 6), "trained": trained})
    log(f"model file: {model_path}, epoch {epoch}: {how}; val acc {100 * accuracy:.2f}% "
        f"(best epoch {run.best_epoch}: {100 * run.best_acc:.2f}%); training time {run.elapsed / 60:.1f} min")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m npshuffle.training.train", description=__doc__.split("\n")[0])
    args = add_train_arguments(parser).parse_args(argv)
    words = sys.argv[1:] if argv is None else argv
    args.command_line = " ".join(shlex.quote(a) for a in ["npshuffle", "train", *words])
    return run_train(args)


if __name__ == "__main__":
    sys.exit(main())
