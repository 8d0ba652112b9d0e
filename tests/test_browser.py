"""End to end in a real headless browser: the served page, clicked through as a user would.

Drives Debian's Chromium (/usr/bin/chromium) with Playwright's sync API; never Playwright's own browser downloads.
Skipped (with the reason) only when Chromium or the playwright package is missing.
"""

import re
import socket
from pathlib import Path

import pytest

from engine.specs import ASSETS
from scripts.screenshot import CHROMIUM_ARGS

CHROMIUM = Path("/usr/bin/chromium")
LOAD_S, RUN_S = 30, 30  # generous per-step limits; the whole test takes well under a minute on a CPU

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install playwright)"
)
pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing (apt-get install --no-install-recommends chromium)"
)
expect = sync_api.expect


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url():
    from app import create_app

    app = create_app("cpu")
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture
def page_errors() -> list[str]:
    """Uncaught exceptions in the page (e.g. a component whose frontend failed to load)."""
    return []


@pytest.fixture
def page(url, page_errors):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(LOAD_S * 1000)
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(url, wait_until="domcontentloaded")  # never "networkidle": Gradio keeps a connection open
            yield page
        finally:
            browser.close()


def test_example_attribute_then_steer_in_the_browser(page, page_errors, tmp_path):
    first_example = sorted((ASSETS / "examples").glob("*.png"))[0].name
    thumbnail = page.locator(f'button.gallery-item:has(img[src$="/{first_example}"])')
    try:
        expect(thumbnail).to_be_visible(timeout=LOAD_S * 1000)
    except AssertionError as error:
        raise AssertionError(
            f"the example {first_example} never showed in the 'Toy-world examples' set; errors in the page: "
            f"{page_errors or 'none'} (a 404 on /gradio_api/custom_component/ means a component's frontend is missing)"
        ) from error
    thumbnail.click()
    # The example lands in the shared image input.
    expect(page.locator(f'[data-testid="image"] .image-frame img[src$="/{first_example}"]')).to_be_visible()

    # Attribution.
    page.get_by_role("button", name="Attribute", exact=True).click()
    summary = page.get_by_test_id("markdown").filter(has_text="Prediction:")
    expect(summary).to_be_visible(timeout=RUN_S * 1000)
    expect(summary).to_contain_text("faithfulness")
    top_latents = page.get_by_role("grid", name=re.compile(r"^Top latents"))
    first_latent = top_latents.get_by_test_id("cell-0-0")
    expect(first_latent).to_have_text(re.compile(r"^\s*\d+\s*$"), timeout=RUN_S * 1000)
    assert top_latents.locator('[role="row"][data-index]').count() >= 1
    latent = first_latent.inner_text().strip()

    # Steering: the top latent carried over into the latent ids; removing it shows before and after.
    page.get_by_role("tab", name="Steering").click()
    latent_ids = page.get_by_label("Latent ids (comma-separated)")
    expect(latent_ids).to_be_visible()
    expect(latent_ids).to_have_value(latent)
    page.get_by_role("button", name="Steer", exact=True).click()
    steer_summary = page.get_by_test_id("markdown").filter(has_text="Before:")
    expect(steer_summary).to_be_visible(timeout=RUN_S * 1000)
    expect(steer_summary).to_contain_text("after:")
    expect(page.get_by_role("grid", name="Probabilities before and after").get_by_test_id("cell-0-0")).not_to_be_empty()

    shot = tmp_path / "steering.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0
    assert not page_errors, f"errors in the page: {page_errors}"
