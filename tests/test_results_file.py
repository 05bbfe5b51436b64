"""``npshuffle predict --output FILE [--resume] [--shard I/N]``: results on disk as they are made; a
killed run, resumed, ends with every photo exactly once; shards cover every photo once."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from npshuffle.cli import main
from npshuffle.results_file import ResultsFile, ResultsFileError, parse_shard, shard_of
from tests.conftest import REPO

PHOTOS = sorted(str(p) for p in (REPO / "examples").glob("*.jpg"))


def photo_folder(tmp_path, copies: int, broken: int = 2):
    """A folder of ``copies`` copies of each example photo, plus ``broken`` files that are not images."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(copies):
        for photo in PHOTOS:
            shutil.copy(photo, folder / f"{i:04d}_{os.path.basename(photo)}")
    for i in range(broken):
        (folder / f"{i:04d}_broken.jpg").write_bytes(b"not a jpeg")
    return folder, sorted(str(p) for p in folder.iterdir())


def jsonl_sources(path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["source"] for line in f]


def test_jsonl_output_holds_every_photo_once_and_errors_as_rows(tmp_path, capsys):
    folder, paths = photo_folder(tmp_path, 3)
    out = tmp_path / "results.jsonl"
    assert main(["predict", str(folder), "--device", "numpy", "--output", str(out), "-k", "2"]) == 1  # (2 broken)
    assert capsys.readouterr().out == ""  # (the results went to the file)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["source"] for r in rows) == paths
    assert sum("error" in r for r in rows) == 2 and all(len(r["top"]) == 2 for r in rows if "error" not in r)


def test_an_existing_output_needs_resume_and_resume_needs_an_output(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    out.write_text("")
    assert main(["predict", PHOTOS[0], "--device", "numpy", "--output", str(out)]) == 2
    assert "exists: add --resume" in capsys.readouterr().err
    assert main(["predict", PHOTOS[0], "--device", "numpy", "--resume"]) == 2
    assert "give --output FILE too" in capsys.readouterr().err
    assert main(["predict", PHOTOS[0], "--device", "numpy", "--output", str(tmp_path / "r.txt")]) == 2
    assert ".jsonl or .csv" in capsys.readouterr().err


def test_a_run_killed_mid_way_and_resumed_has_every_photo_exactly_once(tmp_path):
    folder, paths = photo_folder(tmp_path, 100)
    out = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "npshuffle", "predict", str(folder), "--device", "numpy", "--batch-size", "4",
               "--output", str(out), "-k", "1"]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        if out.exists() and out.stat().st_size > 2000:  # a few batches on disk
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    first.wait(timeout=60)
    killed = first.returncode == -signal.SIGKILL
    with open(out, "ab") as f:
        f.write(b'{"source": "half a line, as a kill mid-write leaves it')  # (cut off by --resume)
    partial = len(out.read_text().splitlines()) - 1
    done = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr  # (1: a broken file was among the photos left to do)
    assert sorted(jsonl_sources(out)) == paths  # every photo, exactly once
    assert sum("error" in json.loads(line) for line in out.read_text().splitlines()) == 2
    if killed:
        assert f"{partial} photo(s) already there" in done.stderr
    again = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and sorted(jsonl_sources(out)) == paths  # (nothing left to do)


def test_sigterm_stops_a_run_cleanly_and_it_resumes(tmp_path):
    """`kill PID` (what schedulers send) ends the command like Ctrl-C: exit 143, one line on stderr,
    every line on disk whole, no temporary file left beside the output, and --resume finishes the job."""
    folder, paths = photo_folder(tmp_path, 100)
    out = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "npshuffle", "predict", str(folder), "--device", "numpy", "--batch-size", "4",
               "--output", str(out), "-k", "1"]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        if out.exists() and out.stat().st_size > 2000:
            first.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    err = first.communicate(timeout=60)[1]
    if first.returncode not in (0, 1):  # (0/1: the run finished before the signal came)
        assert first.returncode == 128 + signal.SIGTERM, err
        assert "terminated" in err and "Traceback" not in err
        lines = out.read_text().splitlines()
        assert all(json.loads(line)["source"] for line in lines) and len(lines) < len(paths)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    done = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    assert sorted(jsonl_sources(out)) == paths


def test_csv_resume_cuts_a_half_written_photo(tmp_path):
    out = tmp_path / "results.csv"
    assert main(["predict", *PHOTOS, "--device", "numpy", "--output", str(out), "-k", "3"]) == 0
    lines = out.read_text().splitlines(keepends=True)
    assert len(lines) == 1 + 3 * len(PHOTOS)
    out.write_text("".join(lines[:1 + 3 + 2]))  # the first photo, and two of the second's three ranks
    results = ResultsFile(str(out), top_k=3, classes=5, resume=True)
    assert results.done == {PHOTOS[0]}
    results.close()
    assert main(["predict", *PHOTOS, "--device", "numpy", "--output", str(out), "-k", "3", "--resume"]) == 0
    with open(out, newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert sorted((r[0], r[1]) for r in rows) == sorted((p, str(k)) for p in PHOTOS for k in (1, 2, 3))


def test_a_file_that_is_not_ours_is_not_resumed(tmp_path):
    out = tmp_path / "notes.csv"
    out.write_text("my,own,spreadsheet\n")
    with pytest.raises(ResultsFileError, match="cannot resume it"):
        ResultsFile(str(out), top_k=1, classes=5, resume=True)
    assert out.read_text() == "my,own,spreadsheet\n"  # (left as it was)


def test_three_shards_cover_every_photo_once(tmp_path):
    folder, paths = photo_folder(tmp_path, 4, broken=1)
    seen = []
    for i in range(3):
        out = tmp_path / f"shard{i}.jsonl"
        main(["predict", str(folder), "--device", "numpy", "--output", str(out), "--shard", f"{i}/3"])
        seen += jsonl_sources(out)
    assert sorted(seen) == paths
    assert all(shard_of(p, 3) == shard_of(p, 3) for p in paths) and parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
