"""The page in a real headless Chromium (Debian's, driven by Playwright): upload, press, watch.

Screenshots are saved under tests/artifacts/ (not committed). Skipped when Chromium is missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_app import CLIP, FACE_BOX, SPEECH, FirstPieceGate, serve_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
TIMEOUT_MS = 300_000  # lip sync and two scorings on 2 CPU cores

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


@pytest.fixture(scope="module")
def page(weights_dir):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with serve_app() as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        yield page
        browser.close()


def fill_the_lip_sync_form(page) -> None:
    """The example clip and speech uploaded, the fixed face box and whole-frame scoring set (the generated
    weights find no face)."""
    page.wait_for_selector("#run-lipsync")
    page.locator("#face-video input[type=file]").set_input_files(str(CLIP))
    page.locator("#audio input[type=file]").set_input_files(str(SPEECH))
    page.locator("#advanced").get_by_text("Advanced", exact=True).click()
    page.locator("#box textarea, #box input").first.fill(FACE_BOX)
    page.locator("#scoring-options").get_by_text("Scoring options", exact=True).click()
    page.locator("#score-mode").get_by_label("whole-frame").check()
    # the uploads finish before the button is pressed
    page.wait_for_selector("#face-video video", timeout=60_000)
    page.wait_for_selector("#audio audio, #audio wave, #audio [data-testid=waveform-controls]", state="attached",
                           timeout=60_000)


def test_lip_sync_in_the_browser(page, monkeypatch):
    """The button streams: the first piece plays in the page, sound included, while the engine still
    works (it waits for the page here), then the whole video and the scores appear."""
    gate = FirstPieceGate(monkeypatch)
    fill_the_lip_sync_form(page)
    page.locator("#run-lipsync").click()
    # half of the first piece (0.6 s) plays: picture and sound of it are in the page
    page.wait_for_function(
        "() => { const v = document.querySelector('#stream-video video'); return v && v.currentTime >= 0.3; }",
        timeout=TIMEOUT_MS,
    )
    assert not gate.handed.is_set() or gate.held is None  # the engine is still held at its first piece
    assert page.locator("#output-video video").count() == 0  # the whole file is not there yet
    page.locator("#stream-video").screenshot(path=str(ARTIFACTS / "browser_stream.png"))
    gate.seen()
    # and plays on into the second piece (the first has an encoder of its own: the pieces must join)
    page.wait_for_function(
        "() => { const v = document.querySelector('#stream-video video');"
        " return v && !v.error && v.currentTime >= 1.0; }",
        timeout=TIMEOUT_MS,
    )
    page.wait_for_function(
        "() => { const v = document.querySelector('#output-video video');"
        " return v && v.readyState >= 1 && v.duration > 0; }",
        timeout=TIMEOUT_MS,
    )
    duration = page.evaluate("document.querySelector('#output-video video').duration")
    assert duration > 2
    summary = page.locator("#lipsync-summary")
    summary.get_by_text("LSE-D").wait_for(timeout=60_000)
    assert "lip-synced output" in summary.inner_text()
    status = page.locator("#weights-status").inner_text()
    assert "FAILED" not in status and "fetching" not in status
    page.screenshot(path=str(ARTIFACTS / "browser_lipsync.png"), full_page=True)


def test_before_and_after_curves_after_the_lip_sync(page):
    """Runs after the lip sync above: the input had its own speech, so both curves are drawn."""
    page.wait_for_function(
        "() => { const svg = document.querySelector('#lipsync-plot svg');"
        " if (!svg) return false; const words = [...svg.querySelectorAll('text')].map(t => t.textContent);"
        " return words.includes('output') && words.includes('input'); }",
        timeout=60_000,
    )
    marks = page.locator("#lipsync-plot svg path[aria-roledescription='line mark']").count()
    assert marks >= 2, marks
    page.locator("#lipsync-plot").screenshot(path=str(ARTIFACTS / "browser_before_after.png"))


def test_preview_in_the_browser(page):
    """Uses the files and the fixed box the lip sync above left in the form."""
    page.locator("#at-seconds input").fill("1.5")
    page.locator("#run-preview").click()
    page.locator("#preview-image img").scroll_into_view_if_needed(timeout=120_000)  # it loads lazily, in view
    page.wait_for_function(
        "() => { const img = document.querySelector('#preview-image img');"
        " return img && img.complete && img.naturalWidth === 256; }",
        timeout=30_000,
    )
    page.locator("#preview-image").screenshot(path=str(ARTIFACTS / "browser_preview.png"))


def test_evaluate_tab_holds_the_result(page):
    """Runs after the lip sync above, on the same page."""
    page.get_by_role("tab", name="Evaluate").click()
    # after the lip sync both videos are already there
    page.wait_for_selector("#eval-video video", timeout=30_000)
    page.wait_for_selector("#eval-reference video", timeout=30_000)
    page.locator("#eval-mode").get_by_label("whole-frame").check()
    page.locator("#run-evaluate").click()
    page.locator("#evaluate-summary").get_by_text("LSE-D").wait_for(timeout=TIMEOUT_MS)
    text = page.locator("#evaluate-summary").inner_text()
    assert "A:" in text and "B:" in text
    page.screenshot(path=str(ARTIFACTS / "browser_evaluate.png"), full_page=True)
