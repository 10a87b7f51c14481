"""The web page in a real browser: Debian's headless chromium, driven by Selenium through Debian's chromedriver.

Nothing is downloaded: the browser and its driver are Debian packages (installed by
`require_programs`), pointed at by path so that Selenium's own driver manager never runs.
The page dreams an uploaded photograph against a real `serve --http-port` process: every
octave appears, in order, while the progress bar moves; the page shows its place in the
queue; cancel stops the ascent on the
server (its metrics and access log say so); a refused picture shows the server's message.
`DREAMSTREAM_WEB_SCREENSHOT=docs/web/page.png` also saves the README's screenshot.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import shared_image
from http_gateway import GatewayProcess, metric_sum
from PIL import Image
from system_packages import require_programs

BROWSER = {"chromium": "chromium", "chromedriver": "chromium-driver"}


@pytest.fixture(scope="module")
def gateway(lite0_dir: Path) -> Iterator[GatewayProcess]:
    server = GatewayProcess(lite0_dir.parent, "--max-concurrent", "1", "--max-queue", "2", metrics=True)
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log


@pytest.fixture(scope="module")
def browser() -> Iterator:
    require_programs(BROWSER)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,720", "--no-first-run"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def open_page(browser, gateway: GatewayProcess, picture: Path, **fields: str) -> None:
    """Load the page, wait for the model list, pick `picture` and set the fields (element id -> value)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{gateway.url}/")
    WebDriverWait(browser, 30).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#model option"))
    browser.find_element(By.ID, "picture").send_keys(str(picture))
    for element_id, value in fields.items():
        field = browser.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(value)


def page_state(browser) -> dict:
    return browser.execute_script(
        """return {
            progress: document.getElementById("progress").value,
            queue: document.getElementById("queue").hidden ? "" : document.getElementById("queue").textContent,
            status: document.getElementById("status").textContent,
            octaves: [...document.querySelectorAll("#frames li")].map((item) => Number(item.dataset.octave)),
            error: document.getElementById("error").hidden ? "" : document.getElementById("error").textContent,
            download: document.getElementById("download").hidden ? "" : document.getElementById("download").href,
            dreaming: document.getElementById("dream").disabled,
            models: document.querySelectorAll("#model option").length,
        };"""
    )


def watch(browser, until, timeout: float = 120) -> list[dict]:
    """The page's state every 50 ms until `until(state)` holds."""
    states = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states.append(page_state(browser))
        if until(states[-1]):
            return states
        time.sleep(0.05)
    raise AssertionError(f"the page never got there; last state {states[-1]}")


def test_the_page_dreams_an_uploaded_photograph_showing_every_octave_in_order(browser, gateway, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, gateway, shared_image("coffee.png"), octaves="3", steps="6", **{"max-size": "192"})
    browser.find_element(By.ID, "dream").click()
    states = watch(browser, lambda state: state["status"].startswith("done"))
    final = states[-1]
    assert final["octaves"] == [1, 2, 3] and final["error"] == ""
    # Each octave appeared while the dream was still running, one after the other.
    seen = [state["octaves"] for state in states]
    assert [1] in seen and [1, 2] in seen
    assert any(state["octaves"] == [1] and 0 < state["progress"] < 1 for state in states)
    progress = [state["progress"] for state in states]
    assert progress == sorted(progress) and len(set(progress)) >= 4  # the bar moved, never backwards
    assert any(" left" in state["status"] for state in states)  # steps and time left were shown
    assert final["download"].startswith("data:image/png;base64,")
    browser.save_screenshot(str(tmp_path / "page.png"))
    if target := os.environ.get("DREAMSTREAM_WEB_SCREENSHOT"):
        Image.open(tmp_path / "page.png").convert("RGB").save(target, quality=80)


def test_the_page_shows_its_place_in_the_queue_and_cancel_stops_the_ascent_on_the_server(browser, gateway) -> None:
    from selenium.webdriver.common.by import By

    photo = shared_image("coffee.png")
    ahead = {"octaves": "3", "steps_per_octave": "300", "max_size": "128"}
    blocker = threading.Thread(
        target=httpx.post,
        args=(f"{gateway.url}/api/dreams",),
        kwargs={"files": {"image": photo.read_bytes()}, "data": ahead, "headers": {"x-request-id": "ahead-1"},
                "timeout": 120},
        daemon=True,
    )  # fmt: skip
    blocker.start()
    gateway.wait_for(r"dream ahead-1 on ")  # it holds the only slot
    open_page(browser, gateway, photo, octaves="3", steps="300", **{"max-size": "160"})
    cancelled_before = gateway.count(r"dream \S+ CANCELLED")
    browser.find_element(By.ID, "dream").click()
    watch(browser, lambda state: state["queue"] == "Waiting for a slot: place 1 of 1 in line")
    assert httpx.delete(f"{gateway.url}/api/dreams/ahead-1", timeout=10).status_code == 204
    watch(browser, lambda state: state["progress"] > 0)  # the page's dream got the slot
    browser.find_element(By.ID, "cancel").click()
    final = watch(browser, lambda state: not state["dreaming"])[-1]
    assert final["status"] == "cancelled" and "cancelled" in final["error"]
    blocker.join(30)
    gateway.wait_for(r"dream (?!ahead-1)\S+ CANCELLED")
    assert gateway.count(r"dream \S+ CANCELLED") == cancelled_before + 2
    before = metric_sum(gateway.metrics_url, "dreamstream_steps_total")
    time.sleep(1.0)
    assert metric_sum(gateway.metrics_url, "dreamstream_steps_total") == before  # no step ran after the cancel
    assert metric_sum(gateway.metrics_url, "dreamstream_inflight_dreams") == 0
    assert metric_sum(gateway.metrics_url, "dreamstream_queued_dreams") == 0


def test_a_refused_picture_shows_the_servers_message(browser, gateway, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    bitmap = tmp_path / "photo.bmp"
    Image.open(shared_image("coffee.png")).convert("RGB").save(bitmap)
    open_page(browser, gateway, bitmap)
    browser.find_element(By.ID, "dream").click()
    final = watch(browser, lambda state: state["error"] != "" and not state["dreaming"])[-1]
    assert "FORMAT_NOT_ALLOWED" in final["error"] and "HTTP 400" in final["error"]
    assert "PNG, JPEG" in final["error"]  # the server's own message: what to send instead
    assert final["status"] == "refused" and final["octaves"] == []


@pytest.fixture(scope="module")
def guarded_gateway(lite0_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tokens = tmp_path_factory.mktemp("web-tokens") / "tokens"
    tokens.write_text("page-token\n")
    server = GatewayProcess(lite0_dir.parent, "--auth-token-file", str(tokens))
    yield server
    assert server.stop() == 0


def test_with_a_token_file_the_page_asks_for_the_token_and_then_dreams(browser, guarded_gateway, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{guarded_gateway.url}/")
    asked = watch(browser, lambda state: state["error"] != "", timeout=30)[-1]
    assert "MISSING_TOKEN" in asked["error"] and "Authorization: Bearer" in asked["error"]
    assert browser.find_element(By.ID, "token-label").is_displayed()
    browser.find_element(By.ID, "token").send_keys("page-token", Keys.TAB)  # `change` loads the models again
    watch(browser, lambda state: state["error"] == "" and state["models"] > 0, timeout=30)
    browser.find_element(By.ID, "picture").send_keys(str(shared_image("coffee.png")))
    for element_id, value in {"octaves": "1", "steps": "2", "max-size": "64"}.items():
        browser.find_element(By.ID, element_id).clear()
        browser.find_element(By.ID, element_id).send_keys(value)
    browser.find_element(By.ID, "original-colors").click()
    browser.find_element(By.ID, "dream").click()
    final = watch(browser, lambda state: state["status"].startswith("done"))[-1]
    assert final["octaves"] == [1] and final["error"] == ""
