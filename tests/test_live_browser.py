"""The live page in real headless Chromium (Debian's ``chromium``, driven by playwright with the system
binary): it shows the run's current frame, refreshes itself as the run goes on, and queues a prompt.
Skipped when Chromium or playwright is absent. Set ``CLIPSTUDIO_SCREENSHOTS`` to keep the screenshot."""
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipstudio.live.server import start_server
from live_helpers import started_runner

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the [live] extra)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")


def test_page_shows_the_frame_refreshes_and_queues(tmp_path):
    runner = started_runner(tmp_path, frame_every=2)
    runner.run(max_steps=4)
    server = start_server(runner.folder, "127.0.0.1", 0, refresh_seconds=0.3)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 800, "height": 800})
            page.goto(url)
            page.wait_for_function("() => document.getElementById('meta').textContent.includes('step 4')")
            page.wait_for_function("() => { const f = document.getElementById('frame');"
                                   " return f.complete && f.naturalWidth === 32 && f.src.includes('step=4'); }")
            assert page.text_content("#prompt") == runner.position.item.prompt
            assert "steps/s" in page.text_content("#meta")
            shot = page.screenshot()
            box = page.locator("#frame").bounding_box()

            runner.run(max_steps=2)  # the page follows the run by itself
            page.wait_for_function("() => document.getElementById('frame').src.includes('step=6')")

            page.fill("#text", "a blue triangle")
            page.click("button")
            page.wait_for_function("() => document.getElementById('answer').textContent.includes('queued')")
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert [e["prompt"] for e in json.loads((runner.folder / "queue.json").read_text())] == ["a blue triangle"]
    saved = Path(os.environ.get("CLIPSTUDIO_SCREENSHOTS", tmp_path)) / "live-page.png"
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_bytes(shot)
    # The screenshot holds the frame: the image's area, scaled back to 32 px, matches the frame of step 4.
    screen = Image.open(io.BytesIO(shot)).convert("RGB")
    area = screen.crop((box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]))
    shown = np.asarray(area.resize((32, 32), Image.NEAREST), dtype=float)
    frame = np.asarray(Image.open(runner.folder / "frames" / "0000000004.png").convert("RGB"), dtype=float)
    assert np.abs(shown - frame).mean() < 8, np.abs(shown - frame).mean()
