"""``npshuffle train``'s command line: its options, architecture names, and the run's configuration
they resolve to (no torch here).

Two sets of defaults: from scratch, the seed project's recipe; with ``--init`` (fine-tuning a
pretrained network), a gentler recipe. The seed's lr 0.1 at batch 16 wrecks the pretrained features
in the first epochs (reported in issue 20 on flower_photos: 64.8 % after 2 epochs; on 300 photos it diverged),
where lr 0.02 at batch 32 with milder crops and label smoothing keeps and adapts them. Any option
given on the command line wins over both."""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import sys

from ..archs import V1_CHANNELS, V2_CHANNELS, WIDTHS, V1Spec, V2Spec, check_spec, v1_spec, v2_spec

SEED_DEFAULTS = dict(epochs=30, batch_size=16, lr=0.1, lrf=0.1, momentum=0.9, weight_decay=4e-5, min_scale=0.08,
                     label_smoothing=0.0)
# With --init: measured on flower_photos from Megvii's V1 g3 0.5x (the README's "Training your own").
FINE_TUNE_DEFAULTS = dict(SEED_DEFAULTS, epochs=12, batch_size=32, lr=0.02, lrf=0.05, min_scale=0.25,
                          label_smoothing=0.1)
# The options whose default depends on --init (None on the parser: "not given").
RECIPE_OPTIONS = ("epochs", "batch_size", "lr", "lrf", "weight_decay", "min_scale", "label_smoothing")
# Options that --resume takes from the command line when given (everything else from the checkpoint).
RESUME_OVERRIDABLE = ("epochs", "workers", "threads")
AUGMENTS = ("basic", "strong", "strong-blur", "strong-augmix")  # --augment: training/pipeline.py
# --mix (``mixing.py``) and its Beta(alpha, alpha) parameter when --mix-alpha is not given: the papers'
# ImageNet settings (mixup: Zhang et al. 2018; CutMix: Yun et al. 2019)
MIX_KINDS = ("none", "mixup", "cutmix")
MIX_DEFAULT_ALPHA = {"mixup": 0.2, "cutmix": 1.0}


class TrainError(RuntimeError):
    """A training set-up that cannot work; the message says why."""


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


def _default_help(option: str) -> str:
    return f"(default {SEED_DEFAULTS[option]}; with --init {FINE_TUNE_DEFAULTS[option]})"


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``npshuffle train`` options (defaults: see :data:`SEED_DEFAULTS` and :data:`FINE_TUNE_DEFAULTS`)."""
    parser.add_argument("data_dir", metavar="DATA_DIR", help="class-per-folder images (e.g. flower_photos)")
    parser.add_argument("--out", default=None, help="output folder (default runs/<arch>, or runs/train without --arch)")
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
    parser.add_argument("--epochs", type=int, default=None, help=_default_help("epochs"))
    parser.add_argument("--batch-size", type=int, default=None, help=_default_help("batch_size"))
    parser.add_argument("--lr", type=float, default=None, help="initial learning rate " + _default_help("lr"))
    parser.add_argument("--lrf", type=float, default=None,
                        help="final lr as a fraction of --lr (cosine) " + _default_help("lrf"))
    parser.add_argument("--weight-decay", type=float, default=None, help=_default_help("weight_decay"))
    parser.add_argument("--label-smoothing", type=float, default=None, help=_default_help("label_smoothing"))
    parser.add_argument("--img-size", type=int, default=224, help="training crop size (RandomResizedCrop)")
    parser.add_argument("--min-scale", type=float, default=None,
                        help="RandomResizedCrop's smallest area fraction " + _default_help("min_scale"))
    parser.add_argument("--augment", choices=AUGMENTS, default="basic",
                        help="basic (default): random resized crop + flip; strong: also colour jitter, random "
                             "greyscale and random erasing; strong-blur: also a random Gaussian blur; "
                             "strong-augmix: AugMix chains blended in first, then strong")
    parser.add_argument("--mix", choices=MIX_KINDS, default="none",
                        help="blend each batch with a shuffled copy of itself: mixup (whole images) or cutmix (a "
                             "pasted rectangle), the two labels weighted by the blend's shares; a --teacher sees "
                             "the blended images (the train accuracy becomes that weighted score)")
    parser.add_argument("--mix-alpha", type=float, default=None,
                        help="the blend weight's Beta(alpha, alpha) (default: mixup "
                             f"{MIX_DEFAULT_ALPHA['mixup']}, cutmix {MIX_DEFAULT_ALPHA['cutmix']})")
    parser.add_argument("--select", choices=("last", "val"), default="last",
                        help="which epoch becomes model.npz: last (default: its validation accuracy is an honest "
                             "estimate) or val (the best on the validation split, as the seed did: optimistic, "
                             "since the split both picks and scores it)")
    parser.add_argument("--val-resize", type=int, default=256, help="validation Resize (shorter side)")
    parser.add_argument("--val-crop", type=int, default=224, help="validation CenterCrop")
    parser.add_argument("--val-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0,
                        help="split seed (the seed project's 0), and training seed unless --train-seed")
    parser.add_argument("--train-seed", type=int, default=None, metavar="N",
                        help="seed of the weights' initialisation, the shuffling and the augmentation (default: "
                             "--seed): another draw of the same recipe on the same validation split")
    parser.add_argument("--workers", type=int, default=None, help="data loader processes (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch compute threads (default 2)")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="decode images from disk every epoch instead of once into memory")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="NCHW instead of channels-last tensors (channels-last is faster on CPU here)")
    parser.add_argument("--teacher", action="append", default=None, metavar="CKPT",
                        help="distil from this trained checkpoint (e.g. runs/flowers/best.pth) or npshuffle model "
                             "file (.npz/.safetensors, e.g. a bundled model, run on the Numba engine; its classes "
                             "must be the data's); give it more than once to distil from the ensemble (the "
                             "teachers' softened probabilities averaged)")
    parser.add_argument("--kd-alpha", type=float, default=None,
                        help="weight of the distillation loss, the labels' loss taking the rest (default 0.7; 1: "
                             "the teacher alone)")
    parser.add_argument("--kd-temperature", type=float, default=None,
                        help="softmax temperature of the teacher's and the student's distilled logits (default 4)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="LAST_PTH",
                        help="continue an interrupted run (default: OUT/last.pth); --epochs may extend it")
    parser.add_argument("--max-images", type=int, default=None, help=argparse.SUPPRESS)  # tests: subsample
    return parser


def resolve_config(args: argparse.Namespace) -> dict:
    """The run's configuration from the parsed options, defaults filled in; ``out`` stays None when
    not given (see :func:`default_out`)."""
    # (the CLI's handler, ``run``, is a function: kept out, so that last.pth holds data alone and
    # --resume can read it with torch's weights-only loader)
    config = {k: v for k, v in vars(args).items() if k not in ("func", "command") and not callable(v)}
    defaults = recipe_defaults(config)
    for option in RECIPE_OPTIONS:
        if config.get(option) is None:
            config[option] = defaults[option]
    if config.get("mix_alpha") is not None:
        if config.get("mix", "none") == "none":
            raise TrainError("--mix-alpha needs --mix mixup or --mix cutmix")
        # (below 0.01 torch's Beta sampler underflows: it draws 0.5, where Beta(alpha, alpha) lies next
        # to 0 or 1; above 100 every blend is within a few points of an even half)
        if not (math.isfinite(config["mix_alpha"]) and 0.01 <= config["mix_alpha"] <= 100):
            raise TrainError(f"--mix-alpha must be a number from 0.01 to 100 (got {config['mix_alpha']})")
    elif config.get("mix", "none") != "none":
        config["mix_alpha"] = MIX_DEFAULT_ALPHA[config["mix"]]
    resolve_distillation(config)
    config["workers"] = config["workers"] if config["workers"] is not None else 1
    config["threads"] = config["threads"] if config["threads"] is not None else 2
    check_numbers(config)
    return config


# Image sizes a run may ask for: the networks need 32 pixels (five stride-2 steps), and above 1024 a
# batch of crops alone takes gigabytes (32 x 3 x 1024 x 1024 float32 is 400 MB before any activation).
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 32, 1024
INTEGER_RANGES = {  # option: (smallest, largest allowed)
    "epochs": (1, 100_000), "batch_size": (1, 4096), "img_size": (MIN_IMAGE_SIDE, MAX_IMAGE_SIDE),
    "val_resize": (MIN_IMAGE_SIDE, MAX_IMAGE_SIDE), "val_crop": (MIN_IMAGE_SIDE, MAX_IMAGE_SIDE),
    "seed": (0, 2**32 - 1), "train_seed": (0, 2**32 - 1), "workers": (0, 64), "threads": (1, 1024),
    "max_images": (1, 10**9),
}


def check_numbers(config: dict) -> None:
    """Refuse, before anything is loaded, a numeric option that cannot make a run (a zero or negative
    count or size, a learning rate that is not a positive number, a fraction outside its range); one
    line naming the option and what it takes."""
    for option, (low, high) in INTEGER_RANGES.items():
        value = config.get(option)
        if value is not None and not low <= value <= high:
            raise TrainError(f"--{option.replace('_', '-')} must be a whole number from {low} to {high} (got {value})")
    if config["val_crop"] > config["val_resize"]:
        raise TrainError(f"--val-crop ({config['val_crop']}) must not exceed --val-resize ({config['val_resize']}): "
                         "validation crops the centre of the resized photo")

    def number(option: str, ok, what: str) -> None:
        value = config.get(option)
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise TrainError(f"--{option.replace('_', '-')} must be {what} (got {value})")

    number("lr", lambda v: 0 < v <= 10, "a number above 0 (at most 10)")
    number("lrf", lambda v: 0 <= v <= 1, "a number from 0 to 1 (the final lr as a fraction of --lr)")
    number("weight_decay", lambda v: 0 <= v < 1, "a number from 0 up to (not including) 1")
    number("label_smoothing", lambda v: 0 <= v < 1, "a number from 0 up to (not including) 1")
    number("min_scale", lambda v: 0 < v <= 1, "a number above 0, at most 1 (an area fraction)")
    number("val_rate", lambda v: 0 < v < 1, "a number between 0 and 1 (the validation share)")


KD_DEFAULTS = {"kd_alpha": 0.7, "kd_temperature": 4.0}
# Outside these, the softened logits over- or underflow in float32 (1e-30 makes the first loss NaN)
# and the distillation loss, scaled by T squared, means nothing; papers use 1-20.
KD_TEMPERATURES = (0.1, 100.0)


def resolve_distillation(config: dict) -> None:
    """Check --kd-alpha (0..1) and --kd-temperature (0.1-100), which only mean something with a
    --teacher, and fill in their defaults."""
    given = [name for name in KD_DEFAULTS if config.get(name) is not None]
    if given and not config.get("teacher"):
        raise TrainError(f"--{given[0].replace('_', '-')} needs --teacher (it weighs the distillation from one)")
    alpha, temperature = config.get("kd_alpha"), config.get("kd_temperature")
    if alpha is not None and not (math.isfinite(alpha) and 0 <= alpha <= 1):
        raise TrainError(f"--kd-alpha must be a number from 0 to 1 (got {alpha})")
    low, high = KD_TEMPERATURES
    if temperature is not None and not (math.isfinite(temperature) and low <= temperature <= high):
        raise TrainError(f"--kd-temperature must be a number from {low:g} to {high:g} (got {temperature})")
    for name, value in KD_DEFAULTS.items():
        if config.get(name) is None:
            config[name] = value


def recipe_defaults(config: dict) -> dict:
    """The defaults that apply: the fine-tuning recipe when the run starts from a checkpoint."""
    return FINE_TUNE_DEFAULTS if config.get("init") else SEED_DEFAULTS


def describe_recipe(config: dict) -> str:
    """One line: the recipe this run trains with, and which defaults it started from."""
    which = "fine-tuning defaults (--init)" if config.get("init") else "from-scratch defaults"
    values = ", ".join(f"{option.replace('_', '-')} {config[option]}" for option in RECIPE_OPTIONS)
    return f"recipe: {values} ({which}, options given on the command line win)"


def default_out(config: dict) -> str:
    """The output folder: ``--out``, else ``runs/<arch>`` (``runs/train`` without --arch)."""
    return config["out"] or os.path.join("runs", config["arch"] or "train")


def args_command_line(args: argparse.Namespace) -> str:
    return getattr(args, "command_line", None) or command_line()


def command_line() -> str:
    """This process's ``npshuffle train ...`` command (recorded in the model file and on --resume)."""
    words = sys.argv[1:]
    if os.path.basename(sys.argv[0]) == "npshuffle" and words[:1] == ["train"]:
        words = words[1:]
    return " ".join(shlex.quote(a) for a in ["npshuffle", "train", *words])
