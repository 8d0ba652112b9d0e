"""The exported report opened in headless Chromium without the app: it renders offline (every image inline, no
request leaves the page), shows the reading, warnings and tables, and users' text stays text."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.specs import PHOTOS_DIR
from scripts.screenshot import CHROMIUM_ARGS
from ui.attribution_tab import export_attribution
from ui.common import ModelContext

CHROMIUM = Path("/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing")


@pytest.fixture(scope="module")
def report(workbench, tmp_path_factory) -> Path:
    """A report on a photograph (the toy model warns about it) with a label that is markup."""
    path = export_attribution(
        ModelContext(workbench), str(PHOTOS_DIR / "chelsea.jpg"), "circle, square, <b>dog</b>", "a {}", "",
        "logit_difference", 4,
    )  # fmt: skip
    copy = tmp_path_factory.mktemp("report") / "report.html"  # as a recipient saves it
    copy.write_text(Path(path).read_text(encoding="utf-8"), encoding="utf-8")
    return copy


def test_the_report_opens_offline_with_every_part(report):
    requests: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(java_script_enabled=True, offline=True)
            page = context.new_page()
            page.on("request", lambda request: requests.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(report.as_uri(), wait_until="load")
            assert page.title().startswith("Attribution on")
            body = page.locator("body")
            sync_api.expect(body).to_contain_text("The model says")
            sync_api.expect(page.locator("p.warning").first).to_contain_text("reconstructs only")
            for heading in ("Prediction", "Top latents", "Faithfulness"):
                sync_api.expect(page.get_by_role("heading", name=heading)).to_be_visible()
            images = page.locator("img")
            assert images.count() >= 5  # the photograph and four heatmaps
            widths = images.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            assert all(w > 0 for w in widths), widths  # every image decoded, from the page itself
            # The label typed as markup is shown as text: no bold element, the brackets visible.
            assert page.locator("b").count() == 0
            sync_api.expect(body).to_contain_text("<b>dog</b>")
            assert page.locator("script").count() == 0 and not errors
            rows = page.locator("table").nth(1).locator("tr")
            assert rows.count() == 5  # header + the top 4 latents
        finally:
            browser.close()
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
