"""``npshuffle serve``: classification over HTTP on this machine, with the standard library's server.

    GET  /                    a page: drop photos, see each with its top-1 label drawn on it and the top-5
    POST /predict[?top_k=K]   body: an image file's bytes -> JSON: label, probability, top-k, timing
    GET  /healthz             -> {"status": "ok"}
    GET  /models              -> the served model: name, architecture, classes, input recipe

Each request is read and preprocessed on its own connection thread; the preprocessed images of
requests that arrive together are gathered into one forward pass (up to ``max_batch`` images,
waiting at most ``max_wait_ms`` for more after the first), and each request gets exactly its own
answer back. Bounded everywhere:

* a body over ``max_bytes`` gets ``413`` before it is read; a missing length ``411``;
* more than ``max_in_flight`` requests being handled gets ``503`` with ``Retry-After`` instead of
  an unbounded queue;
* a connection that sends nothing for ``timeout_s`` is dropped (a stalled client cannot hold a
  thread);
* a bad image gets ``400`` with the one-line reason ``npshuffle predict`` gives.

It binds to 127.0.0.1 unless ``--host`` says otherwise, logs one line per request on stderr, and on
Ctrl-C or SIGTERM stops accepting, lets the requests in flight finish, and exits 0.
"""

from __future__ import annotations

import json
import math
import queue
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

from .images import ImageError
from .model import Model
from .predict import load_model, predictions_from_logits, prepare_input

DEFAULT_MAX_BYTES = 20 * 2**20
PAGE = Path(__file__).parent / "web" / "index.html"  # the drag-and-drop page (GET /): no outside resources


class Batcher:
    """Gathers preprocessed images from many threads into batches for one forward pass each, on a
    thread of its own. :meth:`submit` returns a Future of the image's ``(logits row, network s, batch size)``."""

    def __init__(self, model: Model, max_batch: int, max_wait_s: float):
        self.model, self.max_batch, self.max_wait_s = model, max_batch, max_wait_s
        self.waiting: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="npshuffle-batcher", daemon=True)
        self.thread.start()

    def submit(self, image: np.ndarray) -> Future:
        future: Future = Future()
        self.waiting.put((image, future))
        return future

    def close(self) -> None:
        self.waiting.put(None)
        self.thread.join()

    def _run(self) -> None:
        while True:
            first = self.waiting.get()
            if first is None:
                return
            batch = [first]
            deadline = time.perf_counter() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    item = self.waiting.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if item is None:
                    self.waiting.put(None)  # (stop after this batch)
                    break
                batch.append(item)
            start = time.perf_counter()
            try:
                with np.errstate(all="ignore"):
                    logits = self.model.forward(np.stack([image for image, _ in batch]))
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request, not lost
                for _, future in batch:
                    future.set_exception(exc)
                continue
            seconds = time.perf_counter() - start
            for (_, future), row in zip(batch, logits, strict=True):
                future.set_result((row, seconds, len(batch)))


class Service:
    """The model, its batcher and the limits, shared by the connection threads."""

    def __init__(self, model: Model, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_in_flight: int | None = None, timeout_s: float = 10.0):
        self.model = model
        self.batcher = Batcher(model, max_batch, max_wait_ms / 1000)
        self.max_bytes, self.timeout_s = max_bytes, timeout_s
        self.in_flight = threading.BoundedSemaphore(max_in_flight or 4 * max_batch)

    def model_info(self) -> dict:
        meta, recipe = self.model.metadata, self.model.recipe
        return {"name": self.model.name, "arch": meta.get("variant"), "dialect": meta.get("dialect"),
                "classes": self.model.class_names, "params": meta.get("parameters"), "MACs": meta.get("macs_224"),
                "accuracy": meta.get("val_accuracy_text"), "backend": self.model.settings["backend"],
                "input": {key: recipe[key] for key in ("resize", "crop", "channel_order")}}

    def classify(self, body: bytes, top_k: int) -> dict:
        """One request's answer (ImageError for a bad image)."""
        start = time.perf_counter()
        image = prepare_input(body, self.model.recipe)
        prepared = time.perf_counter()
        row, network_s, batch = self.batcher.submit(image).result()
        (prediction,) = predictions_from_logits(self.model, row[None], top_k)
        if prediction.error is not None:
            raise ImageError(prediction.error)
        return {"label": prediction.label, "probability": prediction.probability,
                "class_index": prediction.class_index,
                "top": [{"label": label, "probability": p} for label, p in prediction.top],
                "timing_ms": {"preprocess": 1e3 * (prepared - start), "network": 1e3 * network_s,
                              "total": 1e3 * (time.perf_counter() - start), "batch": batch}}

    def close(self) -> None:
        self.batcher.close()


class Handler(BaseHTTPRequestHandler):
    """One connection's requests (``service``: set on the server)."""

    server_version = "npshuffle"
    protocol_version = "HTTP/1.1"
    # a response's headers and body leave in one write when the request is done (the base class
    # flushes wfile then): sent in two, the body waited for the client's delayed ACK of the headers,
    # 40 ms a request on Linux
    wbufsize = -1

    def setup(self) -> None:
        self.timeout = self.server.service.timeout_s  # (socket read timeout: a stalled client is dropped)
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        print(f"{self.address_string()} {format % args}", file=sys.stderr, flush=True)

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        body = (json.dumps(payload) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        self._send(status, {"error": message}, headers)

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            page = PAGE.read_bytes()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
        elif path == "/healthz":
            self._send(HTTPStatus.OK, {"status": "ok"})
        elif path == "/models":
            self._send(HTTPStatus.OK, {"models": [self.server.service.model_info()]})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such page: {path} (POST /predict, GET /healthz, GET /models)")

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        service: Service = self.server.service
        url = urlsplit(self.path)
        if url.path != "/predict":
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {url.path} (POST /predict)")
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "send the image as the body, with a Content-Length")
            return
        if int(length) > service.max_bytes:
            self.close_connection = True  # (the body is not read)
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"body of {int(length)} bytes: the limit is {service.max_bytes} (--max-bytes)")
            return
        try:
            top_k = int(parse_qs(url.query).get("top_k", ["5"])[0])
        except ValueError:
            top_k = 0
        if top_k < 1:
            self.rfile.read(int(length))
            self._error(HTTPStatus.BAD_REQUEST, "top_k must be a positive integer")
            return
        if not service.in_flight.acquire(blocking=False):
            self.close_connection = True
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "too many requests in flight: retry shortly",
                        {"Retry-After": "1"})
            return
        try:
            body = self.rfile.read(int(length))
            if len(body) != int(length):
                self.close_connection = True
                self._error(HTTPStatus.BAD_REQUEST, f"the body ended after {len(body)} of {length} bytes")
                return
            try:
                answer = service.classify(body, top_k)
            except ImageError as exc:
                self._error(HTTPStatus.BAD_REQUEST, str(exc))
                return
            self._send(HTTPStatus.OK, answer)
        finally:
            service.in_flight.release()


class Server(ThreadingHTTPServer):
    """A threading HTTP server that waits for its connection threads when closed."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], service: Service):
        super().__init__(address, Handler)
        self.service = service


def serve(model: Model, host: str = "127.0.0.1", port: int = 8000, ready=None, **limits) -> int:
    """Serve until Ctrl-C or SIGTERM; then finish the requests in flight and return 0. ``ready``:
    called with the server once it listens (the port it got, for ``port=0``)."""
    service = Service(model, **limits)
    server = Server((host, port), service)
    stop = threading.Event()

    def request_stop(signum, frame) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    runner = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    runner.start()
    print(f"npshuffle: serving {model.name} on http://{host}:{server.server_address[1]}/ (Ctrl-C stops)",
          file=sys.stderr, flush=True)
    if ready is not None:
        ready(server)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        server.shutdown()  # no new connections ...
        server.server_close()  # ... and the requests in flight finish
        service.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("npshuffle: stopped", file=sys.stderr, flush=True)
    return 0


def add_serve_arguments(parser) -> None:
    parser.add_argument("--model", "-m", help="bundled model name or a model file, .npz or .safetensors "
                                              "(default: the default model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                            "only; 0.0.0.0 serves the network)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", choices=["auto", "numpy", "numba"], default="numba",
                        help="backend (default numba: a server runs long enough for its kernels to pay)")
    parser.add_argument("--max-batch", type=int, default=16, help="images per forward pass at most (default 16)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long the first request of a batch waits for others (default 5)")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                        help="largest body accepted (default 20 MiB)")


def run_serve(args) -> int:
    from .cli import fail

    for name, value, least in (("--max-batch", args.max_batch, 1), ("--max-bytes", args.max_bytes, 1),
                               ("--port", args.port, 0)):
        if value < least:
            return fail(f"{name} must be at least {least}")
    if not (math.isfinite(args.max_wait_ms) and args.max_wait_ms >= 0):
        return fail("--max-wait-ms must be a number of milliseconds, 0 or more")
    model = load_model(args.model, backend=args.device)
    crop = model.recipe["crop"]
    model.forward(np.zeros((1, 3, crop, crop), np.float32))  # (kernels loaded, or compiled, before the first request)
    try:
        return serve(model, args.host, args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                     max_bytes=args.max_bytes)
    except OSError as exc:
        return fail(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})")
