"""``npshuffle export MODEL -o FILE``: a model in a format other tools read, chosen by FILE's extension.

======================  =========================================================================
``.safetensors``        the folded weights (F32, named as in the model file: ``stem.weight``, ...)
                        and the model file's metadata as one JSON string,
                        ``__metadata__["npshuffle"]``; npshuffle loads it wherever it takes a model
                        file (``--model x.safetensors``, ``npshuffle.predict(..., model=...)``)
``.onnx``               the network as a standard ONNX graph, opset 17 (``npshuffle.onnx_graph``):
                        input ``"input"`` float32 (batch, 3, crop, crop), output ``"logits"``, the
                        preprocessing recipe and class names in its ``metadata_props``; needs the
                        onnx package (``pip install "npshuffle[onnx]"``), checked with
                        ``onnx.checker.check_model(full_check=True)`` before it is written
``.npz``                npshuffle's own model file (from a ``.safetensors`` one, say)
======================  =========================================================================

MODEL is a bundled model's name (``npshuffle list``) or a model file. Every file is written
atomically (``npshuffle.atomic``): a kill mid-write leaves no half-written file. onnx is imported
only when an ``.onnx`` file is asked for.
"""

from __future__ import annotations

import os

from .archs import variant_name
from .atomic import write_atomically
from .model_file import ModelFile, load_model_file, write_model_file
from .zoo import resolve

FORMATS = (".safetensors", ".onnx", ".npz")
ONNX_EXTRA = 'pip install "npshuffle[onnx]"'


def add_export_arguments(parser) -> None:
    parser.add_argument("model",
                        help="bundled model name (see `npshuffle list`) or a model file (.npz or .safetensors)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="file to write: .safetensors (weights + metadata), .onnx (ONNX graph, opset 17; needs "
                             f"{ONNX_EXTRA}) or .npz")


def output_problem(output: str) -> str | None:
    """Why ``output`` cannot be written (checked before any work), or None."""
    if os.path.isdir(output):
        return f"{output}: is a folder; give the file to write, e.g. {os.path.join(output, 'model.safetensors')}"
    suffix = os.path.splitext(output)[1].lower()
    if suffix not in FORMATS:
        what = f"no format npshuffle writes as {suffix!r}" if suffix else "no extension to tell the format by"
        return f"{output}: {what}; end the file name in {', '.join(FORMATS[:-1])} or {FORMATS[-1]}"
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        return f"{output}: the folder {folder} does not exist"
    return None


def write_onnx(model: ModelFile, output: str) -> None:
    """The ONNX graph of ``model``, checked, written atomically to ``output``. ImportError without onnx."""
    import onnx

    from .onnx_graph import build_onnx_model

    onnx_model = build_onnx_model(model)
    onnx.checker.check_model(onnx_model, full_check=True)
    data = onnx_model.SerializeToString()
    write_atomically(output, lambda f: f.write(data))


def run_export(args) -> int:
    from .cli import EXIT_OK, fail

    problem = output_problem(args.output)
    if problem:
        return fail(problem)
    onnx_out = args.output.lower().endswith(".onnx")
    if onnx_out:
        try:
            import onnx  # noqa: F401 - only to say what to install before any work is done
        except ImportError as exc:
            return fail(f"writing ONNX needs the onnx package ({exc}): {ONNX_EXTRA}")
    _, path = resolve(args.model)  # (a ModelFileError becomes one line in cli.main)
    model = load_model_file(path)
    try:
        if onnx_out:
            write_onnx(model, args.output)
        else:
            write_model_file(args.output, model)
    except OSError as exc:
        return fail(f"{args.output}: cannot write it ({exc.strerror or exc})")
    recipe = model.recipe
    what = f"{variant_name(model.spec)} ({model.dialect} dialect), {len(model.class_names)} classes"
    if onnx_out:
        from .onnx_graph import OPSET

        print(f"wrote {args.output}: {what}, ONNX opset {OPSET}; input 'input' float32 (batch, 3, {recipe['crop']}, "
              f"{recipe['crop']}) {recipe['channel_order']}, output 'logits'; recipe and class names in metadata_props")
    else:
        print(f"wrote {args.output}: {what}, {len(model.weights)} float32 tensors and the model's metadata")
    return EXIT_OK
