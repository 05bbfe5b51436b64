"""One machine, three ways through the same photos: one process, Ray with 1 worker, Ray with 2.

    python benchmarks/bench_scale.py [--photos DIR] [--limit N] [--rounds 2] [--out FILE]

* ``one process``: what ``npshuffle predict DIR --output FILE.jsonl --device numba`` runs (a worker
  per core, each on its own core; the results file flushed to disk after every batch);
* ``one process, no file``: the same without the results file (``npshuffle.predict``'s own pace);
* ``Ray, W workers``: what ``npshuffle predict DIR --ray --output DIR --workers W`` runs (a local
  Ray started for the run, W actors with one Numba thread each, JSONL parts written by the driver).

Each run is a fresh process of this script (``--run``) that calls the same functions as the
command, with the Numba kernels already cached (run ``npshuffle warmup`` first). Two rates:
``end to end`` is photos / the process's whole wall time (Python, imports, starting Ray and its
workers, the photos, writing, stopping Ray), what a short job sees; ``steady`` is the rate from the
first results past a tenth of the photos to the last, what a long job runs at (Ray's overhead per
batch, without its start).
The configurations alternate within each round, so a shared machine's drift falls on all of them;
compare the ratios within a run. The photos are read once before timing (the page cache).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

START = time.perf_counter()  # (a --run process times from here: before its heavy imports)

from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "flower_photos"
CONFIGS = {"one process": None, "one process, no file": 0, "Ray, 1 worker": 1, "Ray, 2 workers": 2}
BATCH = 16


def run_one(config: str, photos: str, limit: int, out: str) -> dict:
    """This process: classify the photos as ``config`` does; what it saw, as a dict."""
    sys.path.insert(0, str(REPO))
    from npshuffle.cli import expand_inputs

    paths = expand_inputs([photos])[0][:limit]
    stamps: list[tuple[int, float]] = []  # (results so far, seconds since START)
    workers = CONFIGS[config]
    if not workers:
        from npshuffle.predict import load_model, predict_stream
        from npshuffle.results_file import ResultsFile

        model = load_model(None, backend="numba")
        results = None
        if workers is None:  # (what --output FILE.jsonl does: a line per photo, flushed to disk every batch)
            results = ResultsFile(os.path.join(out, "results.jsonl"), 5, len(model.class_names), resume=False)
        for count, prediction in enumerate(predict_stream(paths, model, 5, BATCH), 1):
            if results is not None:
                results.write(prediction)
            if count % BATCH == 0 or count == len(paths):
                if results is not None:
                    results.flush()
                stamps.append((count, time.perf_counter() - START))
        if results is not None:
            results.close()
    else:
        import ray

        from npshuffle import ray_job
        from npshuffle.results_dir import ResultsDir

        results = ResultsDir(os.path.join(out, "parts"), "jsonl", resume=False)
        with ray_job.ray_messages_to(os.path.join(out, "ray.log")):
            ray_job.connect(None)
            seen = [0]

            def stamp(table):
                seen[0] += table.num_rows
                stamps.append((seen[0], time.perf_counter() - START))

            ray_job.classify(ray_job.Job(paths, batch_size=BATCH, workers=workers), results, on_rows=stamp)
            results.close()
            ray.shutdown()
    # steady: from the first results past a tenth of the photos (all workers up and busy by then) to the last
    (n_from, t_from), (n_last, t_last) = next(s for s in stamps if s[0] >= len(paths) / 10), stamps[-1]
    return {"photos": n_last, "first_s": stamps[0][1], "last_s": t_last,
            "steady": (n_last - n_from) / (t_last - t_from) if t_last > t_from else float("nan")}


def measure(config: str, photos: str, limit: int) -> dict:
    """A fresh process for one run; adds its whole wall time."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--run", config, "--photos", photos, "--limit", str(limit),
                               "--tmp", out], capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{config} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", default=str(DEFAULT_PHOTOS), help="a folder of photos (default: flower_photos)")
    parser.add_argument("--limit", type=int, default=10**9, help="at most this many photos")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", help="also write the report to this markdown file")
    parser.add_argument("--run", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_one(args.run, args.photos, args.limit, args.tmp)))
        return

    for root, _, files in os.walk(args.photos):  # into the page cache, for every configuration alike
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                f.read()
    runs: dict[str, list[dict]] = {config: [] for config in CONFIGS}
    for round_ in range(args.rounds):
        for config in CONFIGS:
            result = measure(config, args.photos, args.limit)
            runs[config].append(result)
            print(f"round {round_ + 1} {config}: {result['photos']} photos, {result['wall_s']:.1f} s wall, "
                  f"first results at {result['first_s']:.1f} s, steady {result['steady']:.0f} photos/s",
                  file=sys.stderr)

    one = runs["one process"]
    lines = [f"# `python benchmarks/bench_scale.py {' '.join(sys.argv[1:])}` ({time.strftime('%Y-%m-%d %H:%M')})",
             "", f"{os.cpu_count()} CPUs; {one[0]['photos']} photos from {args.photos}; batch {BATCH}; Numba kernels "
             f"cached; the median of {args.rounds} rounds (configurations alternating within each round); ratios are "
             "to one process in the same round, then the median.", "",
             "| run | end to end s | end to end photos/s | first results at s | steady photos/s | "
             "steady vs one process | end to end vs one process |", "|---|---:|---:|---:|---:|---:|---:|"]
    for config, results in runs.items():
        steady_ratio = statistics.median(r["steady"] / o["steady"] for r, o in zip(results, one, strict=True))
        wall_ratio = statistics.median(o["wall_s"] / r["wall_s"] for r, o in zip(results, one, strict=True))
        lines.append(f"| {config} | {statistics.median(r['wall_s'] for r in results):.1f} | "
                     f"{statistics.median(r['photos'] / r['wall_s'] for r in results):.0f} | "
                     f"{statistics.median(r['first_s'] for r in results):.1f} | "
                     f"{statistics.median(r['steady'] for r in results):.0f} | {steady_ratio:.2f} | {wall_ratio:.2f} |")
    report = "\n".join(lines) + "\n"
    from bench_common import publish  # (here: a --run process times its own imports)

    publish(report, args.out)


if __name__ == "__main__":
    main()
