"""The web page, in a real browser: Debian's Chromium driven by Playwright, against real servers: the
two-model repository (classify, embed), and the constructed detect, segment and embed models of
tests/task_models.py, whose answers are known by construction (conftest's session-wide `task_server`). Set
TORCHREST_SCREENSHOTS=DIR to keep the screenshots (try, watch, detect, segment, embed) there; docs/ holds
the ones the README shows."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import CAT_LABELS, DATA, PHOTOS, Server, running_server
from tests.own_task_models import ROOT, half_black_half_white, write_repository
from tests.task_models import photo_with_shapes

pytestmark = pytest.mark.slow(seconds=20)

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, lite0_repository: Path) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("web"), "--model-repository", str(lite0_repository)) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield launched
        launched.close()


@contextlib.contextmanager
def opened(browser: Browser, server: Server) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server.url}/")
    page.wait_for_selector("#model option", state="attached")
    yield page
    context.close()
    assert errors == [], errors  # no script error on the page, whatever the test did


@pytest.fixture()
def page(browser: Browser, server: Server) -> Iterator[Page]:
    with opened(browser, server) as page:
        yield page


@pytest.fixture()
def task_page(browser: Browser, task_server: Server) -> Iterator[Page]:
    with opened(browser, task_server) as page:
        yield page


def screenshot(page: Page, name: str, selector: str | None = None) -> None:
    """The whole page, or the element `selector` picks."""
    folder = os.environ.get("TORCHREST_SCREENSHOTS")
    if folder and selector:
        page.locator(selector).screenshot(path=str(Path(folder) / name))
    elif folder:
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
    assert task_choice(page) == (["classify"], "classify", False)
    page.select_option("#model", "tiny")
    assert task_choice(page) == (["classify"], "classify", False)
    page.set_input_files("#file", str(DATA / "cat.jpg"))
    page.wait_for_selector("#labels li")
    assert page.inner_text("#labels li:first-child .label") in {"north", "east", "south", "west"}
    assert table(page) == {"lite0 (default)": "classify", "tiny": "classify"}


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


def task_choice(page: Page) -> tuple[list[str], str, bool]:
    """The task picker's options, its value and whether it can be changed."""
    options, value, enabled = page.eval_on_selector(
        "#task", "select => [[...select.options].map((o) => o.value), select.value, !select.disabled]"
    )
    return options, value, enabled


def table(page: Page) -> dict[str, str]:
    """The watch table: model -> its tasks."""
    page.wait_for_selector("#models tbody tr")
    rows = page.eval_on_selector_all(
        "#models tbody tr", "rows => rows.map((r) => [...r.cells].map((c) => c.textContent))"
    )
    return {row[0]: row[1] for row in rows}


def photo_file(folder: Path, name: str, photo: bytes) -> str:
    path = folder / name
    path.write_bytes(photo)
    return str(path)


# a 640x480 photo stored turned (EXIF orientation 6): the browser shows it upright, as the server answers
DETECT_SHAPES = {"red": (40, 60, 200, 180), "green": (300, 100, 420, 300), "blue": (450, 260, 600, 440)}


def drawn_boxes(page: Page) -> list[tuple[str, list[float], list[int]]]:
    """Each box over the photo: its tag, where it is drawn (in the photo's pixels, from where it shows on
    the page) and the photo's size as the browser sees it."""
    return page.evaluate(
        """() => {
            const photo = document.getElementById("preview"), at = photo.getBoundingClientRect();
            const scale = photo.naturalWidth / at.width;
            return [...document.querySelectorAll("#boxes .box")].map((box) => {
                const r = box.getBoundingClientRect();
                return [box.querySelector(".tag").textContent, [r.left - at.left, r.top - at.top, r.right - at.left,
                    r.bottom - at.top].map((v) => v * scale), [photo.naturalWidth, photo.naturalHeight]];
            });
        }"""
    )


def test_detect_draws_the_boxes_over_the_photo(task_page: Page, task_server: Server, tmp_path: Path) -> None:
    page = task_page
    tasks = {name.removesuffix(" (default)"): task for name, task in table(page).items()}
    assert tasks == {"shapes": "detect", "shapes_nms": "detect", "regions": "segment", "colour": "embed"} | {
        "fragile": "classify",
        "both": "classify, embed",
    }
    page.select_option("#model", "shapes")
    assert task_choice(page) == (["detect"], "detect", False)
    photo, _ = photo_with_shapes((640, 480), DETECT_SHAPES, orientation=6)
    page.set_input_files("#file", photo_file(tmp_path, "shapes.jpg", photo))
    page.wait_for_selector("#timing-bar span")
    answer = httpx.post(f"{task_server.url}/detect?model=shapes", files={"image": photo}, timeout=30).json()
    assert answer["image"] == {"width": 640, "height": 480}
    served = {d["label"]: d["box"] for d in answer["detections"]}
    for width, tolerance in ((1100, 1.5), (375, 2.5)):  # a pixel of the page's, as wide as it is at each
        page.set_viewport_size({"width": width, "height": 900})
        drawn = drawn_boxes(page)
        assert len(drawn) == 3
        for tag, box, natural in drawn:
            name = tag.split()[0]
            assert tag == f"{name} 95.0%" and natural == [640, 480]
            assert np.allclose(box, served[name], atol=tolerance), (width, name, box, served[name])
            assert np.allclose(box, DETECT_SHAPES[name], atol=4), (width, name, box)  # and where the shape is
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 376
    page.set_viewport_size({"width": 1100, "height": 900})
    items = page.eval_on_selector_all("#detections li", "items => items.map((i) => i.textContent)")
    assert sorted(item.split()[0] for item in items) == ["blue", "green", "red"]
    assert "inference" in page.inner_text("#timing")
    screenshot(page, "web-detect.png", "#try")


def test_segment_draws_the_mask_and_names_its_classes(task_page: Page, task_server: Server, tmp_path: Path) -> None:
    page = task_page
    page.select_option("#model", "regions")
    shapes = {"red": (40, 40, 200, 160), "blue": (260, 180, 440, 320)}  # no green
    photo, _ = photo_with_shapes((480, 360), shapes)
    page.set_input_files("#file", photo_file(tmp_path, "regions.jpg", photo))
    page.wait_for_selector("#mask:not([hidden])")
    answer = httpx.post(f"{task_server.url}/segment?model=regions", files={"image": photo}, timeout=30).json()
    legend = page.eval_on_selector_all(
        "#legend li", "items => items.map((i) => [i.textContent, getComputedStyle(i.firstChild).backgroundColor])"
    )
    names = [text.split()[0] for text, _ in legend]
    assert names == [c["label"] for c in answer["classes"]] == ["background", "red", "blue"]
    for (text, _), entry in zip(legend, answer["classes"], strict=True):
        assert text.split()[1] == f"{100 * entry['pixels'] / (480 * 360):.1f}%"
    assert abs(float(legend[1][0].split()[1][:-1]) - 100 * 160 * 120 / (480 * 360)) < 1  # red's share
    # the overlay: the photo's size, over it, each class in its legend colour, the background clear
    overlay = page.evaluate(
        """() => {
            const canvas = document.getElementById("mask"), context = canvas.getContext("2d");
            const pixel = (x, y) => [...context.getImageData(x, y, 1, 1).data];
            const on = canvas.getBoundingClientRect();
            const photo = document.getElementById("preview").getBoundingClientRect();
            return {size: [canvas.width, canvas.height], red: pixel(120, 100), blue: pixel(350, 250),
                    background: pixel(10, 340), offset: [on.left - photo.left, on.top - photo.top,
                    on.width - photo.width, on.height - photo.height]};
        }"""
    )
    assert overlay["size"] == [480, 360] and np.allclose(overlay["offset"], 0, atol=0.5)
    assert overlay["background"][3] == 0
    expected = Image.open(io.BytesIO(base64.b64decode(answer["mask"])))
    assert expected.size == (480, 360) and expected.getpixel((120, 100)) == 1 and expected.getpixel((350, 250)) == 3
    for (_, colour), pixel in ((legend[1], overlay["red"]), (legend[2], overlay["blue"])):
        rgb = [int(v) for v in colour[colour.index("(") + 1 : -1].split(",")]
        assert np.allclose(pixel[:3], rgb, atol=2) and pixel[3] > 100, (pixel, colour)
    assert legend[1][1] != legend[2][1]
    screenshot(page, "web-segment.png", "#try")
    # a file that is no image: the server's error, the last answer cleared
    page.set_input_files("#file", files=[{"name": "photo.jpg", "mimeType": "image/jpeg", "buffer": b"not an image"}])
    page.wait_for_selector("#error:not([hidden])")
    assert "400 invalid_image" in page.inner_text("#error")
    assert page.locator("#legend li").count() == 0 and page.is_hidden("#mask")


def test_embed_compares_two_photos(task_page: Page, task_server: Server) -> None:
    page = task_page
    page.select_option("#model", "both")  # classify and embed: its own task first, embed on request
    assert task_choice(page) == (["classify", "embed"], "classify", True)
    page.select_option("#task", "embed")
    assert page.is_hidden("#drop") and page.is_visible("#drop-a") and page.is_visible("#drop-b")
    with httpx.Client(base_url=task_server.url, timeout=30) as client:
        cat, rocket = (
            np.array(client.post("/embed?model=both", files={"image": PHOTOS[name]}).json()["embedding"])
            for name in ("cat", "rocket")
        )
    expected = float(cat @ rocket / np.linalg.norm(cat) / np.linalg.norm(rocket))
    # the same photo as A and B: alike, exactly
    page.set_input_files("#file-a", str(DATA / "cat.jpg"))
    page.set_input_files("#file-b", str(DATA / "cat.jpg"))
    page.wait_for_selector("#similarity:not([hidden])")
    assert abs(float(page.get_attribute("#cosine-value", "data-cosine") or "nan") - 1) < 1e-6
    for slot in ("a", "b"):
        assert page.inner_text(f"#about-{slot}").startswith(f"{len(cat)} dimensions")
    # a photo from the page's own picker goes to A, the older one: a cat and a rocket, less alike
    page.set_input_files("#file", str(DATA / "rocket.jpg"))
    page.wait_for_function(
        """() => !document.getElementById("similarity").hidden
            && Number(document.getElementById("cosine-value").dataset.cosine) < 0.99"""
    )
    cosine = float(page.get_attribute("#cosine-value", "data-cosine") or "nan")
    assert abs(cosine - expected) < 1e-5, (cosine, expected)
    assert page.inner_text("#cosine-value") == f"{cosine:.4f}"
    assert "inference" in page.inner_text("#timing")
    screenshot(page, "web-embed.png", "#try")
    # each photo's zone opens its own picker from the keyboard; the pair fits a phone
    page.evaluate("window.picked = 0; document.getElementById('file-b').click = () => { window.picked += 1; }; 0")
    page.focus("#drop-b")
    page.keyboard.press("Enter")
    assert page.evaluate("window.picked") == 1
    page.set_viewport_size({"width": 375, "height": 800})
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 376


def test_a_task_without_a_view_shows_as_text_and_rotated_boxes_turned(browser: Browser, tmp_path: Path) -> None:
    # a task of one's own (examples/tasks/depth.py) declares no view: the page shows its JSON, long strings cut;
    # obb's view is the boxes one, its boxes turned by their angle
    repository = write_repository(tmp_path / "models")
    with (
        running_server(tmp_path, "--model-repository", str(repository), env={"PYTHONPATH": str(ROOT)}) as server,
        opened(browser, server) as page,
    ):
        page.select_option("#model", "depth")
        assert task_choice(page) == (["depth"], "depth", False)
        page.set_input_files("#file", photo_file(tmp_path, "halves.png", half_black_half_white()))
        page.wait_for_selector("#answer-json:not([hidden])")
        shown = json.loads(page.inner_text("#answer-json"))
        assert shown["image"] == {"width": 200, "height": 100} and shown["min"] == pytest.approx(1.0)
        assert shown["depth"].endswith("characters)") and len(shown["depth"]) < 260  # the PNG, cut short
        assert "inference" in page.inner_text("#timing")
        screenshot(page, "web-own-task.png", "#try")
        # obb's rotated boxes, drawn turned: the box of CentredBox, 100 x 50 about (100, 50), turned 0.5 rad
        page.select_option("#model", "rotated")
        assert task_choice(page) == (["obb"], "obb", False)
        page.set_input_files("#file", photo_file(tmp_path, "halves-again.png", half_black_half_white()))
        page.wait_for_selector("#boxes .box")
        transform = page.eval_on_selector("#boxes .box", "box => box.style.transform")
        ((tag, (x1, y1, x2, y2), natural),) = drawn_boxes(page)  # the turned box's bounds, as the page shows it
        assert transform == "rotate(0.5rad)" and tag.startswith("class_1 ") and natural == [200, 100]
        spread_x = 100 * math.cos(0.5) + 50 * math.sin(0.5)  # the bounds of a 100 x 50 box turned 0.5 rad
        spread_y = 100 * math.sin(0.5) + 50 * math.cos(0.5)
        expected = [100 - spread_x / 2, 50 - spread_y / 2, 100 + spread_x / 2, 50 + spread_y / 2]
        assert np.allclose([x1, y1, x2, y2], expected, atol=2.5), ([x1, y1, x2, y2], expected)
        assert "turned 29°" in page.inner_text("#detections")
