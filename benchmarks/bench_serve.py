"""``npshuffle serve`` under load: requests/s and p50 / p99 latency on loopback.

    python benchmarks/bench_serve.py [--model flowers] [--device numba] [--requests 400] [--out FILE]

Starts the server in this process on a free loopback port (the real ``Server`` and ``Service``, as
``npshuffle serve`` runs them), warms it up, then for 1, 4 and 16 concurrent clients (threads, each
with its own keep-alive connection, POSTing the example photos in turn) measures requests/s over
``--requests`` requests and each request's latency: batches of up to 16 waiting up to 5 ms for
more, batches of what is already waiting (0 ms), and no batching (one forward pass a request). The
clients share this process's cores with the server: the figures are for a 2-core machine doing both.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_common import publish  # noqa: E402

from npshuffle.predict import load_model  # noqa: E402
from npshuffle.serve import Server, Service  # noqa: E402

PHOTOS = sorted((REPO / "examples").glob("*.jpg"))


def run_clients(port: int, clients: int, requests: int, bodies: list[bytes]) -> tuple[float, list[float]]:
    """(wall seconds, per-request latencies) for ``requests`` POSTs spread over ``clients`` threads."""
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]

    def client(i: int) -> list[float]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        latencies = []
        for k in range(per_client[i]):
            start = time.perf_counter()
            connection.request("POST", "/predict?top_k=1", body=bodies[(i + k) % len(bodies)])
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"status {response.status}")
            latencies.append(time.perf_counter() - start)
        connection.close()
        return latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for client_latencies in pool.map(client, range(clients)) for t in client_latencies]
    return time.perf_counter() - start, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="flowers")
    parser.add_argument("--device", default="numba", choices=["numba", "numpy"])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--out", help="also write the markdown report here")
    args = parser.parse_args()
    model = load_model(args.model, backend=args.device)
    crop = model.recipe["crop"]
    model.forward(np.zeros((1, 3, crop, crop), np.float32))
    bodies = [p.read_bytes() for p in PHOTOS]
    rows = []
    for batching, max_batch, wait_ms in (("16, waiting 5 ms", 16, 5.0), ("16, no wait", 16, 0.0), ("none", 1, 0.0)):
        service = Service(model, max_batch=max_batch, max_wait_ms=wait_ms, max_in_flight=64)
        server = Server(("127.0.0.1", 0), service)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        port = server.server_address[1]
        sys.stderr = open(os.devnull, "w")  # (the server's request log)  # noqa: SIM115
        try:
            run_clients(port, 4, 40, bodies)  # warm-up
            for clients in (1, 4, 16):
                wall, latencies = run_clients(port, clients, args.requests, bodies)
                ms = sorted(1e3 * t for t in latencies)
                rows.append((batching, clients, len(latencies) / wall, statistics.median(ms),
                             ms[min(len(ms) - 1, int(0.99 * len(ms)))]))
        finally:
            sys.stderr = sys.__stderr__
            server.shutdown()
            server.server_close()
            service.close()
    lines = [f"# `python benchmarks/bench_serve.py --model {args.model} --device {args.device} "
             f"--requests {args.requests}` ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"{os.cpu_count()} CPUs; server and clients in one process on loopback; the example photos "
             "(~250-500 px JPEGs), top_k=1.", "",
             "| batching | clients | requests/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {b} | {c} | {r:.0f} | {p50:.1f} | {p99:.1f} |" for b, c, r, p50, p99 in rows]
    report = "\n".join(lines) + "\n"
    publish(report, args.out)


if __name__ == "__main__":
    main()
