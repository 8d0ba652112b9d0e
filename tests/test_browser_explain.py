"""The Explain tab in a real headless browser (Debian's Chromium through Playwright), clicked as a user would:
Attribution selects a latent, Explain names it with its controls and a sweep, then explains the top latents,
and the Attribution table shows their explanations."""

import re

import pytest

from engine.specs import ASSETS, TOY_VLM_DIR
from tests.served import CHROMIUM, browser_page, free_port

LOAD_S, RUN_S = 30, 60
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing"),
    pytest.mark.skipif(not TOY_VLM_DIR.is_dir(), reason="assets/toy_vlm is not built"),
]
expect = sync_api.expect


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from app import create_app
    from ui.layout import APP_CSS

    app = create_app("cpu", explain_cache=str(tmp_path_factory.mktemp("explanations")))
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=APP_CSS)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def test_explain_a_latent_then_the_top_latents_in_the_browser(url):
    errors: list[str] = []
    with browser_page(url, LOAD_S, errors) as page:
        example = sorted((ASSETS / "examples").glob("*.png"))[0].name
        page.locator(f'button.gallery-item:has(img[src$="/{example}"])').click()
        page.get_by_role("button", name="Attribute", exact=True).click()
        top = page.get_by_role("grid", name=re.compile(r"^Top latents")).get_by_test_id("cell-0-0")
        expect(top).to_have_text(re.compile(r"^\s*\d+\s*$"), timeout=RUN_S * 1000)

        page.get_by_role("tab", name="Explain").click()
        page.get_by_role("button", name="Explain the selected latent").click()
        reading = page.get_by_test_id("markdown").filter(has_text="Explanation: adding")
        expect(reading).to_be_visible(timeout=RUN_S * 1000)
        expect(reading).to_contain_text("32x its typical strength")
        controls = page.get_by_role("grid", name="The explanation and its controls")
        expect(controls.get_by_test_id("cell-1-0")).to_have_text("unsteered")
        expect(controls.get_by_test_id("cell-1-1")).to_have_text("nothing")

        page.get_by_role("button", name="Sweep", exact=True).click()
        swept = page.get_by_test_id("markdown").filter(has_text=re.compile("first changes at|at every coefficient"))
        expect(swept).to_be_visible(timeout=RUN_S * 1000)

        page.get_by_role("button", name="Explain the top latents").click()
        expect(page.get_by_test_id("markdown").filter(has_text="Explained the 5 latents")).to_be_visible(
            timeout=RUN_S * 1000
        )
        page.get_by_role("tab", name="Attribution").click()
        header = page.get_by_role("grid", name=re.compile(r"^Top latents")).get_by_role("columnheader")
        expect(header.filter(has_text="explanation")).to_have_count(1, timeout=RUN_S * 1000)
        assert not errors, f"errors in the page: {errors}"
