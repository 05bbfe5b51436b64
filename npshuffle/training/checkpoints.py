"""The trainer's .pth files: checkpoints to start from (``--init``, ``--teacher``), the architecture
they hold, and the state saved after every epoch (``last.pth``) that ``--resume`` continues from."""

from __future__ import annotations

import argparse
import os
import pickle
import random
import re
import warnings

import numpy as np
import torch
from torch import nn

from ..archs import ArchError, V1Spec, V2Spec, check_spec
from ..atomic import write_atomically
from ..file_checks import input_file_problem
from .arguments import RESUME_OVERRIDABLE, TrainError, args_command_line
from .messages import listed

CLASSIFIER_PREFIXES = ("fc.", "classifier.")


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
    problem = input_file_problem(path)
    if problem:
        raise TrainError(f"{path}: {problem}")
    try:
        obj = load_weights_only(path)
    except Exception as exc:  # noqa: BLE001 - a file that is not a checkpoint fails in many ways; one message
        raise TrainError(f"{path}: cannot load the checkpoint ({load_failure(exc)})") from None
    return _unwrap_state_dict(obj, path)


def load_weights_only(path: str):
    """``torch.load(path, weights_only=True)`` on the CPU, without torch's UserWarning about the
    pickle protocol (printed before the one-line error that follows it, it would say nothing more)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def load_failure(exc: Exception, resume: bool = False) -> str:
    """One line for why torch.load refused a file (for ``--resume`` when ``resume``). Its refusal
    of a pickled Python object is a page of advice to load the file as code; here it is named, with
    the way that is safe. A file that is no torch checkpoint at all (text, an empty or cut-short
    file) says so rather than quoting the unpickler's KeyError or EOFError."""
    expected = ("--resume takes the last.pth that `npshuffle train` writes after every epoch" if resume
                else "expected a state_dict saved with torch.save(model.state_dict(), 'weights.pth')")
    text = re.sub(r"^\s*\[enforce fail at [^\]]*\]\s*\.?\s*", "", str(exc))  # (the zip reader's C++ prefix)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        name = found.group(1)
        if resume:
            advice = f"not a run's last.pth; {expected}"
        elif name.startswith("torch.nn."):  # a whole model pickled
            advice = "save the model's state_dict() instead: torch.save(model.state_dict(), 'weights.pth')"
        else:  # a training script's dict: the weights beside its arguments, a numpy scalar, ...
            advice = ("if the weights sit in it beside other things, load it where you trust it and save them "
                      "alone, e.g. torch.save(checkpoint['model'], 'weights.pth')")
        return f"it holds a pickled Python object ({name}), which npshuffle does not run; {advice}"
    if isinstance(exc, OSError):  # permission denied, an I/O error: the file may well be a checkpoint
        return f"{type(exc).__name__}: {exc.strerror or first_sentence(text)}"
    if isinstance(exc, EOFError):
        return f"the file is empty or ends early, not a torch checkpoint; {expected}"
    # The unpickler fed text or another format fails with whatever it trips on (KeyError: 101,
    # IndexError: pop from empty list): only the zip reader's and the unpickler's own words say something.
    detail = ""
    if isinstance(exc, (RuntimeError, pickle.UnpicklingError)):
        # the unpickler's reason follows "WeightsUnpickler error:" where there is one; else the whole text
        detail = first_sentence(text.split("WeightsUnpickler error:", 1)[-1])
    return f"not a torch checkpoint, or one damaged or cut short{f' ({detail})' if detail else ''}; {expected}"


def first_sentence(text: str, limit: int = 160) -> str:
    """The first sentence of ``text``'s first non-empty line, cut at a word within ``limit``
    characters (torch's messages run on into paragraphs of advice)."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    sentence = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0].rstrip(".")
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " ..."
    return sentence


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
        problems.append(f"missing keys: {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {listed(unexpected)}")
    if problems:
        raise TrainError(f"{path} does not fit the chosen architecture/dialect: " + "; ".join(problems))
    return dropped


def atomic_save(obj: object, path: str) -> None:
    """torch.save ``obj`` to ``path`` through a temporary file of its own (complete or not there)."""
    write_atomically(path, lambda f: torch.save(obj, f))


# --------------------------------------------------------------------------------------------------
# --resume


RESUME_KEYS = ("model", "optimizer", "scheduler", "epoch", "best_acc", "best_epoch", "rng", "config")
# What a resumed run takes from this command line rather than from last.pth, beside RESUME_OVERRIDABLE:
# where the data and the run are now (the split check and the folder check below vouch for them).
RESUME_LOCATIONS = ("data_dir", "out", "resume", "command_line", "func", "command")


def load_resume(resume: str, out: str, args: argparse.Namespace,
                given: dict[str, str]) -> tuple[dict, dict]:
    """(saved state, configuration) to continue from: ``resume`` is a last.pth, or "auto" for
    ``out``/last.pth. The run continues in the folder of its last.pth, on the DATA_DIR this command
    line gives; the configuration is the stored one, with the options of :data:`RESUME_OVERRIDABLE`
    this command line gives, and this command line noted in ``resumed_with``. Any other option given
    with a value other than the run's (``given``: {dest: option} of those on the command line) is refused,
    since the run would silently go on without it."""
    resume_path = os.path.join(out, "last.pth") if resume == "auto" else resume
    problem = input_file_problem(resume_path)
    if problem:
        raise TrainError(f"{resume_path}: nothing to resume: {problem}")
    from .train import run_train

    try:
        # A last.pth may name the CLI's handler (npshuffle.training.train.run_train) in its
        # configuration: that one name of ours is let through (the loader only looks it up; nothing
        # is called), then dropped with any other callable.
        with torch.serialization.safe_globals([run_train]):
            state = load_weights_only(resume_path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        reason = load_failure(exc, resume=True)
        raise TrainError(f"{resume_path}: cannot load the resume checkpoint ({reason})") from None
    missing = [k for k in RESUME_KEYS if not isinstance(state, dict) or k not in state]
    if missing or not isinstance(state["config"], dict) or "epochs" not in state["config"]:
        raise TrainError(f"{resume_path}: not the last.pth of an `npshuffle train` run "
                         f"({'it lacks ' + ', '.join(missing) if missing else 'its configuration is incomplete'}); "
                         "--resume takes the last.pth that a run writes after every epoch")
    run_dir = os.path.dirname(os.path.abspath(resume_path))
    if args.out is not None and os.path.realpath(args.out) != os.path.realpath(run_dir):
        raise TrainError(f"--resume continues the run in the folder of its last.pth ({run_dir}), not in "
                         f"--out {args.out}; leave --out out (or copy the run's folder there and resume that)")
    config = {k: v for k, v in state["config"].items() if not callable(v)}
    refuse_changed_options(config, args, given)
    for key in RESUME_OVERRIDABLE:
        if getattr(args, key, None) is not None:
            config[key] = getattr(args, key)
    if config["epochs"] < state["epoch"]:
        raise TrainError(f"--epochs {config['epochs']}: the run has done {state['epoch']} epochs already; give "
                         f"--epochs {state['epoch']} or more (its model.npz is the one of its last epoch)")
    config["resume"] = resume
    config["resumed_with"] = [*config.get("resumed_with", []), args_command_line(args)]
    config["data_dir"] = args.data_dir
    config["out"] = args.out if args.out is not None else run_dir
    return state, config


def refuse_changed_options(config: dict, args: argparse.Namespace, given: dict[str, str]) -> None:
    """Raise when this command line gives an option that --resume cannot change (one other than
    :data:`RESUME_OVERRIDABLE`) a value other than the run's; repeating the run's own options is fine.
    ``given``: {dest: option as typed} of the options on the command line (a default is not given)."""
    changed = []
    for key, option in given.items():
        value = getattr(args, key, None)
        if key in RESUME_OVERRIDABLE or key in RESUME_LOCATIONS or callable(value):
            continue
        if value != config.get(key):
            shown = option if isinstance(value, bool) else f"{option} {value}"
            changed.append(f"{shown} (the run has {config.get(key)})")
    if changed:
        raise TrainError("--resume continues the run as it began, so " + "; ".join(changed) + " cannot apply; only "
                         + ", ".join(f"--{k}" for k in RESUME_OVERRIDABLE) + " can change (start a new run "
                         "with another --out for the rest)")


def save_resume_state(path: str, run, epochs_done: int) -> None:
    """Everything :func:`load_resume` needs to continue ``run`` (a :class:`~.loop.Run`) after
    ``epochs_done`` epochs, written atomically."""
    atomic_save({
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "epoch": epochs_done, "best_acc": run.best_acc,
        "best_epoch": run.best_epoch, "elapsed": run.elapsed, "rng": rng_state(), "config": run.config,
    }, path)


def restore_resume_state(run, state: dict) -> None:
    """Put ``run``'s model, optimiser, schedule, progress and every RNG back as ``state`` saved them."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    # the optimiser comes back with the lr of the schedule it ran; a run extended by --epochs has a
    # longer cosine, so its next epoch's lr is taken from that (unchanged for a run resumed as it was)
    for group, base, factor in zip(run.optimizer.param_groups, run.scheduler.base_lrs, run.scheduler.lr_lambdas,
                                   strict=True):
        group["lr"] = base * factor(run.scheduler.last_epoch)
    run.epoch = state["epoch"]
    run.best_acc, run.best_epoch = state["best_acc"], state["best_epoch"]
    run.elapsed = state.get("elapsed", 0.0)
    set_rng_state(state["rng"])


def rng_state() -> dict:
    """Every RNG's state, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
