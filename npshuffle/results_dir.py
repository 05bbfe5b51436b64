"""``npshuffle predict --ray --output DIR``: a folder of result files that survives a crash.

DIR holds *parts*, ``part-00000.jsonl``, ``part-00001.jsonl``, ... (or ``.parquet``), each written
whole and atomically (:mod:`npshuffle.atomic`): a part on disk is complete, and a kill leaves at
most a hidden temporary file, which the next run removes. ``--resume`` reads the photos the parts
hold and the run classifies only the others, in new parts; rows are never rewritten. One process
(the Ray job's driver) writes DIR, and a lock file (``DIR/.lock``, held while the run lasts) keeps
a second run from writing it at the same time.

Formats (one per folder):

* ``.jsonl``: one JSON object per photo per line, as ``--output FILE.jsonl`` writes them
  (``Prediction.to_dict``: ``source``, then ``class_index`` and ``top``, or ``error``);
* ``.parquet``: the columns of :mod:`npshuffle.batch` (``path``, ``class_index``, ``label``,
  ``probability``, ``top_labels``, ``top_probabilities``, ``error``), one row per photo.

Names starting with ``_`` or ``.`` are not results (pyarrow's and pandas' folder readers skip
them too): ``_ray.log`` keeps Ray's own messages. ``pandas.read_parquet(DIR)`` reads a Parquet
folder whole; ``cat DIR/part-*.jsonl`` joins a JSONL one.

The rows come in as pyarrow tables with the batch columns; pyarrow (a Ray Data dependency) is
imported only here, when a folder is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time

from .atomic import write_atomically
from .results_file import ResultsFileError

DIR_FORMATS = ("jsonl", "parquet")
PART = re.compile(r"^part-(\d{5,})\.(jsonl|parquet)$")
LOCK_NAME = ".lock"
ROWS_PER_PART = 10_000  # a part is written when this many rows wait (or PART_SECONDS passed) ...
PART_SECONDS = 60.0  # ... so a kill loses at most a minute of work, and a million photos make ~100 files
BATCH_COLUMNS = ("path", "class_index", "label", "probability", "top_labels", "top_probabilities", "error")

try:  # (Unix; elsewhere two runs on one folder are not caught)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def jsonl_line(row: dict) -> str:
    """A row of batch columns as ``--output FILE.jsonl`` writes a Prediction (same keys, same order)."""
    if row["error"]:
        return json.dumps({"source": row["path"], "error": row["error"]}) + "\n"
    top = [{"label": label, "probability": p}
           for label, p in zip(row["top_labels"], row["top_probabilities"], strict=True)]
    return json.dumps({"source": row["path"], "class_index": row["class_index"], "top": top}) + "\n"


def _sources_of(path: str, fmt: str) -> list[str]:
    """The photos a part holds."""
    if fmt == "jsonl":
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return [json.loads(line)["source"] for line in f]
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["path"]).column("path").to_pylist()


class ResultsDir:
    """The output folder of a Ray run: :meth:`add` batches of rows (pyarrow tables with the batch
    columns), :meth:`close` at the end. ``done``: the photos its parts already held (``resume``);
    :attr:`written`: the photos this run wrote or buffered, each once (a repeated one is dropped)."""

    def __init__(self, path: str, fmt: str, resume: bool, rows_per_part: int = ROWS_PER_PART,
                 part_seconds: float = PART_SECONDS):
        if fmt not in DIR_FORMATS:
            raise ResultsFileError(f"{path}: a results folder holds {' or '.join(DIR_FORMATS)} parts, not {fmt}")
        if os.path.exists(path) and not os.path.isdir(path):
            raise ResultsFileError(f"{path} is a file: with --ray, --output names a folder for the result parts")
        os.makedirs(path, exist_ok=True)
        self.path, self.format = path, fmt
        self.rows_per_part, self.part_seconds = rows_per_part, part_seconds
        self.lock = open(os.path.join(path, LOCK_NAME), "a")  # noqa: SIM115 (held until close)
        if fcntl is not None:
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.lock.close()
                raise ResultsFileError(f"{path}: another run is writing this folder (let it finish, or stop it)") \
                    from None
        try:
            self.done, self.next_index = self._read_parts(resume)
        except BaseException:
            self.lock.close()
            raise
        self.written: set[str] = set()
        self.buffer: list = []  # pyarrow tables waiting for the next part
        self.buffered = 0
        self.last_write = time.monotonic()
        self.parts_written = 0

    def _read_parts(self, resume: bool) -> tuple[set[str], int]:
        """(the photos the parts hold, the number of the next part); removes a killed run's temporaries."""
        names = sorted(os.listdir(self.path))
        parts = [(name, PART.match(name)) for name in names]
        parts = [(name, m) for name, m in parts if m]
        if parts and not resume:
            raise ResultsFileError(f"{self.path} holds results already: add --resume to continue them, or give an "
                                   "empty or new folder")
        other = {m.group(2) for _, m in parts} - {self.format}
        if other:
            raise ResultsFileError(f"{self.path} holds .{other.pop()} parts: continue it with --format "
                                   f"{'parquet' if self.format == 'jsonl' else 'jsonl'}, or give another folder")
        for name in names:  # what write_atomically leaves when it is killed mid-write
            if name.startswith(".part-") and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.path, name))
        done: set[str] = set()
        for name, _ in parts:
            try:
                done.update(_sources_of(os.path.join(self.path, name), self.format))
            except Exception as exc:  # (json, KeyError, pyarrow's own errors alike)
                raise ResultsFileError(f"{os.path.join(self.path, name)}: cannot resume from it, it is not one of "
                                       f"npshuffle's result parts ({type(exc).__name__}: {exc})") from None
        return done, 1 + max((int(m.group(1)) for _, m in parts), default=-1)

    def add(self, table):
        """Keep the rows of ``table`` whose photo this run has not written yet (a batch that Ray retried
        after its first result came back must not write a photo twice); write a part when enough wait.
        Returns the rows kept (a pyarrow table)."""
        import pyarrow as pa

        paths = table.column("path").to_pylist()
        keep = [p not in self.written and p not in self.done for p in paths]
        if not all(keep):
            table = table.filter(pa.array(keep))
        self.written.update(p for p, k in zip(paths, keep, strict=True) if k)
        if table.num_rows:
            self.buffer.append(table.select(list(BATCH_COLUMNS)))
            self.buffered += table.num_rows
        if self.buffered >= self.rows_per_part or time.monotonic() - self.last_write >= self.part_seconds:
            self.flush()
        return table

    def flush(self) -> None:
        """The rows waiting, as one new part (written atomically), if there are any."""
        self.last_write = time.monotonic()
        if not self.buffered:
            return
        import pyarrow as pa

        table = pa.concat_tables(self.buffer)
        name = os.path.join(self.path, f"part-{self.next_index:05d}.{self.format}")
        if self.format == "jsonl":
            text = "".join(jsonl_line(row) for row in table.to_pylist())
            write_atomically(name, lambda f: f.write(text.encode("utf-8", "surrogateescape")))
        else:
            import pyarrow.parquet as pq

            write_atomically(name, lambda f: pq.write_table(table, f))
        self.next_index += 1
        self.parts_written += 1
        self.buffer, self.buffered = [], 0

    def close(self) -> None:
        """Write what waits, and let go of the folder."""
        try:
            self.flush()
        finally:
            self.lock.close()
