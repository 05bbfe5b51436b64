"""``npshuffle predict SRC --ray [ADDRESS] --output DIR``: the folder job on Ray Data.

A few hundred flower photos with broken files mixed in (and a path that does not exist), against
one single-process run of the same photos (Numba, as the Ray workers run): a run of the command
killed with SIGKILL mid-way, then resumed, and a run that loses a worker to SIGKILL mid-way both
end with every photo exactly once and every row equal to the single-process one. The Ray runs share
one Ray session where they can (starting Ray and a pool of workers is most of their time on a small
machine). Skipped where Ray is not installed (``pip install npshuffle[ray]``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from npshuffle.cli import main
from tests.conftest import FLOWERS, REPO, require

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

# (Ray Data's own context warns about its deprecated settings whenever it is copied: not ours to fix)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
PER_CLASS = 60
BROKEN = {"broken.jpg": b"not a jpeg", "empty.jpg": b""}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """(command-line inputs, every source a result names): 300 flower photos, 3 broken files, a missing path."""
    require(FLOWERS)
    folder = tmp_path_factory.mktemp("ray") / "photos"
    folder.mkdir()
    for cls in sorted(p for p in FLOWERS.iterdir() if p.is_dir()):
        for photo in sorted(cls.glob("*.jpg"))[:PER_CLASS]:
            shutil.copy(photo, folder / f"{cls.name}_{photo.name}")
    for name, data in BROKEN.items():
        (folder / name).write_bytes(data)
    first = sorted(folder.glob("daisy_*.jpg"))[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(first[:len(first) // 3])
    missing = str(folder.parent / "missing.jpg")
    return [str(folder), missing], sorted([str(p) for p in folder.iterdir()] + [missing])


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory):
    """The single-process results: source -> its JSON row (Numba, one thread per worker, as on Ray)."""
    out = tmp_path_factory.mktemp("single") / "single.jsonl"
    assert main(["predict", *photos[0], "--device", "numba", "--threads", "1", "-o", str(out)]) == 1  # (4 broken)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["source"] for r in rows) == photos[1]
    return {r["source"]: r for r in rows}


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray in this process (2 CPUs, as CI's machine has) for the tests that run the job here."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


def jsonl_rows(folder) -> list[dict]:
    return [json.loads(line) for part in sorted(folder.glob("part-*.jsonl")) for line in part.read_text().splitlines()]


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_killed_command_resumed_gives_every_photo_once_as_the_single_process_run(photos, reference, tmp_path,
                                                                                 request, capfd):
    """SIGKILL of `npshuffle predict --ray` (a local Ray it started) once a part is on disk; the same
    command with --resume (here, in this process's Ray session) finishes the job."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "npshuffle", "predict", *photos[0], "--ray", "--output", str(out),
               "--workers", "1", "--batch-size", "8", "--rows-per-part", "16"]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    ray_processes: list[int] = []
    while time.monotonic() < deadline and first.poll() is None:
        if out.exists() and any(out.glob("part-*.jsonl")):
            ray_processes = descendants(first.pid)
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    first.wait(timeout=60)
    stderr = first.stderr.read().decode()
    for pid in ray_processes:  # (Ray's agents outlive a SIGKILLed driver by a minute; ours: end them)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert first.returncode == -signal.SIGKILL, stderr  # (killed mid-way, not finished)
    # Ray's messages went to DIR/_ray.log (in a process of its own; in this one, a logger Ray made earlier
    # writes to pytest's capture, not to the file descriptor the command redirects)
    assert "starting a local Ray" in stderr and "(raylet)" not in stderr and "WARNING" not in stderr, stderr
    assert (out / "_ray.log").stat().st_size > 0
    partial = jsonl_rows(out)
    assert 16 <= len(partial) < len(photos[1])
    request.getfixturevalue("ray_session")  # (started only now: one Ray at a time on a 2-core machine)
    capfd.readouterr()
    assert main(["predict", *photos[0], "--ray", "--output", str(out), "--batch-size", "8", "--resume"]) == 1
    err = capfd.readouterr().err
    assert f"{len(partial)} photo(s) already there, {len(photos[1]) - len(partial)} to go" in err, err
    broken_left = 4 - sum("error" in r for r in partial)
    assert f"{broken_left} of {len(photos[1]) - len(partial)} input(s) could not be classified" in err, err
    rows = jsonl_rows(out)
    assert sorted(r["source"] for r in rows) == photos[1]  # every photo, exactly once
    assert {r["source"]: r for r in rows} == reference  # the same answers, to the last bit (same backend)
    assert sum("error" in r for r in rows) == 4
    assert not list(out.glob(".*.tmp"))


def test_a_worker_killed_mid_run_is_restarted_and_every_photo_written_once(photos, reference, tmp_path,
                                                                           ray_session):
    from npshuffle import ray_job
    from npshuffle.cli import expand_inputs
    from npshuffle.results_dir import ResultsDir

    paths = expand_inputs(photos[0])[0]
    results = ResultsDir(str(tmp_path / "out"), "parquet", resume=False, rows_per_part=64)
    killed: list[int] = []
    seen_before_kill: list[int] = []

    def kill_a_worker(table):
        if not killed:
            pid = int(table.column("worker")[0].as_py().split(":")[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            seen_before_kill.append(table.num_rows)

    report = ray_job.classify(ray_job.Job(paths, batch_size=8, workers=2), results, on_rows=kill_a_worker)
    results.close()
    assert killed and seen_before_kill[0] < len(paths)
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    table = pq.read_table(tmp_path / "out")
    assert sorted(table.column("path").to_pylist()) == photos[1]  # every photo, exactly once
    assert report.written == len(paths) and len(report.failed) == 4 and not report.retried_alone
    for row in table.to_pylist():
        expected = reference[row["path"]]
        if "error" in expected:
            assert row["error"] == expected["error"] and row["class_index"] == -1
        else:
            assert row["error"] == "" and row["class_index"] == expected["class_index"]
            assert row["top_labels"] == [t["label"] for t in expected["top"]]
            assert row["top_probabilities"] == [t["probability"] for t in expected["top"]]


# --------------------------------------------------------------------------------------------------
# without starting Ray


def rows(paths):
    """Rows for ``paths`` (error rows: to the folder, rows like any other)."""
    from npshuffle.ray_job import error_rows

    return error_rows(list(paths), "{path}: broken")


def test_a_results_folder_keeps_each_photo_once_and_resumes_from_its_parts(tmp_path):
    from npshuffle.results_dir import ResultsDir
    from npshuffle.results_file import ResultsFileError

    out = tmp_path / "out"
    first = ResultsDir(str(out), "jsonl", resume=False, rows_per_part=3)
    assert first.add(rows(["a", "b"])).num_rows == 2 and not list(out.glob("part-*"))  # (waiting for a third)
    assert first.add(rows(["b", "c", "d"])).column("path").to_pylist() == ["c", "d"]  # b: a retried block's row
    assert [p.name for p in out.glob("part-*")] == ["part-00000.jsonl"]
    with pytest.raises(ResultsFileError, match="another run is writing"):
        ResultsDir(str(out), "jsonl", resume=True)
    first.close()
    (out / ".part-00001.jsonl.x1.tmp").write_text("half")  # (what a kill mid-write leaves)
    assert [json.loads(line)["source"] for line in (out / "part-00000.jsonl").read_text().splitlines()] == list("abcd")
    with pytest.raises(ResultsFileError, match="add --resume"):
        ResultsDir(str(out), "jsonl", resume=False)
    with pytest.raises(ResultsFileError, match="holds .jsonl parts"):
        ResultsDir(str(out), "parquet", resume=True)
    again = ResultsDir(str(out), "jsonl", resume=True)
    assert again.done == set("abcd") and not list(out.glob(".*.tmp"))
    assert again.add(rows(["d", "e"])).column("path").to_pylist() == ["e"]
    again.close()
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.jsonl", "part-00001.jsonl"]
    (out / "part-00002.jsonl").write_text("not json\n")
    with pytest.raises(ResultsFileError, match="not one of npshuffle's result parts"):
        ResultsDir(str(out), "jsonl", resume=True)


def test_parquet_parts_hold_the_batch_columns(tmp_path):
    from npshuffle.ray_job import as_table
    from npshuffle.results_dir import BATCH_COLUMNS, ResultsDir

    columns = {"path": ["x.jpg"], "class_index": [3], "label": ["roses"], "probability": [0.75],
               "top_labels": [["roses", "tulips"]], "top_probabilities": [[0.75, 0.25]], "error": [""]}
    out = ResultsDir(str(tmp_path / "out"), "parquet", resume=False)
    out.add(as_table(columns, "node:1"))
    out.add(rows(["y.jpg"]))
    out.close()
    table = pq.read_table(tmp_path / "out")
    assert tuple(table.column_names) == BATCH_COLUMNS
    assert table.to_pylist()[0] == {**{k: v[0] for k, v in columns.items()}}
    assert table.to_pylist()[1]["error"] == "y.jpg: broken"
    assert ResultsDir(str(tmp_path / "out"), "parquet", resume=True).done == {"x.jpg", "y.jpg"}


def test_bad_ray_arguments_are_one_line_each_before_ray_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # (as in a fresh process, whatever ran before)
    photo = str(REPO / "examples" / "tulip.jpg")
    full = tmp_path / "full"
    full.mkdir()
    (full / "part-00000.jsonl").write_text(json.dumps({"source": photo, "error": "x"}) + "\n")
    cases = [
        (["--ray"], "give --output DIR"),
        (["--ray", "-o", str(tmp_path / "a"), "--format", "csv"], "jsonl or parquet parts"),
        (["-o", str(tmp_path / "b.jsonl"), "--format", "parquet"], "with --ray --output DIR"),
        (["--ray", "-o", str(tmp_path / "c"), "--annotate", str(tmp_path / "ann")], "--annotate does not run"),
        (["--ray", "-o", str(tmp_path / "d"), "--threads", "2"], "--threads-per-worker"),
        (["--ray", "-o", str(tmp_path / "e"), "--device", "cuda"], "CPU backends"),
        (["--ray", "-o", str(full)], "holds results already: add --resume"),
        (["--ray", "127.0.0.1:1", "-o", str(tmp_path / "f")], "nothing answers at 127.0.0.1:1"),
        (["--ray", photo, "-o", str(tmp_path / "g")], "not a Ray address: give the photos before --ray"),
        (["--threads-per-worker", "2"], "--threads-per-worker is for --ray runs"),
        (["--ray", "-o", str(tmp_path / "h"), "--threads-per-worker", "0"], "must be at least 1"),
    ]
    for extra, message in cases:
        assert main(["predict", photo, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert main(["predict", photo, "--ray", "-o", str(full), "--resume"]) == 0  # (nothing left: Ray not started)
    assert "1 photo(s) already there, 0 to go" in capsys.readouterr().err


def test_a_failed_ray_job_is_told_by_the_error_its_worker_raised():
    from npshuffle.ray_job import reason

    carried = ("The actor died because of an error raised in its creation task, \x1b[36mray::MapWorker()\x1b[39m "
               "(pid=1)\n  File \"x.py\", line 8, in __init__\n    raise ValueError(...)\nValueError: no such model")
    assert reason(RuntimeError(carried)) == "ValueError: no such model"
    assert reason(RuntimeError("Timed out\n  waiting")) == "Timed out" and reason(RuntimeError()) == "RuntimeError"


def test_shards_on_ray_cover_every_photo_once(photos, monkeypatch, tmp_path):
    from npshuffle import ray_job

    given = []
    monkeypatch.setattr(ray_job, "run_predict", lambda args, paths, skipped: given.append(paths) or 0)
    for i in range(3):
        assert main(["predict", *photos[0], "--ray", "-o", str(tmp_path / f"s{i}"), "--shard", f"{i}/3"]) == 0
    assert sorted(p for shard in given for p in shard) == photos[1] and all(given)


def test_npshuffle_imports_no_ray_nor_pyarrow():
    code = ("import sys, npshuffle, npshuffle.cli, npshuffle.batch, npshuffle.results_dir\n"
            "npshuffle.cli.build_parser('predict')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'pyarrow', 'pandas')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
