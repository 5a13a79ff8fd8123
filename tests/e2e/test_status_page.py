"""The status page at / in a real headless browser (Debian's chromium through Selenium):
it loads, lists the demo models, its charts move with traffic, and an uploaded image
gets its label."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.e2e.conftest import DEMO_MODELS
from tests.e2e.harness import ServerProcess, start_server
from tests.e2e.test_images import _stripes as stripes
from tests.models import write_affine
from warpserve.server.grpc.admin_auth import TOKEN_ENV

pytestmark = pytest.mark.e2e

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
WAIT_S = 60.0


def _browser_paths() -> tuple[str, str]:
    browser = next((found for name in CHROMIUM if (found := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "no headless browser: install Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver)"
        )
    return browser, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    # The driver is named, so Selenium never looks for (or downloads) one.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what: str, check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"the page never showed {what} within {WAIT_S} s")


def test_the_status_page(browser: Any, demo_server: ServerProcess, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(f"http://{demo_server.http_url}/")
    body = browser.find_element(By.TAG_NAME, "body")

    def polls() -> int:
        return int(body.get_attribute("data-polls") or 0)

    wait_for("a first poll", lambda: polls() >= 1)
    assert browser.title == "warpserve"
    rows = browser.find_elements(By.CSS_SELECTOR, "#models tbody tr")
    listed = {row.get_attribute("data-model") for row in rows}
    assert set(DEMO_MODELS) | {"image_classifier_jpeg"} <= listed, listed
    text = browser.find_element(By.ID, "models").text
    assert "READY" in text and "100%" in text, text

    # Charts: points accumulate with every poll, and traffic shows as throughput.
    chart = browser.find_element(By.ID, "throughput")
    before = int(chart.get_attribute("data-points") or 0)
    stop = threading.Event()
    sender = threading.Thread(target=_send_fraud, args=(demo_server, stop))
    sender.start()
    try:
        wait_for(
            "throughput above zero",
            lambda: float(chart.get_attribute("data-last") or 0) > 0,
        )
    finally:
        stop.set()
        sender.join()
    assert int(chart.get_attribute("data-points") or 0) > before
    latency = browser.find_element(By.ID, "latency")
    assert int(latency.get_attribute("data-points") or 0) > 0

    # The upload form: a horizontally striped JPEG is a cat, a vertical one a dog.
    Select(browser.find_element(By.ID, "image-model")).select_by_value("image_classifier_jpeg")
    prediction = browser.find_element(By.ID, "prediction")
    for horizontal, label in ((True, "cat"), (False, "dog")):
        photo = tmp_path / f"{label}.jpg"
        photo.write_bytes(stripes(horizontal))
        browser.find_element(By.ID, "image-file").send_keys(str(photo))
        browser.find_element(By.CSS_SELECTOR, "#upload button").click()
        shown = lambda want=label: prediction.get_attribute("data-label") == want  # noqa: E731
        wait_for(f"the label {label}", shown)
        assert label in prediction.text


def _send_fraud(server: ServerProcess, stop: threading.Event) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    tensor = httpclient.InferInput("TRANSACTION", [1, 16], "FP32")
    tensor.set_data_from_numpy(x)
    try:
        while not stop.is_set():
            client.infer("fraud_scorer", [tensor])
            time.sleep(0.005)
    finally:
        client.close()


def _get(server: ServerProcess, path: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=30) as reply:
        return reply.status, reply.headers.get("Content-Type", ""), reply.read()


def test_the_page_and_its_json_without_a_browser(server: ServerProcess) -> None:
    """What the browser test needs from the server, checked where no browser is installed:
    the page's files come from the server itself, and /api/status describes each model."""
    for path, kind in (
        ("/", "text/html"),
        ("/page.js", "text/javascript"),
        ("/page.css", "text/css"),
    ):
        status, content_type, body = _get(server, path)
        assert status == 200 and content_type.startswith(kind), (path, content_type)
        assert b"http://" not in body and b"https://" not in body, f"{path} loads from elsewhere"
    _, _, body = _get(server, "/api/status")
    document = json.loads(body)
    assert document["ready"] is True and document["server"]["name"] == "warpserve"
    models = {m["model"]: m for m in document["models"]}
    (version,) = models["affine"]["versions"]
    assert version["state"] == "READY" and version["active"] and version["weight"] == 1.0
    assert "success" in version["statistics"]["inference_stats"]
    assert models["affine"]["image"] is None  # takes no images: no upload form for it


def test_the_page_asks_for_the_admin_token_and_opens_with_it(
    browser: Any, tmp_path: Path, log_dir: Path
) -> None:
    """With an admin token set the page asks for it, and the token typed into its form
    opens the page, which then polls through the cookie the answer set."""
    from selenium.webdriver.common.by import By

    write_affine(tmp_path, "affine", (1,))
    token = "page-token"
    server = start_server(tmp_path, log_dir=log_dir, env={TOKEN_ENV: token})
    try:
        browser.delete_all_cookies()
        browser.get(f"http://{server.http_url}/")
        assert "admin token" in browser.find_element(By.ID, "refusal").text
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.CSS_SELECTOR, "#sign-in button").click()
        body = wait_for("the page", lambda: browser.find_elements(By.ID, "models"))
        assert body
        wait_for(
            "a first poll",
            lambda: int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-polls") or 0),
        )
        rows = browser.find_elements(By.CSS_SELECTOR, "#models tbody tr")
        assert [row.get_attribute("data-model") for row in rows] == ["affine"]
    finally:
        server.stop()
