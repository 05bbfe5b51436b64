"""``npshuffle serve`` over real HTTP on a loopback port: answers equal to ``npshuffle.predict``,
every kind of bad request one clear error, the limits (413, 503), many concurrent clients batched
with none lost, and a clean exit on SIGTERM."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import npshuffle
from npshuffle.serve import Server, Service
from tests.conftest import REPO

PHOTOS = sorted(str(p) for p in (REPO / "examples").glob("*.jpg"))
BODIES = {p: open(p, "rb").read() for p in PHOTOS}


@pytest.fixture(scope="module")
def model():
    return npshuffle.load_model("flowers", backend="numpy")


@pytest.fixture(scope="module")
def expected(model):
    return {p: npshuffle.predict(p, model=model, top_k=3) for p in PHOTOS}


@pytest.fixture
def server(model):
    """A server on a free loopback port (small limits, to test them), stopped after the test."""
    service = Service(model, max_batch=8, max_wait_ms=5, max_bytes=2 * 2**20, max_in_flight=64, timeout_s=5)
    httpd = Server(("127.0.0.1", 0), service)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    service.close()


def request(server, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        connection.close()


def read_until_closed(raw: socket.socket) -> bytes:
    """Everything the server sends before it closes the connection (as it does after an error)."""
    chunks = []
    while chunk := raw.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_photo_gets_predicts_answer(server, expected):
    for path, body in BODIES.items():
        status, _, answer = request(server, "POST", "/predict?top_k=3", body)
        assert status == 200
        want = expected[path]
        assert answer["label"] == want.label and answer["class_index"] == want.class_index
        assert answer["probability"] == pytest.approx(want.probability, abs=1e-6)
        assert [t["label"] for t in answer["top"]] == [label for label, _ in want.top]
        assert set(answer["timing_ms"]) == {"preprocess", "network", "total", "batch"}


@pytest.mark.parametrize("body, reason", [(b"", "empty"), (b"not an image at all", "not an image file"),
                                          (BODIES[PHOTOS[0]][:2000], "broken or truncated")])
def test_a_bad_image_is_a_400_with_one_line(server, body, reason):
    status, _, answer = request(server, "POST", "/predict", body)
    assert status == 400 and reason in answer["error"] and "\n" not in answer["error"]


def test_limits_and_bad_requests(server):
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as raw:
        raw.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2097153\r\n\r\n")  # (no body sent)
        reply = read_until_closed(raw)
    assert reply.startswith(b"HTTP/1.1 413") and b"the limit is 2097152" in reply  # (answered before reading)
    assert request(server, "POST", "/predict?top_k=0", BODIES[PHOTOS[0]])[0] == 400
    assert request(server, "POST", "/elsewhere", b"x")[0] == 404
    assert request(server, "GET", "/nothing")[0] == 404
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as raw:  # no length
        raw.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_until_closed(raw).startswith(b"HTTP/1.1 411")


def test_health_and_the_model(server, model):
    assert request(server, "GET", "/healthz")[2] == {"status": "ok"}
    (info,) = request(server, "GET", "/models")[2]["models"]
    assert info["classes"] == model.class_names and info["input"]["crop"] == model.recipe["crop"]
    assert info["arch"] == "shufflenet_v1_g3_x0_5"
    from npshuffle.zoo import describe_models

    listed = next(row for row in describe_models() if row["name"].split()[0] == "flowers")  # (`npshuffle list`)
    assert (info["params"], info["MACs"]) == (listed["params"], listed["MACs"])


def test_too_many_in_flight_is_a_503_not_a_queue(model):
    service = Service(model, max_in_flight=1, timeout_s=5)
    held, release = threading.Event(), threading.Event()
    real_submit = service.batcher.submit

    def slow_submit(image):  # the first request waits here, holding the only slot
        held.set()
        release.wait(10)
        return real_submit(image)

    service.batcher.submit = slow_submit
    httpd = Server(("127.0.0.1", 0), service)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(request, httpd, "POST", "/predict", BODIES[PHOTOS[0]])
            assert held.wait(10)
            status, headers, answer = request(httpd, "POST", "/predict", BODIES[PHOTOS[1]])
            assert status == 503 and headers["Retry-After"] == "1" and "in flight" in answer["error"]
            release.set()
            assert first.result()[0] == 200
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        service.close()


def test_many_concurrent_clients_each_get_their_own_answer(server, expected):
    sizes = []

    def client(i):
        answers = []
        for k in range(25):
            path = PHOTOS[(i + k) % len(PHOTOS)]
            status, _, answer = request(server, "POST", "/predict?top_k=3", BODIES[path])
            answers.append((path, status, answer))
        return answers

    with ThreadPoolExecutor(16) as pool:
        results = [a for answers in pool.map(client, range(16)) for a in answers]
    assert len(results) == 16 * 25
    for path, status, answer in results:
        assert status == 200 and answer["label"] == expected[path].label
        assert answer["probability"] == pytest.approx(expected[path].probability, abs=1e-6)
        sizes.append(answer["timing_ms"]["batch"])
    assert max(sizes) > 1  # (requests that arrived together shared a forward pass)


def test_sigterm_finishes_and_exits_0(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "npshuffle", "serve", "--port", "0", "--device", "numpy"],
                               cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/predict", body=BODIES[PHOTOS[0]])
        assert connection.getresponse().status == 200
        connection.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()




def test_the_page_is_served_whole_with_nothing_from_outside(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    connection.request("GET", "/")
    response = connection.getresponse()
    page = response.read().decode()
    connection.close()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/html")
    assert 'id="pick"' in page and "/predict?top_k=5" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "http" not in page  # (no CDN: works offline)


def browser():
    """A headless Chromium driven by Selenium, from the OS packages (never downloaded); skips the
    test, saying how to install them, when they are missing."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("the browser test needs Chromium and its driver: as root, "
                    "apt-get update && apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="the browser test needs selenium: pip install selenium")
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,900"):
        options.add_argument(flag)
    from selenium.common.exceptions import WebDriverException

    try:
        return webdriver.Chrome(service=DriverService(executable_path=driver_path), options=options)
    except WebDriverException as exc:  # (the browser is there but cannot start here: not the page's fault)
        pytest.skip(f"Chromium did not start: {str(exc).splitlines()[0]}")


def test_the_page_in_a_real_browser_shows_the_label(server, expected, tmp_path):
    driver = browser()
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        broken = tmp_path / "broken.jpg"
        broken.write_bytes(b"not a jpeg")
        driver.find_element(By.ID, "pick").send_keys(PHOTOS[0] + "\n" + str(broken))  # (two files, one pick)

        def settled(d):
            labels = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".card .label")]
            return labels if len(labels) == 2 and "classifying..." not in labels else False

        labels = WebDriverWait(driver, 30).until(settled)
        want = expected[PHOTOS[0]]
        assert f"{want.label} {100 * want.probability:.1f} %" in labels
        assert any("not an image file" in text for text in labels)  # (the broken one: its error, in place)
        assert len(driver.find_elements(By.CSS_SELECTOR, ".card .bar")) == 5  # (the top-5 as bars)
        screenshot = tmp_path / "page.png"
        driver.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 1000
    finally:
        driver.quit()
