"""End to end in a real headless browser: the served page, clicked through as a user would.

Drives Debian's Chromium (/usr/bin/chromium) with Playwright's sync API; never Playwright's own browser downloads.
Skipped (with the reason) only when Chromium or the playwright package is missing.
"""

import re
from pathlib import Path

import pytest

from engine.specs import ASSETS
from scripts.screenshot import CHROMIUM_ARGS
from tests.served import free_port

CHROMIUM = Path("/usr/bin/chromium")
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
    # The example lands in the shared image input, shown at a readable size (the toy images are 48 px).
    shown = page.locator(f'[data-testid="image"] .image-frame img[src$="/{first_example}"]')
    expect(shown).to_be_visible()
    box = shown.bounding_box()
    assert box is not None and box["width"] >= 200 and box["height"] >= 200, box

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

    # Latents: the selected latent's card, from the shipped toy index (its top images with the latent's heatmap).
    page.get_by_role("tab", name="Latents").click()
    card_title = page.get_by_test_id("markdown").filter(has_text=f"latent {latent}:")
    expect(card_title).to_be_visible(timeout=RUN_S * 1000)
    expect(card_title).to_contain_text("fires on (images)")
    expect(page.locator('[data-testid="gallery"] img, .gallery img, button.thumbnail-item img').first).to_be_visible()

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


def test_the_diff_tab_names_the_planted_shortcut_and_localises_it(page, page_errors):
    """The Diff tab walked as a user would: diff the toy pair, then patch on an example with the marker."""
    marker_example = next(p.name for p in sorted((ASSETS / "examples").glob("*_marker.png")))
    thumbnail = page.locator(f'button.gallery-item:has(img[src$="/{marker_example}"])')
    expect(thumbnail).to_be_visible(timeout=LOAD_S * 1000)
    thumbnail.click()
    page.get_by_role("tab", name="Diff").click()
    page.get_by_label("Probe set").fill("24")
    page.get_by_role("button", name="Diff the checkpoints").click()
    summary = page.get_by_test_id("markdown").filter(has_text="predictions changed")
    expect(summary).to_contain_text("marker=present", timeout=RUN_S * 1000)
    page.get_by_role("button", name="Patch", exact=True).click()
    patched = page.get_by_test_id("markdown").filter(has_text="Denoising restores")
    expect(patched).to_contain_text("noising is shown apart", timeout=RUN_S * 1000)
    expect(page.locator('img[src*="patch_denoising0_"]').first).to_be_visible(timeout=RUN_S * 1000)
    assert not page_errors, f"errors in the page: {page_errors}"
