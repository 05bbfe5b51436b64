"""``npshuffle predict SRC... --ray [ADDRESS] --output DIR``: the folder job on Ray Data.

This module is imported only for ``--ray`` (``import npshuffle`` never loads Ray). Without an
ADDRESS it starts a Ray of its own on this machine (``ray.init(address="local")``, stopped at the
end); with one (``auto``, ``HOST:PORT``, ``ray://...``) it joins that cluster. The path of a job:

1. the driver (this process) lists the photos (the CLI's folders and globs), drops those DIR's parts
   already hold (``--resume``) and cuts the list into blocks of a few batches
   (:func:`block_rows`): a block is the unit Ray retries and the unit whose results come back;
2. ``map_batches`` runs :class:`RayWorker` on a fixed pool of ``workers`` actors: each loads the model
   once, on ``threads_per_worker`` Numba threads, after warming its node's Numba cache
   (:func:`warm_node_cache`), and reads, decodes and classifies each batch's files itself;
3. the rows come back to the driver, which writes them to DIR as parts
   (:mod:`npshuffle.results_dir`) and draws the progress bar.

Why this shape:

* Paths go to the workers, not bytes from ``read_binary_files``: a missing, unreadable or broken
  file is one error row (a read task that fails would fail the whole job), and each file is read
  once, where it is decoded, instead of being copied through Ray's object store. The photos must
  be readable at the same path on every node (a shared or copied file system).
* The driver writes DIR, so each photo is written once by construction: Ray restarts a worker that
  dies and retries its block on the pool (``max_restarts=-1``, :data:`TASK_RETRIES`), and the
  driver drops any row whose photo it already has (a retried block whose first results had come
  back). Parts are written atomically and ``--resume`` skips what they hold, so a killed driver
  loses at most the rows not yet in a part. DIR needs no shared file system.
* A block that fails :data:`TASK_RETRIES` + 1 times (a photo that crashes its worker every time,
  say) does not fail the job (``max_errored_blocks = -1``): its photos are tried again one per
  block, and a photo that still kills its worker becomes an error row saying so.
* Resources: each actor asks Ray for ``min(threads_per_worker, spare / workers)`` CPUs, ``spare``
  being the cluster's CPUs less one (at least half of them) left for Ray's own work and this
  driver. With a whole CPU per actor, two actors on a 2-core machine took every CPU and a Ray Data
  job whose read tasks needed one hung; fractional requests only tell Ray's scheduler how to place
  actors (the Numba threads are what use the cores). ``workers`` defaults to the cluster's CPUs
  divided by ``threads_per_worker``.
* Ray writes much to the terminal (its warnings, a line per restarted worker, a C++ log line per
  actor): while the job runs the process's stdout and stderr go to ``DIR/_ray.log``, and the
  progress bar and the summary go to the terminal. Workers' own output stays in Ray's session logs
  (``log_to_driver=False``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import ray
import ray.data

from .batch import BatchClassifier
from .results_dir import ROWS_PER_PART, ResultsDir, fcntl

TASK_RETRIES = 3  # a block is tried at most 4 times (each time on a live, possibly restarted, worker)
BATCHES_PER_BLOCK = 4  # at most: fewer when there are too few photos for 4 blocks per worker
RAY_LOG = "_ray.log"

SCHEMA = pa.schema([  # the rows a worker returns: npshuffle.batch's columns and who made them
    ("path", pa.string()), ("class_index", pa.int64()), ("label", pa.string()), ("probability", pa.float32()),
    ("top_labels", pa.list_(pa.string())), ("top_probabilities", pa.list_(pa.float32())), ("error", pa.string()),
    ("worker", pa.string()),
])


def as_table(columns: dict, worker: str) -> pa.Table:
    """npshuffle.batch's output columns (NumPy arrays, lists in object arrays) as an Arrow table of
    :data:`SCHEMA`, with ``worker`` (``node:pid``) on every row."""
    n = len(columns["path"])
    return pa.table({
        "path": pa.array([str(p) for p in columns["path"]], pa.string()),
        "class_index": pa.array(np.asarray(columns["class_index"], np.int64)),
        "label": pa.array([str(s) for s in columns["label"]], pa.string()),
        "probability": pa.array(np.asarray(columns["probability"], np.float32)),
        "top_labels": pa.array([list(t) for t in columns["top_labels"]], pa.list_(pa.string())),
        "top_probabilities": pa.array([list(t) for t in columns["top_probabilities"]], pa.list_(pa.float32())),
        "error": pa.array([str(s) for s in columns["error"]], pa.string()),
        "worker": pa.array([worker] * n, pa.string()),
    }, schema=SCHEMA)


def error_rows(paths: list[str], error: str, worker: str = "driver") -> pa.Table:
    """Rows for photos that no worker classified, each with ``error`` (``{path}`` filled in)."""
    n = len(paths)
    return as_table({"path": paths, "class_index": [-1] * n, "label": [""] * n, "probability": [np.nan] * n,
                     "top_labels": [[] for _ in paths], "top_probabilities": [[] for _ in paths],
                     "error": [error.format(path=p) for p in paths]}, worker)


def warm_node_cache(model) -> None:
    """Compile (or find compiled) the Numba kernels in this node's cache, once per node: the first
    worker of a node compiles while the others wait on a lock file in the cache folder, then find
    the kernels there (see ``npshuffle warmup``; the cache is per node, beside the installed package
    or in the user's cache folder, never shared between machines with different CPUs)."""
    from . import kernel_cache
    from .warmup import warmup

    directory, _ = kernel_cache.cache_dir()
    if directory is None:  # nothing writable: each worker compiles for itself
        return
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".npshuffle-warmup.lock", "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # (released when the file closes)
        warmup([model] if model else None, measure=False)


class RayWorker:
    """One actor of the pool: ``RayWorker(...)(batch)`` classifies a batch ``{"path": array of str}``
    into a table of :data:`SCHEMA`, a row per path in order (a file that cannot be read or decoded is
    an error row). ``cwd``: the driver's working folder, entered when this node has it, so that
    relative paths mean what they meant on the command line (and rows name photos as it did)."""

    def __init__(self, model, top_k: int, threads: int, batch_size: int, fast_decode: bool, backend: str,
                 cwd: str | None = None):
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # (this process is the actor's alone)
        if backend == "numba":
            warm_node_cache(model)
        self.classifier = BatchClassifier(model, top_k=top_k, threads=threads if backend == "numba" else None,
                                          backend=backend, batch_size=batch_size, fast_decode=fast_decode)
        self.worker = f"{ray.get_runtime_context().get_node_id()[:8]}:{os.getpid()}"

    def __call__(self, batch: dict) -> pa.Table:
        return as_table(self.classifier({"path": batch["path"]}), self.worker)


def block_rows(photos: int, batch_size: int, workers: int) -> int:
    """Photos per block: up to :data:`BATCHES_PER_BLOCK` batches (a Ray task costs ~10-20 ms here,
    a batch of 16 ~50-100 ms), but small enough for 4 blocks per worker, so the pool stays busy to the
    end; always whole batches."""
    batches = math.ceil(photos / (4 * workers * batch_size))
    return batch_size * min(BATCHES_PER_BLOCK, max(1, batches))


def cpus_per_worker(cluster_cpus: float, workers: int, threads: int) -> float:
    """The CPUs each actor asks Ray for (see the module docstring): whole threads when the cluster
    has room, else a share that leaves Ray's own tasks and the driver a CPU (or half the CPUs)."""
    spare = max(cluster_cpus - 1, cluster_cpus / 2)
    return max(0.01, math.floor(100 * min(threads, spare / workers)) / 100)


@dataclass
class Job:
    """What a Ray run was asked to do. ``backend``: the workers' (numba, or numpy to compare)."""

    paths: list[str]
    model: str | None = None
    top_k: int = 5
    batch_size: int = 16
    workers: int | None = None
    threads_per_worker: int = 1
    fast_decode: bool = False
    backend: str = "numba"


@dataclass
class Report:
    """How a Ray run went: ``failed`` (path, error) per error row; ``workers_seen``: the ``node:pid``
    of every worker that returned rows (more than the pool's size: some died and were restarted)."""

    pool: int = 0
    cpus_each: float = 0.0
    cluster_cpus: float = 0.0
    written: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    workers_seen: set[str] = field(default_factory=set)
    actors_started: int = 0  # (pools' sizes, over both passes)
    retried_alone: int = 0
    seconds: float = 0.0

    @property
    def restarted(self) -> int:
        """Workers that died and were replaced (seen to return rows, that is)."""
        return max(0, len(self.workers_seen) - self.actors_started)


def _dataset(paths: list[str], rows: int, batch_size: int, job: Job, pool: int, cpus: float):
    """The Ray dataset of the job: blocks of ``rows`` paths through a pool of ``pool`` workers."""
    blocks = [pa.table({"path": pa.array(paths[i:i + rows], pa.string())}) for i in range(0, len(paths), rows)]
    constructor = {"model": job.model, "top_k": job.top_k, "threads": job.threads_per_worker,
                   "batch_size": batch_size, "fast_decode": job.fast_decode, "backend": job.backend,
                   "cwd": os.getcwd()}
    with warnings.catch_warnings():  # (Ray 2.60 deprecates remote arguments such as max_task_retries here, and
        warnings.simplefilter("ignore", DeprecationWarning)  # offers no other way to bound an actor task's retries)
        return ray.data.from_arrow(blocks).map_batches(
            RayWorker, fn_constructor_kwargs=constructor, compute=ray.data.ActorPoolStrategy(size=pool),
            batch_size=batch_size, batch_format="numpy", num_cpus=cpus, max_task_retries=TASK_RETRIES)


def plan(job: Job) -> Report:
    """The pool for ``job`` on the connected cluster: its size and each actor's CPU request."""
    report = Report(cluster_cpus=float(ray.cluster_resources().get("CPU", 1.0)))
    report.pool = job.workers or max(1, int(report.cluster_cpus // job.threads_per_worker))
    report.cpus_each = cpus_per_worker(report.cluster_cpus, report.pool, job.threads_per_worker)
    return report


def classify(job: Job, results: ResultsDir, report: Report | None = None, on_rows=None) -> Report:
    """Classify ``job.paths`` on the connected Ray cluster into ``results`` (the pool of ``report``,
    default :func:`plan`'s); ``on_rows(table)`` is called with the new rows of each block as they
    come back (progress bars; tests). Returns the report."""
    start = time.monotonic()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.max_errored_blocks = -1  # a block that keeps killing its worker: tried again photo by photo
    with contextlib.suppress(AttributeError):  # (older Ray)
        context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    report = report or plan(job)

    def take(table: pa.Table) -> None:
        report.workers_seen.update(w for w in set(table.column("worker").to_pylist()) if w != "driver")
        table = results.add(table)  # (only the photos not written yet)
        errors = table.column("error").to_pylist()
        report.failed += [(p, e) for p, e in zip(table.column("path").to_pylist(), errors, strict=True) if e]
        report.written += table.num_rows
        if on_rows is not None:
            on_rows(table)

    # names that are not UTF-8 cannot travel as Arrow text (nor go into Parquet): error rows here
    paths, odd = [], []
    for p in job.paths:
        (paths if _utf8(p) else odd).append(p)
    if odd:
        take(error_rows(odd, "{path}: the file name is not valid UTF-8, which Ray Data and Parquet need: rename it, "
                             "or classify it without --ray"))
    # first pass: blocks of a few batches; then what no worker could finish (a block that failed every
    # try), one photo per block, so that only a photo that kills its worker is left without an answer
    todo, rows, batch = paths, block_rows(len(paths), job.batch_size, report.pool), job.batch_size
    for attempt in range(2):
        if not todo:
            break
        if attempt:
            report.retried_alone = len(todo)
        pool = min(report.pool, len(todo))
        report.actors_started += pool
        dataset = _dataset(todo, rows, batch, job, pool, report.cpus_each)
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            take(table)
        todo, rows, batch = [p for p in todo if p not in results.written], 1, 1
    if todo:
        take(error_rows(todo, f"{{path}}: its Ray worker died on each of {TASK_RETRIES + 1} tries to classify it "
                              "(the decoder crashed on it?): try it alone, `npshuffle predict {path}`"))
    results.flush()
    report.seconds = time.monotonic() - start
    return report


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@contextlib.contextmanager
def ray_messages_to(log_path: str):
    """Send this process's stdout and stderr (file descriptors 1 and 2: Python's streams, Ray's
    loggers and its C++ core alike) to ``log_path`` while the block runs; yields a text stream on the
    terminal's stderr for npshuffle's own lines (progress bar, summary)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[1]), "w", encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                         errors="backslashreplace", buffering=1)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        yield terminal
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)
        terminal.close()


def unreachable(address: str) -> str | None:
    """Why ``HOST:PORT`` (or ``ray://HOST:PORT``) cannot be reached, or None (also for ``auto`` and
    forms not checked here): ``ray.init`` would retry an address that does not answer for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        return f"nothing answers at {host}:{port} ({exc.strerror or exc}): is `ray start --head` running there?"
    return None


def connect(address: str | None) -> tuple[bool, str]:
    """Start a local Ray (``address`` None) or join a cluster; (whether this call started Ray,
    a few words on where the job runs). A process already connected keeps its session."""
    if ray.is_initialized():
        return False, "the Ray session of this process"
    options = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:
        ray.init(address="local", **options)
        return True, "a local Ray"
    ray.init(address=address, **options)
    return True, cluster_name(address)


def cluster_name(address: str) -> str:
    return "the Ray cluster on this machine" if address == "auto" else f"the Ray cluster at {address}"


def run_predict(args, paths: list[str], skipped: int) -> int:
    """``npshuffle predict SRC... --ray [ADDRESS] --output DIR``, after the CLI expanded the inputs
    (and took this machine's ``--shard``): the exit status, as ``npshuffle predict``'s."""
    from .cli import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, fail, printable
    from .predict import load_model
    from .progress import Progress
    from .results_dir import DIR_FORMATS
    from .results_file import ResultsFileError, still_to_do

    fmt = args.format or "jsonl"
    if not args.output:
        return fail("--ray writes its results as files in a folder: give --output DIR")
    if fmt not in DIR_FORMATS:
        return fail(f"--ray writes {' or '.join(DIR_FORMATS)} parts (--format), not {fmt}")
    if args.annotate:
        return fail("--annotate does not run with --ray: annotate with a plain `npshuffle predict`")
    if args.threads is not None:
        return fail("with --ray, give each worker's Numba threads with --threads-per-worker (default 1)")
    threads = 1 if args.threads_per_worker is None else args.threads_per_worker
    rows_per_part = ROWS_PER_PART if args.rows_per_part is None else args.rows_per_part
    if threads < 1:
        return fail("--threads-per-worker must be at least 1")
    if rows_per_part < 1:
        return fail("--rows-per-part must be at least 1")
    backend = {"auto": "numba", "cpu": "numba"}.get(args.device, args.device)
    if backend == "cuda":
        return fail("--ray runs the CPU backends (numba, numpy); --device cuda is for a plain `npshuffle predict`")
    model = args.model
    if model and os.path.exists(model):
        model = os.path.abspath(model)  # (a model file: the workers may start in another folder)
    load_model(model, backend="numpy")  # a wrong name or a broken file: one line now, not from every worker
    try:
        results = ResultsDir(args.output, fmt, args.resume, rows_per_part)
    except ResultsFileError as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"{args.output}: cannot write there ({exc.strerror or exc})")
    paths = still_to_do(paths, results.done, args.output)
    if not paths:
        results.close()
        return EXIT_OK
    job = Job(paths, model, args.top_k, args.batch_size, args.workers, threads, args.fast_decode, backend)
    log = os.path.join(args.output, RAY_LOG)
    problem = unreachable(args.ray) if args.ray and not ray.is_initialized() else None
    if problem:
        results.close()
        return fail(f"--ray {args.ray}: {problem}")
    print(printable(f"{'starting a local Ray' if not args.ray else 'joining ' + cluster_name(args.ray)} "
                    f"(its messages go to {log})"), file=sys.stderr)
    started, report = False, None
    try:
        with ray_messages_to(log) as terminal:
            try:
                started, where = connect(args.ray or None)
            except Exception as exc:  # (ray.init raises ConnectionError, RuntimeError, ValueError ...)
                print(printable(f"npshuffle: error: {where_of(args.ray)}: cannot start or join Ray ({reason(exc)})"
                                + token_hint(log), stream=terminal), file=terminal)
                return EXIT_ERROR
            report = plan(job)
            print(printable(f"{where}, {report.cluster_cpus:g} CPUs: {report.pool} worker(s) x "
                            f"{job.threads_per_worker} thread(s), each asking Ray for {report.cpus_each:g} CPU",
                            stream=terminal), file=terminal)
            progress = Progress(len(paths), log=False, stream=terminal, status=lambda: f"Ray, {report.pool} workers")
            try:
                classify(job, results, report, on_rows=lambda table: progress.update(table.num_rows))
            except ray.exceptions.RayError as exc:
                progress.close()
                print(printable(f"npshuffle: error: the Ray job failed ({reason(exc)}); see {log}; the results so far "
                                f"are in {args.output}: run the same command with --resume to go on", stream=terminal),
                      file=terminal)
                return EXIT_ERROR
            finally:
                progress.close()
                if started:
                    ray.shutdown()
    finally:
        results.close()  # (a Ctrl-C too: the rows that came back are written)
    if skipped:
        print(f"note: skipped {skipped} file(s) without an image extension inside the folders", file=sys.stderr)
    notes = [f"{report.restarted} worker(s) died and were restarted, their photos retried"] if report.restarted else []
    if report.retried_alone:
        notes.append(f"{report.retried_alone} photo(s) whose batch failed every try were tried again one by one")
    print(f"{args.output}: {report.written} result(s) in {results.parts_written} new part(s), {report.seconds:.1f} s, "
          f"{report.written / max(report.seconds, 1e-9):.0f} photos/s" + "".join(f"; {n}" for n in notes),
          file=sys.stderr)
    if report.failed:
        print(f"{len(report.failed)} of {len(paths)} input(s) could not be classified:", file=sys.stderr)
        for source, error in report.failed:
            message = error if error.startswith(source) else f"{source}: {error}"
            print(f"  {printable(message)}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def reason(exc: BaseException) -> str:
    """One line for a Ray error: the error a worker raised (the last line of the traceback Ray
    carries, ``ValueError: ...``) when there is one, else the first line; without colour codes."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1] if len(lines) > 1 and re.match(r"[A-Za-z_][\w.]*: ", lines[-1]) else lines[0]


def token_hint(log: str) -> str:
    """What to do when Ray's log says the cluster refused this process for want of its token (Ray
    2.5x turns token authentication on for a cluster that ``ray start`` makes, but a driver given an
    explicit address does not use the token unless told to)."""
    sys.stderr.flush()
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.path.getsize(log) - 65536))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    if "InvalidAuthToken" not in tail:
        return ""
    return (": the cluster wants its authentication token: run with RAY_AUTH_MODE=token and the head's token in "
            "~/.ray/auth_token or RAY_AUTH_TOKEN (or --ray auto on the head node)")


def where_of(address: str) -> str:
    return f"--ray {address}" if address else "--ray"
