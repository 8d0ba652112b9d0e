"""An exported latent-card page opens in a real headless browser with nothing else running: no app, no network.

Drives Debian's Chromium (/usr/bin/chromium) with Playwright's sync API, as tests/test_browser.py does; skipped
only when Chromium or the playwright package is missing.
"""

from pathlib import Path

import pytest

from engine import cards, index
from scripts.screenshot import CHROMIUM_ARGS

CHROMIUM = Path("/usr/bin/chromium")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install playwright)"
)
pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing (apt-get install --no-install-recommends chromium)"
)
HOSTILE = '<img src="x" id="injected" onerror="document.title=\'owned\'">'


@pytest.fixture(scope="module")
def exported(workbench, tmp_path_factory) -> Path:
    """The cards of three latents as one page, one of them with a label that is markup."""
    found = index.find_index(workbench)
    built = [cards.latent_card(workbench, found, latent, n_examples=8) for latent in (3, 53, 10)]
    built[1] = cards.LatentCard(**{**built[1].__dict__, "label": HOSTILE})
    path = tmp_path_factory.mktemp("export") / "cards.html"
    path.write_text(cards.cards_html(built, "Latent cards"), encoding="utf-8")
    return path


def test_exported_cards_render_offline_in_chromium(exported):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(offline=True)  # a self-contained page needs no network
            page = context.new_page()
            requests = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(exported.as_uri(), wait_until="load")
            assert page.locator("section.card").count() == 3
            assert page.locator("section.card svg rect").count() > 3  # the histograms
            images = page.locator("section.card img")
            assert images.count() == 24
            sizes = images.evaluate_all("images => images.map(im => [im.complete, im.naturalWidth])")
            side = 48 * (cards.THUMBNAIL_PX // 48)  # toy scenes: scaled by the largest whole factor that fits
            assert all(done and width == side for done, width in sizes), sizes
            assert page.locator("#injected").count() == 0 and page.title() == "Latent cards"
            assert HOSTILE in page.locator("#latent-53 h2").inner_text()  # shown as text
            assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
        finally:
            browser.close()
