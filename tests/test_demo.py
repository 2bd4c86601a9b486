"""``madkit demo``: its endpoints through gradio_client, and the page in a real headless browser
(Debian's chromium driven by Playwright): the image appears block by block, with no console errors.

The browser test is marked slow (a server, a browser and a generation: about 15 s on a shared
2-core machine); .ci/run runs it explicitly, after installing chromium. Everything stays on
127.0.0.1 and every wait is bounded."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_fakes import one_thread  # noqa: F401  (autouse fixture: one intra-op thread)
from eval_helpers import TWO_STEPS, train_tiny
from PIL import Image

from madkit.cli import main

pytest.importorskip("gradio", reason="the demo extra is not installed: pip install 'madkit[demo]'")

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny" / "madformer.toml"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; never a browser Playwright downloads
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("demo") / "tiny", *TWO_STEPS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoints_stream_blocks_and_complete_uploads(run_dir, tmp_path, monkeypatch, capsys):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    from gradio_client import Client, handle_file

    import madkit
    from madkit.demo import launch

    pipe = madkit.load(run_dir, device="cpu")
    demo, url = launch(pipe, port=_free_port(), block=False)
    try:
        assert url.startswith("http://127.0.0.1:") and url in capsys.readouterr().out
        client = Client(url, verbose=False)
        job = client.submit(3, 4, 1.0, 0, api_name="/generate")
        final = job.result(timeout=60)
        frames = [Image.open(path) for path in job.outputs()]
        assert len(frames) == 4  # one picture per finished block of the tiny model's 4 tiles
        assert Image.open(final).size == (256, 256)  # 16x16 enlarged 16x with nearest pixels
        # frame 1 shows the first tile only (the rest grey); the last frame is the image
        first = frames[0].convert("RGB")
        assert first.getpixel((200, 200)) == (128, 128, 128) and first.getpixel((10, 10)) != (128, 128, 128)
        upload = tmp_path / "upload.png"
        Image.new("RGB", (40, 30), "red").save(upload)  # another size: the demo scales it
        row = Image.open(client.predict(handle_file(str(upload)), 2, 3, 0, api_name="/complete"))
        assert row.height == 256 and row.width > 4 * row.height  # original | kept | 3 completions
    finally:
        demo.close()


def test_without_gradio_the_command_says_which_extra(run_dir, monkeypatch, capsys):
    import madkit.errors

    monkeypatch.setattr(madkit.errors.importlib.util, "find_spec", lambda name: None)
    assert main(["demo", str(run_dir)]) == 2
    assert "pip install 'madkit[demo]'" in capsys.readouterr().err


@pytest.mark.slow
def test_the_page_generates_in_a_real_browser(run_dir):
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    port = _free_port()
    env = {**os.environ, **OFFLINE, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "madkit", "demo", str(run_dir), "--port", str(port), "--threads", "1",
         "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        url = _wait_for_url(server, deadline=time.monotonic() + 90)
        assert url == f"http://127.0.0.1:{port}/"
        errors: list[str] = []
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
            try:
                page = browser.new_page()
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(url, timeout=60_000)
                page.wait_for_selector("#generate", timeout=30_000)
                page.wait_for_load_state("networkidle", timeout=30_000)  # the app is wired up, not only drawn
                # every picture the page shows while generating: partial ones first, then the image
                page.evaluate(
                    "() => { window.shown = new Set(); const note = (n) => { if (n.tagName === 'IMG' &&"
                    " n.closest('#picture') && n.src) window.shown.add(n.src); };"
                    " new MutationObserver((records) => records.forEach((r) => { note(r.target);"
                    " r.addedNodes.forEach((n) => { if (n.querySelectorAll) { note(n); n.querySelectorAll('img')"
                    ".forEach(note); } }); })).observe(document.body,"
                    " {subtree: true, childList: true, attributes: true, attributeFilter: ['src']}); }"
                )
                # 100 steps per block: blocks arrive apart (about 0.15 s on a busy 2-core machine), each one shown
                page.fill("#steps input[type=number]", "100")
                page.press("#steps input[type=number]", "Enter")
                page.wait_for_function("() => document.querySelector('#steps input[type=range]').value === '100'",
                                       timeout=10_000)
                page.click("#generate", timeout=30_000)
                # one picture per finished block (the tiny model has 4 tiles), each shown as it arrives
                page.wait_for_function("() => window.shown.size >= 4", timeout=60_000)
                page.wait_for_function(
                    "() => { const i = document.querySelector('#picture img');"
                    " return i && i.complete && i.naturalWidth === 256; }", timeout=60_000,
                )
                shown = page.evaluate("() => window.shown.size")
            finally:
                browser.close()
        assert shown == 4, "the image should build up block by block, not only appear at the end"
        assert errors == []
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _wait_for_url(server: subprocess.Popen, deadline: float) -> str:
    """The URL the demo prints (its line 'madkit demo of ...: URL'), or fail with what it printed."""
    seen = []
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if not line and server.poll() is not None:
            break
        seen.append(line)
        if line.startswith("madkit demo of "):
            return line.rsplit(": ", 1)[1].strip()
    raise AssertionError("madkit demo printed no URL:\n" + "".join(seen[-30:]))
