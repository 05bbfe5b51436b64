"""``npshuffle predict --output FILE [--resume]``: a results file that survives a crash.

Each result is written as it is made and the file is flushed to disk after every batch (write,
flush, fsync), so a kill loses at most the batch in flight. ``--resume`` reads the file back, keeps
every photo it holds completely, cuts off what a kill left half-written (the end of the file,
after its last complete photo), and the run classifies only the photos that are missing, appending
them: after any crash or Ctrl-C, running the same command again finishes the job with every photo
exactly once. Photos are known by their path as the command line expanded it.

Formats, by the file's extension:

* ``.jsonl``: one JSON object per photo, per line (``Prediction.to_dict``): complete when its line is;
* ``.csv``: one row per (photo, rank), as ``--format csv`` prints them; a photo is complete with
  its error row, or with all its ranks (``min(top_k, classes)`` rows).

``shard_of`` picks a stable 1/N of the inputs (by a hash of the path), for splitting a job over
machines without an engine: ``--shard I/N`` on machine I of N.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys

FORMATS = (".jsonl", ".csv")
CSV_HEADER = ["source", "rank", "class_index", "label", "probability", "error"]


class ResultsFileError(ValueError):
    """An output file that cannot be used (wrong extension, exists without --resume, not ours)."""


def shard_of(path: str, shards: int) -> int:
    """The shard (0 .. shards - 1) a path belongs to: a hash of its text, the same on every machine."""
    digest = hashlib.sha256(path.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N), 0 <= I < N; ValueError with a clear message otherwise."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes I/N (this machine's share I of N, counted from 0), not {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"--shard {text}: need N >= 1 and 0 <= I < N")
    return index, count


def _complete_jsonl(data: bytes) -> tuple[set[str], int]:
    """(sources of the complete lines, the byte length they take up)."""
    done, end = set(), 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # the last line, cut by a kill
        try:
            source = json.loads(line)["source"]
        except (ValueError, KeyError, TypeError):
            raise ResultsFileError("a line of it is not one of npshuffle's JSON results") from None
        done.add(source)
        end += len(line)
    return done, end


def _complete_csv(data: bytes, ranks: int) -> tuple[set[str], int]:
    """(sources whose rows are all there, the byte length of the rows of those photos)."""
    text = data.decode("utf-8", "surrogateescape")
    lines = text.splitlines(keepends=True)
    if not lines or next(csv.reader([lines[0]])) != CSV_HEADER:
        raise ResultsFileError("it does not start with npshuffle's CSV header")
    done: set[str] = set()
    end = len(lines[0].encode("utf-8", "surrogateescape"))
    current, current_rows, current_bytes = None, 0, 0
    for line in lines[1:]:
        if not line.endswith("\n"):
            break
        row = next(csv.reader([line]))
        if len(row) != len(CSV_HEADER):
            break
        source, rank, error = row[0], row[1], row[5]
        if source != current:
            current, current_rows, current_bytes = source, 0, 0
        current_rows += 1
        current_bytes += len(line.encode("utf-8", "surrogateescape"))
        if error or (rank == str(ranks) and current_rows == ranks):
            done.add(source)
            end += current_bytes
            current, current_rows, current_bytes = None, 0, 0
    return done, end


def csv_rows(prediction, clean=lambda text: text) -> list[list]:
    """A prediction as CSV rows under :data:`CSV_HEADER`: one per rank, or one with the error
    (``--format csv`` and ``--output FILE.csv`` alike; ``clean`` escapes text for a terminal)."""
    if prediction.error is not None:
        return [[clean(prediction.source), "", "", "", "", clean(prediction.error)]]
    return [[clean(prediction.source), rank, prediction.class_index if rank == 1 else "", clean(label),
             f"{probability:.6f}", ""] for rank, (label, probability) in enumerate(prediction.top, start=1)]


class ResultsFile:
    """The output of ``--output``: :meth:`write` each prediction, :meth:`flush` after each batch
    (to disk), :meth:`close` at the end. ``done``: the photos it already held (``resume``)."""

    def __init__(self, path: str, top_k: int, classes: int, resume: bool):
        self.path = path
        self.format = os.path.splitext(path)[1].lower()
        if self.format not in FORMATS:
            raise ResultsFileError(f"{path}: --output writes {' or '.join(FORMATS)} files (by the extension)")
        self.ranks = min(top_k, classes)
        self.done: set[str] = set()
        exists = os.path.exists(path)
        if exists and not resume:
            raise ResultsFileError(f"{path} exists: add --resume to continue it, or remove it to start over")
        if exists:
            with open(path, "rb") as f:
                data = f.read()
            try:
                self.done, end = (_complete_jsonl(data) if self.format == ".jsonl" else _complete_csv(data, self.ranks))
            except ResultsFileError as exc:
                raise ResultsFileError(f"{path}: cannot resume it: {exc}") from None
            with open(path, "r+b") as f:  # cut off what a kill left half-written
                f.truncate(end)
        self.file = open(path, "a", encoding="utf-8", errors="surrogateescape", newline="")  # noqa: SIM115
        if self.format == ".csv" and self.file.tell() == 0:
            csv.writer(self.file).writerow(CSV_HEADER)
        self.buffer = io.StringIO()

    def write(self, prediction) -> None:
        if self.format == ".jsonl":
            self.buffer.write(json.dumps(prediction.to_dict()) + "\n")
            return
        csv.writer(self.buffer).writerows(csv_rows(prediction))

    def flush(self) -> None:
        """Everything written so far, on disk (one write of the batch, then fsync)."""
        self.file.write(self.buffer.getvalue())
        self.buffer = io.StringIO()
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.flush()
        self.file.close()


def still_to_do(paths: list[str], done: set[str], output: str) -> list[str]:
    """``paths`` less those an output (``--output`` file or folder, its ``done`` set) already holds,
    in order; says on stderr how many were skipped, when any were (``--resume``)."""
    remaining = [p for p in paths if p not in done]
    if len(remaining) < len(paths):
        print(f"{output}: {len(paths) - len(remaining)} photo(s) already there, {len(remaining)} to go",
              file=sys.stderr)
    return remaining
