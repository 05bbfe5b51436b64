"""The ``npshuffle`` command: predict | list | convert | export | warmup | profile | lab | serve | train | eval.

Exit status: 0 success; 1 some inputs could not be classified (the others were, and each failure
is named on stderr); 2 nothing could run (bad arguments, unknown or malformed model, no backend).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import importlib
import importlib.machinery
import importlib.util
import json
import os
import signal
import sys

from .annotate import annotate, check_output_folder
from .backends import NUMBA_CPU_BACKENDS, BackendError
from .images import IMAGE_EXTENSIONS, ImageError
from .model_file import ModelFileError
from .progress import Progress
from .results_file import CSV_HEADER, ResultsFile, ResultsFileError, csv_rows, parse_shard, shard_of, still_to_do

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR = 0, 1, 2
DEVICES = ("auto", "numpy", "numba", "cuda", "cpu")


# --------------------------------------------------------------------------------------------------
# input expansion


def expand_inputs(arguments: list[str]) -> tuple[list[str], int]:
    """Files as given, folders walked recursively (image extensions only, sorted), globs expanded.

    Returns (paths, number of files skipped inside folders for not having an image extension).
    A name that matches nothing stays in the list, so it is reported as missing.
    """
    paths: list[str] = []
    skipped = 0
    for argument in arguments:
        if os.path.isdir(argument):
            for root, dirs, files in os.walk(argument):
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_EXTENSIONS):
                        paths.append(os.path.join(root, name))
                    elif not name.startswith("."):
                        skipped += 1
        elif not os.path.exists(argument) and glob.has_magic(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            files = [m for m in matches if os.path.isfile(m)]
            folders = [m for m in matches if os.path.isdir(m)]
            paths.extend(files or ([] if folders else [argument]))
            for folder in folders:
                more, more_skipped = expand_inputs([folder])
                paths.extend(more)
                skipped += more_skipped
        else:
            paths.append(argument)
    return paths, skipped


# --------------------------------------------------------------------------------------------------
# output formats


def printable(text: str, controls: bool = True, stream=None) -> str:
    """``text`` safe to write to ``stream`` (default stdout): characters its encoding cannot hold
    (a lone surrogate in a class name) as ``\\x..`` escapes, and with ``controls`` the control
    characters too (a class name could carry escape sequences that rewrite a terminal's screen)."""
    if controls:
        text = "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in text)
    encoding = getattr(stream or sys.stdout, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)


class TableWriter:
    def __init__(self, out):
        self.out = out

    def write(self, p) -> None:
        if p.error is not None:
            print(printable(f"{p.source}\n    error: {p.error}"), file=self.out)
            return
        print(printable(p.source), file=self.out)
        labels = [printable(label) for label, _ in p.top]
        width = max(len(label) for label in labels)
        for label, (_, probability) in zip(labels, p.top, strict=True):
            print(f"    {label:<{width}}  {100 * probability:6.2f} %", file=self.out)

    def close(self) -> None:
        pass


class JsonWriter:
    """One JSON array, streamed item by item; closed however the run ends (Ctrl-C included)."""

    def __init__(self, out):
        self.out, self.first = out, True
        out.write("[")

    def write(self, p) -> None:
        self.out.write(("\n" if self.first else ",\n") + json.dumps(p.to_dict()))
        self.first = False

    def close(self) -> None:
        self.out.write("\n]\n")


class JsonLinesWriter:
    """One JSON object per line: every complete line is valid on its own, whatever happens later."""

    def __init__(self, out):
        self.out = out

    def write(self, p) -> None:
        self.out.write(json.dumps(p.to_dict()) + "\n")

    def close(self) -> None:
        pass


class CsvWriter:
    """One row per (image, rank); failed images get one row with the error."""

    def __init__(self, out):
        self.writer = csv.writer(out)
        self.writer.writerow(CSV_HEADER)
        # data, usually for a file: kept as it is, but for what the encoding cannot hold; escaped
        # like the table when it goes to a terminal
        self.out, self.tty = out, out.isatty()

    def clean(self, text: str) -> str:
        return printable(text, controls=self.tty, stream=self.out)

    def write(self, p) -> None:
        self.writer.writerows(csv_rows(p, self.clean))

    def close(self) -> None:
        pass


WRITERS = {"table": TableWriter, "json": JsonWriter, "jsonl": JsonLinesWriter, "csv": CsvWriter}


# --------------------------------------------------------------------------------------------------
# commands


def backend_for(device: str) -> str:
    return "auto" if device == "cpu" else device  # "cpu" is kept as another name for auto


def cmd_predict(args) -> int:
    from .predict import load_model, predict_stream

    if args.top_k < 1:
        return fail("--top-k must be at least 1")
    if args.batch_size < 1:
        return fail("--batch-size must be at least 1")
    if args.threads is not None and args.threads < 1:
        return fail("--threads must be at least 1")
    if args.workers is not None and args.workers < 1:
        return fail("--workers must be at least 1")
    if args.tta and (args.ray is not None or args.fast_decode):
        return fail("--tta runs on this machine and on the exact decode: leave out " +
                    ("--ray" if args.ray is not None else "--fast-decode"))
    if args.ray is not None:
        return cmd_predict_ray(args)
    if args.format == "parquet":
        return fail("--format parquet writes Parquet parts with --ray --output DIR; without --ray: table, csv, json "
                    "or jsonl")
    for option, value in (("--threads-per-worker", args.threads_per_worker), ("--rows-per-part", args.rows_per_part)):
        if value is not None:
            return fail(f"{option} is for --ray runs (without --ray: --threads and --workers)")
    args.format = args.format or "table"
    device = backend_for(args.device)
    if args.threads is not None and device not in NUMBA_CPU_BACKENDS:
        return fail(f"--threads sets the Numba CPU kernels' threads; --device {args.device} does not run them "
                    "(NumPy's BLAS takes OPENBLAS_NUM_THREADS / OMP_NUM_THREADS from the environment)")
    try:
        model = load_model(args.model, backend=device, threads=args.threads)
    except ValueError as exc:  # a --threads the machine cannot give
        return fail(str(exc))
    paths, skipped, problem = selected_inputs(args)
    if problem:
        return fail(problem)
    if args.resume and not args.output:
        return fail("--resume continues an --output file: give --output FILE too")
    if args.annotate:
        problem = check_output_folder(args.annotate)
        if problem:
            return fail(problem)
    results = None
    if args.output:
        try:
            results = ResultsFile(args.output, args.top_k, len(model.class_names), args.resume)
        except ResultsFileError as exc:
            return fail(str(exc))
        except OSError as exc:
            return fail(f"{args.output}: cannot write it ({exc.strerror or exc})")
        paths = still_to_do(paths, results.done, args.output)
    inputs = {os.path.realpath(p) for p in paths}  # --annotate never writes over any of these
    model.expect(len(paths))
    writer = results if results is not None else WRITERS[args.format](sys.stdout)
    progress = Progress(len(paths), log=False, status=lambda: model.status)
    failures: list[tuple[str, str]] = []
    annotated_names: set[str] = set()
    try:
        for count, prediction in enumerate(predict_stream(paths, model, args.top_k, args.batch_size,
                                                          workers=args.workers, fast_decode=args.fast_decode,
                                                          tta=args.tta), 1):
            writer.write(prediction)
            if results is not None and count % args.batch_size == 0:
                results.flush()  # (a kill loses at most the batch in flight)
            progress.update()
            if prediction.error is not None:
                failures.append((prediction.source, prediction.error))
            elif args.annotate:
                problem = annotate(prediction, args.annotate, annotated_names, args.overwrite, inputs)
                if problem:
                    failures.append((prediction.source, problem))
    finally:
        model.close()  # a background compile still running ends with the command
        writer.close()  # (also on Ctrl-C: a JSON array is closed, so the output stays valid JSON)
        sys.stdout.flush()
        progress.close()
    if skipped:
        print(f"note: skipped {skipped} file(s) without an image extension inside the folders", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(paths)} input(s) could not be classified:", file=sys.stderr)
        for source, error in failures:
            message = error if error.startswith(source) else f"{source}: {error}"
            print(f"  {printable(message)}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def selected_inputs(args) -> tuple[list[str], int, str | None]:
    """(paths, files skipped in folders, None) of the command line's inputs and ``--shard``, or
    ``([], 0, why not)``."""
    paths, skipped = expand_inputs(args.paths)
    if not paths:
        return [], 0, "no images found in " + ", ".join(args.paths)
    if args.shard:
        try:
            paths = this_shard(paths, args.shard)
        except ValueError as exc:
            return [], 0, str(exc)
    return paths, skipped, None


def this_shard(paths: list[str], shard: str) -> list[str]:
    """The paths of ``--shard I/N`` (ValueError with the reason for a malformed one)."""
    index, count = parse_shard(shard)
    return [p for p in paths if shard_of(p, count) == index]


def cmd_predict_ray(args) -> int:
    """``npshuffle predict --ray``: the inputs expanded here, the job in ``npshuffle.ray_job``."""
    try:
        from . import ray_job
    except ImportError as exc:  # Ray (or pyarrow) not installed: say what to install, not a traceback
        return fail(f"--ray needs {exc.name or 'Ray'}: pip install 'npshuffle[ray]'")
    if args.ray and os.path.exists(args.ray):
        return fail(f"--ray {args.ray}: that is a file or folder, not a Ray address: give the photos before --ray "
                    "(npshuffle predict SRC... --ray [ADDRESS])")
    paths, skipped, problem = selected_inputs(args)
    if problem:
        return fail(problem)
    return ray_job.run_predict(args, paths, skipped)


def cmd_list(args) -> int:
    from .zoo import describe_models

    rows = describe_models()
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    columns = ["name", "arch", "classes", "params", "MACs", "size", "input", "accuracy"]
    table = [[
        r["name"], r["arch"], str(r["classes"]), f"{r['params'] / 1e6:.2f} M", f"{r['MACs'] / 1e6:.0f} M",
        f"{r['size'] / 2**20:.1f} MiB", r["input"], r["accuracy"],
    ] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    print("\nsources: " + "; ".join(sorted({f"{r['source']}" for r in rows})))
    return EXIT_OK


def cmd_convert(args) -> int:
    from weights_convert import ConversionError, convert_file

    try:
        meta = convert_file(args.checkpoint, args.output, classes=args.classes, resize=args.resize, crop=args.crop)
    except ConversionError as exc:
        return fail(str(exc))
    print(
        f"wrote {args.output}: {meta['variant']} ({meta['dialect']} dialect), {meta['num_classes']} classes, "
        f"{meta['parameters']:,} parameters"
    )
    return EXIT_OK


def fail(message: str) -> int:
    print(printable(f"npshuffle: error: {message}", stream=sys.stderr), file=sys.stderr)
    return EXIT_ERROR


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser. ``command``: the sub-command about to run, so that the heavy ones
    (train imports torch) load their module only when they are the one asked for."""
    parser = argparse.ArgumentParser(prog="npshuffle", description="ShuffleNet image classification in NumPy/Numba.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="classify images (files, folders, globs)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (searched recursively) or globs")
    p.add_argument("--model", "-m", help="bundled model name (`npshuffle list`) or a model file, .npz or .safetensors")
    p.add_argument("--top-k", "-k", type=int, default=5, help="how many classes to show per image (default 5)")
    p.add_argument("--format", "-f", choices=[*sorted(WRITERS), "parquet"],
                   help="output format (default table; with --ray: jsonl, the default, or parquet parts)")
    p.add_argument("--annotate", metavar="DIR", help="write a copy of each image with its top-1 label drawn on it")
    p.add_argument("--overwrite", action="store_true", help="let --annotate replace files already in DIR")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto (default: NumPy for a few images, Numba for many, compiling it in the background "
                        "the first time), numpy, numba, cuda (cpu: same as auto)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="threads for the Numba kernels (--device auto or numba; default: all cores)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="threads that each decode, prepare and classify a batch of photos, in parallel (default: "
                        "one per core the network may use, see --threads; 1: one batch at a time)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write the results to FILE (.jsonl or .csv) as they are made, on disk after every batch")
    p.add_argument("--resume", action="store_true",
                   help="continue an --output file: skip the photos it holds, append the rest (after a crash or "
                        "Ctrl-C, the same command again finishes the job, every photo once)")
    p.add_argument("--shard", metavar="I/N", help="only this machine's share I of N (0 <= I < N) of the photos, "
                                                  "by a stable hash of their paths")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run the job on Ray Data: a local Ray on this machine, or the cluster at ADDRESS (auto: the "
                        "one `ray start` made on this machine; or HOST:PORT); results go to --output DIR as .jsonl "
                        "or .parquet parts, --resume continues them; --workers sets the actor pool (default: the "
                        "cluster's CPUs / --threads-per-worker)")
    p.add_argument("--threads-per-worker", type=int, metavar="N",
                   help="with --ray: the Numba threads of each worker (default 1)")
    p.add_argument("--rows-per-part", type=int, metavar="N",
                   help="with --ray: photos per result file in DIR (default 10000; a part is also written at "
                        "least every minute, so a kill loses at most that)")
    p.add_argument("--tta", nargs="?", const="flip", choices=("flip", "ten-crop"),
                   help="test-time augmentation: average the probabilities of the centre crop and its mirror "
                        "(flip, the default) or of ten crops (ten-crop); 2x / 7x the time, and no gain measured "
                        "on the flower models (docs/robustness.md)")
    p.add_argument("--fast-decode", action="store_true",
                   help="decode big photos (phone JPEGs) straight to about twice the model's input size: several "
                        "times faster, not pixel-identical (see the README for its effect on accuracy)")
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser("list", help="list the bundled models")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(run=cmd_list)

    p = sub.add_parser("convert", help="convert a PyTorch or safetensors checkpoint into a model file")
    p.add_argument("checkpoint", help="torchvision-style or Megvii ShuffleNet-Series .pth/.pt/.pth.tar/.safetensors")
    p.add_argument("-o", "--output", required=True, help="model file to write (.npz, or .safetensors)")
    p.add_argument("--classes", help="class_indices.json or a text file with one class name per line")
    p.add_argument("--resize", type=int, help="override the recipe's shorter-side resize (torchvision x1.5/x2.0: 232)")
    p.add_argument("--crop", type=int, help="override the recipe's centre crop")
    p.set_defaults(run=cmd_convert)

    for name, module_name, add_arguments, run, help_text in OPTIONAL_COMMANDS:
        if not module_exists(module_name):
            continue
        p = sub.add_parser(name, help=help_text)
        if name == command:
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:  # torch missing: say what to install, not a traceback
                p.add_argument("rest", nargs=argparse.REMAINDER)
                missing = f"`npshuffle {name}` needs {exc.name or 'an optional package'}: pip install torch==2.13.0"
                p.set_defaults(run=lambda args, m=missing: fail(m))
                continue
            getattr(module, add_arguments)(p)
            p.set_defaults(run=getattr(module, run))
    return parser


def module_exists(name: str) -> bool:
    """Whether module ``name`` is installed, found without importing it or its own package
    (``importlib.util.find_spec`` would import ``npshuffle.training`` to look inside it)."""
    package, _, _ = name.rpartition(".")
    spec = importlib.util.find_spec(package)
    return (spec is not None and spec.submodule_search_locations is not None
            and importlib.machinery.PathFinder.find_spec(name, spec.submodule_search_locations) is not None)


# (command, module, its add-arguments function, its run function, help): imported only when used
OPTIONAL_COMMANDS = (
    ("train", "npshuffle.training.train", "add_train_arguments", "run_train",
     "train or fine-tune a model (needs torch: pip install npshuffle[train])"),
    ("eval", "npshuffle.training.evaluate", "add_eval_arguments", "run_eval",
     "accuracy and confusion matrix of a model on a class-per-folder data set"),
    ("export", "npshuffle.export", "add_export_arguments", "run_export",
     "write a model as .safetensors or .onnx (ONNX needs: pip install npshuffle[onnx])"),
    ("warmup", "npshuffle.warmup", "add_warmup_arguments", "run_warmup",
     "compile and cache the Numba kernels ahead of time (Dockerfiles, cluster nodes, CI images)"),
    ("profile", "npshuffle.profiling", "add_profile_arguments", "run_profile",
     "time a model layer by layer beside its multiply-adds and memory access cost"),
    ("lab", "npshuffle.lab", "add_lab_arguments", "run_lab",
     "the ShuffleNet V2 paper's four guidelines (g1-g4), measured on this machine"),
    ("serve", "npshuffle.serve", "add_serve_arguments", "run_serve",
     "classify images over HTTP (POST /predict), batching concurrent requests"),
)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, a scheduler stopping a job), raised in the main thread so that the
    same clean-up as Ctrl-C runs: temporary files removed, results on disk closed cleanly."""


def _raise_terminated(signum, frame):
    raise Terminated


@contextlib.contextmanager
def sigterm_as_exception():
    """While the command runs, SIGTERM raises :class:`Terminated` instead of ending the process on
    the spot (Python's default), which would skip every ``finally``. Commands that handle SIGTERM
    themselves (``serve``, ``train``) install their own handler inside this one. Outside the main
    thread (e.g. ``main`` called from a test's thread) signals cannot be handled: nothing changes."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        with sigterm_as_exception():
            return args.run(args)
    except (ModelFileError, BackendError, ImageError) as exc:
        return fail(str(exc))
    except Terminated:
        print("\nterminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `npshuffle predict ... | head`
        # the reader is gone: send what is still buffered nowhere, so that the interpreter's last
        # flush of stdout does not fail again on the way out
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
