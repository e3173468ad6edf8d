"""The app as the README's run command starts it, ``python app.py``, on a machine without FFmpeg's programs.

The tests' machine has them (tests/install.sh installs ffmpeg for the test media), so the app runs in a
process of its own with them hidden from its PATH, and with its defaults: MCP on. It is driven as its
users drive it: through gradio_client, an MCP client and the page in headless Chromium.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from tests.conftest import FFMPEG_PROGRAMS, path_without
from tests.test_app import CLIP, FAST, SPEECH, assert_playable_mp4, free_port
from tests.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, fill_the_lip_sync_form

ROOT = Path(__file__).resolve().parent.parent
START_SECONDS = 180  # importing torch and Gradio, on 2 cores


@pytest.fixture(scope="module")
def server(weights_dir, tmp_path_factory) -> str:
    """``python app.py`` without ffmpeg and ffprobe on its PATH; yields its URL."""
    folder = tmp_path_factory.mktemp("without-ffmpeg")
    port = free_port()
    env = {**os.environ, "PATH": path_without(FFMPEG_PROGRAMS, folder / "bin"), "LIPSYNC_WEIGHTS_DIR": str(weights_dir),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("LIPSYNC_MCP", None)
    log = folder / "app.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            assert process.poll() is None, f"app.py exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"app.py did not serve within {START_SECONDS} s:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)
    assert "Traceback" not in log.read_text(), log.read_text()


def test_lipsync_stream_and_lipsync_give_playable_mp4s(server, tmp_path):
    client = Client(server, verbose=False, download_files=str(tmp_path))
    stream, video, summary, details = client.predict(face_video=handle_file(str(CLIP)),
                                                     audio=handle_file(str(SPEECH)), **FAST,
                                                     api_name="/lipsync_stream")
    assert not isinstance(stream, str), stream  # no pieces, no playlist: Gradio cannot stream without the programs
    assert_playable_mp4(video, SPEECH)
    assert "LSE-D" in summary and details["output"]["lse_d"] is not None
    video, summary, _ = client.predict(face_video=handle_file(str(CLIP)), audio=handle_file(str(SPEECH)), **FAST,
                                       api_name="/lipsync")
    assert_playable_mp4(video, SPEECH)
    assert "LSE-D" in summary


async def _mcp(url: str, tool: str, arguments: dict) -> tuple[dict, str]:
    """The MCP server's tools by name and the text of one tool's answer."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with streamable_http_client(url) as (read, write, _), ClientSession(read, write) as session:
        await session.initialize()
        tools = {t.name: t for t in (await session.list_tools()).tools}
        answer = await session.call_tool(tool, arguments)
        assert not answer.isError, answer
        return tools, "\n".join(part.text for part in answer.content if getattr(part, "text", None))


def test_mcp_tools_are_served_by_default(server):
    """An MCP client lists the tools and scores a video through the evaluate tool.

    The video goes as a data: URL, the other form Gradio's MCP server takes for a file: Gradio refuses
    to fetch an http URL on a loopback address, such as the file URLs of an app on 127.0.0.1 (its guard
    against server-side request forgery), and would ask a public DNS service about it first.
    """
    video = "data:video/mp4;base64," + base64.b64encode(CLIP.read_bytes()).decode()
    tools, text = asyncio.run(_mcp(server + "gradio_api/mcp/", "evaluate", {"video": video, "mode": "whole-frame"}))
    assert {"lipsync", "preview", "evaluate"} <= set(tools), tools
    print("MCP tools:", ", ".join(sorted(tools)))
    lipsync = tools["lipsync"].inputSchema["properties"]
    assert "as a URL or an uploaded file" in lipsync["face_video"]["description"], lipsync["face_video"]
    assert "in frames per second" in lipsync["fps"]["description"], lipsync["fps"]
    assert "Pixels" in lipsync["pad_bottom"]["description"], lipsync["pad_bottom"]
    evaluate = tools["evaluate"]
    assert "LSE-D" in evaluate.description and "offset in frames" in evaluate.description, evaluate.description
    assert "in frames either way" in evaluate.inputSchema["properties"]["vshift"]["description"]
    assert "LSE-D" in text, text


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
def test_the_page_lip_syncs_and_says_what_ffmpeg_adds(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(server)
            limits = page.locator("#limits").inner_text()
            assert "needs FFmpeg" in limits and "the whole video appears when it is done" in limits, limits
            assert page.locator("#stream-video").count() == 0 or not page.locator("#stream-video").is_visible()
            fill_the_lip_sync_form(page)
            pressed = time.monotonic()
            page.locator("#run-lipsync").click()
            page.wait_for_function(
                "() => { const v = document.querySelector('#output-video video');"
                " return v && v.readyState >= 1 && v.duration > 2; }",
                timeout=TIMEOUT_MS,
            )
            print(f"the whole video was in the page {time.monotonic() - pressed:.1f} s after the click")
            page.locator("#lipsync-summary").get_by_text("LSE-D").wait_for(timeout=60_000)
            assert not page.get_by_text("Error", exact=True).count()
            page.screenshot(path=str(ARTIFACTS / "browser_without_ffmpeg.png"), full_page=True)
        finally:
            browser.close()
