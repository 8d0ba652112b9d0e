"""The tour: every tab of the served app walked in one headless-Chromium page as a user would (Attribution,
Steering, Explain, Diff, Latents: each tab's main action, and what it shows checked), one screenshot per tab.

It is the walk that writes the README's screenshots (scripts/screenshot.py); here they go to a temporary folder,
or to assets/ with WORKBENCH_WRITE_SCREENSHOTS=1. A tab added to the app without a step in the tour fails it.
"""

import os

import pytest

from engine.specs import ASSETS, TOY_SHORTCUT_DIR, TOY_VLM_DIR
from scripts.screenshot import TABS, pick_example, serve_toy, walk
from tests.served import CHROMIUM, browser_page

STEP_S = 60  # generous per-step limit on a shared CPU; the whole walk takes well under a minute
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing"),
    pytest.mark.skipif(not TOY_VLM_DIR.is_dir(), reason="assets/toy_vlm is not built"),
    pytest.mark.skipif(not TOY_SHORTCUT_DIR.is_dir(), reason="the toy pair's assets are not built"),
    pytest.mark.skipif(not (ASSETS / "toy_index").is_dir(), reason="assets/toy_index is not built"),
]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    app, url = serve_toy(str(tmp_path_factory.mktemp("explanations")))
    yield url
    app.close()


def test_every_tab_walked_in_one_page_with_a_screenshot_each(url, tmp_path):
    out_dir = ASSETS if os.environ.get("WORKBENCH_WRITE_SCREENSHOTS") == "1" else tmp_path
    example = pick_example(sorted((ASSETS / "examples").glob("*.png")), "marker")
    errors: list[str] = []
    with browser_page(url, STEP_S, errors) as page:
        shots = walk(page, example, out_dir, TABS, STEP_S, diff_probe="24")
    assert list(shots) == list(TABS)
    for tab, path in shots.items():
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 50_000, f"{tab}: {path} is not a full-page screenshot"
    assert not errors, f"errors in the page: {errors}"
