"""The web page, in a real browser: Debian's Chromium driven by Playwright, against a real server with
the two-model repository. Set TORCHREST_SCREENSHOTS=DIR to keep the two screenshots (try, watch) there;
docs/ holds the ones the README shows."""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import CAT_LABELS, DATA, PHOTOS, Server, running_server, write_repository

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repository = write_repository(tmp_path_factory.mktemp("repository"))
    with running_server(tmp_path_factory.mktemp("web"), "--model-repository", str(repository)) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture()
def page(browser: Browser, server: Server) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.goto(f"{server.url}/")
    opened.wait_for_selector("#model option", state="attached")
    yield opened
    context.close()
    assert errors == [], errors  # no script error on the page, whatever the test did


def screenshot(page: Page, name: str) -> None:
    folder = os.environ.get("TORCHREST_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def test_browsers_get_the_page_and_clients_the_json(server: Server) -> None:
    page = httpx.get(f"{server.url}/", headers={"Accept": "text/html,application/xhtml+xml"}, timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>torchrest</title>" in page.text
    described = httpx.get(f"{server.url}/", timeout=10)
    assert described.headers["content-type"] == "application/json" and described.json()["name"] == "torchrest"
    for path, kind in (("/web/app.js", "text/javascript"), ("/web/style.css", "text/css")):
        assert httpx.get(f"{server.url}{path}", timeout=10).headers["content-type"] == kind


def test_every_answer_says_where_its_time_went(server: Server) -> None:
    classify = httpx.post(f"{server.url}/classify", files={"image": PHOTOS["cat"]}, timeout=30)
    image = base64.b64encode(PHOTOS["cat"]).decode()
    request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}]}
    v2 = httpx.post(f"{server.url}/v2/models/lite0/infer", json=request, timeout=30)
    for response in (classify, v2):
        stages = dict(part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
        assert set(stages) == {"queue", "decode", "inference", "total"}
        assert float(stages["inference"]) > 0 and float(stages["total"]) >= float(stages["inference"])


def test_choose_a_file_and_see_the_answer_and_its_timing(page: Page) -> None:
    page.set_input_files("#file", str(DATA / "cat.jpg"))
    page.wait_for_selector("#labels li")
    assert page.locator("#labels li").count() == 5
    assert page.inner_text("#labels li:first-child .label") in CAT_LABELS
    timing = page.inner_text("#timing")
    assert "queue" in timing and "decode" in timing and "inference" in timing
    assert page.locator("#timing-bar span").count() == 4
    screenshot(page, "web-try.png")


def test_drop_a_photo(page: Page) -> None:
    encoded = base64.b64encode(PHOTOS["cat"]).decode()
    page.evaluate(
        """(encoded) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "cat.jpg", { type: "image/jpeg" }));
            const drop = new DragEvent("drop", { dataTransfer: transfer, bubbles: true });
            document.getElementById("drop").dispatchEvent(drop);
        }""",
        encoded,
    )
    page.wait_for_selector("#labels li")
    assert page.inner_text("#labels li:first-child .label") in CAT_LABELS


def test_a_bad_file_shows_the_server_error(page: Page, tmp_path: Path) -> None:
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"this is not an image at all")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    error = page.inner_text("#error")
    assert "400 invalid_image" in error, error
    assert page.locator("#labels li").count() == 0


def test_the_model_list_is_the_repository_index(page: Page, server: Server) -> None:
    index = httpx.get(f"{server.url}/v2/repository/index", timeout=10).json()
    options = page.eval_on_selector_all("#model option", "options => options.map((o) => o.value)")
    assert options == [row["name"] for row in index if row["state"] == "READY"]
    page.select_option("#model", "tiny")
    page.set_input_files("#file", str(DATA / "cat.jpg"))
    page.wait_for_selector("#labels li")
    assert page.inner_text("#labels li:first-child .label") in {"north", "east", "south", "west"}
    rows = page.eval_on_selector_all("#models tbody tr", "rows => rows.map((r) => r.cells[0].textContent)")
    assert rows == ["lite0 (default)", "tiny"]


def test_the_charts_move_after_a_burst(page: Page, server: Server) -> None:
    page.wait_for_selector("#model-lite0 [data-chart=rate] output[data-latest]", state="attached")

    def burst() -> None:
        with httpx.Client(timeout=60) as client:
            for _ in range(8):
                client.post(f"{server.url}/classify?model=lite0", files={"image": PHOTOS["cat"]})

    senders = [threading.Thread(target=burst) for _ in range(4)]
    for sender in senders:
        sender.start()
    page.wait_for_function(
        """() => {
            const rate = JSON.parse(document.querySelector("#model-lite0 [data-chart=rate] output").dataset.latest);
            const batch = JSON.parse(document.querySelector("#model-lite0 [data-chart=batch] output").dataset.latest);
            return rate.ok > 0 && batch.batch > 0;
        }""",
        timeout=30_000,
    )
    for sender in senders:
        sender.join()
    latency = page.get_attribute("#model-lite0 [data-chart=latency] output", "data-latest")
    assert latency is not None and '"p99":null' not in latency
    page.locator("#watch").scroll_into_view_if_needed()
    screenshot(page, "web-watch.png")


def test_keyboard_and_a_phone_width(page: Page) -> None:
    # Enter or Space on the drop zone opens the file picker (its input's click(), counted here: headless
    # Chromium does not always hand a keyboard-opened chooser to Playwright)
    page.evaluate("window.picked = 0; document.getElementById('file').click = () => { window.picked += 1; }; 0")
    page.focus("#drop")
    page.keyboard.press("Enter")
    page.keyboard.press(" ")
    assert page.evaluate("window.picked") == 2
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.id") in {"camera", "file", "model"}
    for control in ("#model", "#file"):
        assert page.locator(f"label[for={control[1:]}]").count() == 1
    page.set_viewport_size({"width": 375, "height": 800})
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 376
