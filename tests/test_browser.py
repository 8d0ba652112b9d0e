"""End to end in a real headless browser: the served page, clicked through as a user would: the readings, warnings
and number formats, a failed request, an unavailable model. (Every tab's main action is walked by
tests/test_browser_tour.py.)

Drives Debian's Chromium (/usr/bin/chromium) with Playwright's sync API; never Playwright's own browser downloads.
Skipped (with the reason) only when Chromium or the playwright package is missing.
"""

import re

import pytest

from engine.specs import ASSETS
from tests.served import CHROMIUM, browser_page, free_port

LOAD_S, RUN_S = 30, 30  # generous per-step limits; the whole test takes well under a minute on a CPU

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install playwright)"
)
pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing (apt-get install --no-install-recommends chromium)"
)
expect = sync_api.expect


UNAVAILABLE = "ViT-B-32 (openai, not cached here)"


@pytest.fixture(scope="module")
def url():
    from app import create_app
    from engine.registry import TOY, Preset
    from engine.specs import ModelSpec, SAESpec

    unavailable = Preset(UNAVAILABLE, ModelSpec("open_clip", "ViT-B-32", "openai"), SAESpec.toy(), "offline")
    app = create_app("cpu", {"toy": TOY, UNAVAILABLE: unavailable})
    port = free_port()
    from ui.layout import APP_CSS

    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=APP_CSS)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture
def page_errors() -> list[str]:
    """Uncaught exceptions in the page (e.g. a component whose frontend failed to load)."""
    return []


@pytest.fixture
def page(url, page_errors):
    with browser_page(url, LOAD_S, page_errors) as page:
        yield page


NUMBER = re.compile(r"-?\d+(\.\d+)?(e[-+]\d+)?")


def shown_numbers(grid) -> list[str]:
    cells = grid.locator('[data-testid^="cell-"]').all_inner_texts()
    return [c.strip() for c in cells if NUMBER.fullmatch(c.strip())]


def significant_digits(text: str) -> int:
    return len(text.lstrip("-").split("e")[0].replace(".", "").lstrip("0"))


def test_readings_warnings_and_numbers_on_an_example_and_on_a_photograph(page, page_errors):
    # The photographs are not offered with the toy model (its SAE does not know them).
    expect(page.get_by_text("Toy-world examples")).to_be_visible(timeout=LOAD_S * 1000)
    expect(page.locator('button.gallery-item:has(img[src$="/chelsea.jpg"])')).to_have_count(0)
    first_example = sorted((ASSETS / "examples").glob("*.png"))[0].name
    page.locator(f'button.gallery-item:has(img[src$="/{first_example}"])').click()
    expect(page.locator(f'[data-testid="image"] .image-frame img[src$="/{first_example}"]')).to_be_visible()
    page.get_by_role("button", name="Attribute", exact=True).click()
    reading = page.get_by_test_id("markdown").filter(has_text="The model says")
    expect(reading).to_be_visible(timeout=RUN_S * 1000)
    expect(reading).to_contain_text("%")
    expect(page.get_by_text("Warning:")).to_have_count(0)  # a toy scene: nothing to warn about
    predictions = page.get_by_role("grid", name=re.compile(r"^Predictions"))
    expect(predictions.get_by_test_id("cell-0-0")).not_to_be_empty()
    probabilities = [float(v) for v in shown_numbers(predictions)[1::2]]  # (probability, logit) per row
    assert probabilities == sorted(probabilities, reverse=True), probabilities
    for grid in (predictions, page.get_by_role("grid", name=re.compile(r"^Faithfulness"))):
        numbers = shown_numbers(grid)
        assert numbers and all(significant_digits(n) <= 3 for n in numbers if "." in n or "e" in n), numbers

    # Steering and the sweep, each with its reading.
    page.get_by_role("tab", name="Steering").click()
    page.get_by_role("button", name="Steer", exact=True).click()
    expect(page.get_by_test_id("markdown").filter(has_text="Before the edit the model says")).to_be_visible(
        timeout=RUN_S * 1000
    )
    page.get_by_role("button", name="Sweep", exact=True).click()
    expect(page.get_by_test_id("markdown").filter(has_text="Unedited (strength 1) the model says")).to_be_visible(
        timeout=RUN_S * 1000
    )
    sweep = page.get_by_role("grid", name="Sweep")
    numbers = shown_numbers(sweep)
    assert numbers and all(significant_digits(n) <= 3 for n in numbers), numbers

    # A photograph uploaded on the toy model: the warning shows before any result, then with the result.
    page.get_by_role("tab", name="Attribution").click()
    page.locator('[data-testid="image"] input[type="file"]').set_input_files(str(ASSETS / "photos" / "chelsea.jpg"))
    warning = page.get_by_test_id("markdown").filter(has_text="Warning:")
    expect(warning.first).to_be_visible(timeout=RUN_S * 1000)
    expect(warning.first).to_contain_text("reconstructs only")
    page.get_by_role("button", name="Attribute", exact=True).click()
    expect(warning).to_have_count(2, timeout=RUN_S * 1000)  # beside the image and above the tables
    assert not page_errors, f"errors in the page: {page_errors}"


def test_a_failed_request_clears_the_previous_result(page, page_errors):
    first_example = sorted((ASSETS / "examples").glob("*.png"))[0].name
    page.locator(f'button.gallery-item:has(img[src$="/{first_example}"])').click()
    page.get_by_role("button", name="Attribute", exact=True).click()
    reading = page.get_by_test_id("markdown").filter(has_text="The model says")
    expect(reading).to_be_visible(timeout=RUN_S * 1000)
    page.get_by_label("Target label (blank: the predicted one)").fill("no such label")
    page.get_by_role("button", name="Attribute", exact=True).click()
    expect(page.get_by_text("unknown target label").first).to_be_visible(timeout=RUN_S * 1000)
    expect(reading).to_have_count(0, timeout=RUN_S * 1000)
    expect(page.get_by_role("grid", name=re.compile(r"^Predictions")).get_by_test_id("cell-0-0")).to_have_count(0)
    assert not page_errors, f"errors in the page: {page_errors}"


def test_an_unavailable_model_sends_the_menu_back_and_keeps_the_boxes(page, page_errors):
    labels = page.get_by_label("Labels (comma-separated)")
    expect(labels).to_be_visible(timeout=LOAD_S * 1000)
    labels.fill("circle, square")
    menu = page.get_by_label("Model and SAE")
    menu.click()
    page.get_by_role("option", name=UNAVAILABLE).click()
    expect(page.get_by_text("cannot be used here").first).to_be_visible(timeout=RUN_S * 1000)
    expect(menu).to_have_value("toy", timeout=RUN_S * 1000)
    expect(labels).to_have_value("circle, square")
    expect(page.get_by_label("Prompt template ({} is replaced by each label)")).not_to_have_value("Error")
    # The app still works on the model it stayed on.
    first_example = sorted((ASSETS / "examples").glob("*.png"))[0].name
    page.locator(f'button.gallery-item:has(img[src$="/{first_example}"])').click()
    page.get_by_role("button", name="Attribute", exact=True).click()
    expect(page.get_by_test_id("markdown").filter(has_text="The model says")).to_be_visible(timeout=RUN_S * 1000)
    assert not page_errors, f"errors in the page: {page_errors}"
