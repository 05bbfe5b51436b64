"""``python -m weights_convert CKPT -o MODEL.npz [--classes FILE] [--resize N] [--crop N]``."""

from __future__ import annotations

import argparse
import sys

from .keymap import ConversionError
from .write import convert_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m weights_convert",
        description="Convert a ShuffleNet checkpoint (.pth/.pt/.pth.tar or .safetensors) into an npshuffle model file.",
    )
    parser.add_argument("checkpoint", help="torchvision-style or Megvii ShuffleNet-Series checkpoint")
    parser.add_argument("-o", "--output", required=True, help="model file to write (.npz, or .safetensors)")
    parser.add_argument(
        "--classes", help="class_indices.json ({\"0\": \"daisy\", ...}) or a text file, one name per line "
        "(default for .safetensors: the id2label of a config.json beside it)"
    )
    parser.add_argument("--resize", type=int, help="override the shorter-side resize of the preprocessing recipe")
    parser.add_argument("--crop", type=int, help="override the centre-crop size of the preprocessing recipe")
    args = parser.parse_args(argv)
    try:
        meta = convert_file(args.checkpoint, args.output, classes=args.classes, resize=args.resize, crop=args.crop)
    except (ConversionError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.output}: {meta['variant']} ({meta['dialect']} dialect), {meta['num_classes']} classes, "
        f"{meta['parameters']:,} parameters"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
