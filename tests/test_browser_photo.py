"""A new user's walk on a photograph with a real architecture, in headless Chromium: open_clip ViT-B-32 (random
weights from a seed) with a random SAE, through Attribution, Steering and Diff (against a perturbed copy loaded
from safetensors), asserting the readings, the warnings and the number formats a stakeholder reads; then a
recipe link opens the page with its state.

The random SAE explains almost nothing of the photograph, so the trust warning must show, before any result and
above the tables.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest

from engine.bench import random_sae
from engine.registry import DiffPreset, Preset
from engine.sources import AllowedDirs
from engine.specs import PHOTOS_DIR, ModelSpec, SAESpec

from .served import CHROMIUM, browser_page, free_port, perturbed_checkpoint

STEP_S = 300  # generous per-step limit: ViT-B-32 on a shared 2-core CPU (a diff takes about a minute)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing")
expect = sync_api.expect

VIT = "ViT-B-32 (random weights) + random SAE"
PAIR = "ViT-B-32 vs a perturbed copy"
LABELS = "cat, dog, car, coffee"
NUMBER = re.compile(r"-?\d+(\.\d+)?(e[-+]\d+)?")


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from app import create_app, serve

    directory = tmp_path_factory.mktemp("vit")
    random_sae(768, 1024, 16, "blocks.8.resid_post", seed=4).save(directory / "sae")
    reference = ModelSpec("open_clip", "ViT-B-32")
    sae = SAESpec(str(directory / "sae"))
    intervened = perturbed_checkpoint(reference, 10, directory / "finetuned.safetensors")
    app = create_app(
        "cpu",
        {VIT: Preset(VIT, reference, sae, "random weights")},
        allowed=AllowedDirs.default([directory]),
        concepts=("cat", "dog", "car", "coffee", "rocket", "red", "striped", "grass", "sky", "water"),
        pairs={PAIR: DiffPreset(PAIR, reference, intervened, sae, "random weights")},
        explain_pairs={},
    )
    port = free_port()
    serve(app, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture
def page(url):
    errors: list[str] = []
    with browser_page(None, STEP_S, errors) as page:
        page.errors = errors
        yield page


def shown_numbers(grid) -> list[str]:
    cells = grid.locator('[data-testid^="cell-"]').all_inner_texts()
    return [c.strip() for c in cells if NUMBER.fullmatch(c.strip())]


def significant_digits(text: str) -> int:
    return len(text.lstrip("-").split("e")[0].replace(".", "").lstrip("0"))


def assert_readable_numbers(grid) -> None:
    """At most 3 significant digits, never a long float; tiny values in scientific notation, not shown as 0."""
    expect(grid.get_by_test_id("cell-0-0")).not_to_be_empty(timeout=STEP_S * 1000)
    numbers = shown_numbers(grid)
    assert numbers, "no numbers shown"
    measured = [n for n in numbers if "." in n or "e" in n]  # whole numbers are ids, counts and strengths
    assert all(significant_digits(n) <= 3 for n in measured), numbers
    assert not [n for n in numbers if re.fullmatch(r"-?0\.0+", n)], numbers  # a tiny value shown as "0.00"


def test_a_photograph_through_attribution_steering_and_diff(url, page):
    page.goto(url, wait_until="domcontentloaded")  # never "networkidle": Gradio keeps a connection open
    photo = page.locator('button.gallery-item:has(img[src$="/chelsea.jpg"])')
    expect(photo).to_be_visible()  # the photographs are offered with a real model
    photo.click()
    page.get_by_label("Labels (comma-separated)").fill(LABELS)
    page.get_by_label("Prompt template ({} is replaced by each label)").fill("a photo of a {}.")

    # The trust warning comes before any result: beside the image as soon as it is chosen.
    warning = page.get_by_test_id("markdown").filter(has_text="Warning:")
    # (a random SAE reconstructs less than the mean would: said in words, not as a negative percentage)
    expect(warning.first).to_contain_text("reconstructs none of this image", timeout=STEP_S * 1000)
    assert "-" not in warning.first.inner_text().split("reconstructs")[1].split("(")[0]

    # Attribution: the reading in words, the warning above the tables, readable numbers.
    page.get_by_role("button", name="Attribute", exact=True).click()
    reading = page.get_by_test_id("markdown").filter(has_text="The model says")
    expect(reading).to_be_visible(timeout=STEP_S * 1000)
    expect(reading).to_contain_text("%")
    expect(warning).to_have_count(2)  # beside the image and above the tables
    box_warning, box_reading = warning.nth(1).bounding_box(), reading.bounding_box()
    assert box_warning["y"] < box_reading["y"]  # the warning is read first
    predictions = page.get_by_role("grid", name=re.compile(r"^Predictions"))
    assert_readable_numbers(predictions)
    probabilities = [float(v) for v in shown_numbers(predictions)[0::2]]  # (probability, logit) per row
    assert probabilities == sorted(probabilities, reverse=True), probabilities
    top_latents = page.get_by_role("grid", name=re.compile(r"^Top latents"))
    assert_readable_numbers(top_latents)
    assert_readable_numbers(page.get_by_role("grid", name=re.compile(r"^Faithfulness")))
    latent = top_latents.get_by_test_id("cell-0-0").inner_text().strip()
    assert latent.isdigit()

    # Steering: the top latent carried over; before/after in words and numbers; the sweep's reading.
    page.get_by_role("tab", name="Steering").click()
    expect(page.get_by_label("Latent ids (comma-separated)")).to_have_value(latent)
    page.get_by_role("button", name="Steer", exact=True).click()
    steer_reading = page.get_by_test_id("markdown").filter(has_text="Before the edit the model says")
    expect(steer_reading).to_be_visible(timeout=STEP_S * 1000)
    assert_readable_numbers(page.get_by_role("grid", name="Probabilities before and after"))
    page.get_by_role("button", name="Sweep", exact=True).click()
    sweep_reading = page.get_by_test_id("markdown").filter(has_text="Unedited (strength 1) the model says")
    expect(sweep_reading).to_be_visible(timeout=STEP_S * 1000)
    expect(sweep_reading).to_contain_text("random direction of the same size")
    assert_readable_numbers(page.get_by_role("grid", name="Sweep"))

    # Diff: the pair over two photographs (the image removed first: with one, the report patches it too, which
    # doubles the cost on this CPU), then patching on the photograph.
    page.locator("#input-image").get_by_role("button", name="Remove Image").click()
    page.get_by_role("tab", name="Diff").click()
    page.get_by_label("Probe set").fill(f"{PHOTOS_DIR}:2")
    page.get_by_role("button", name="Diff the checkpoints").click()
    summary = page.get_by_test_id("markdown").filter(has_text="predictions changed on")
    expect(summary).to_contain_text("2 images from", timeout=STEP_S * 1000)
    expect(summary).to_contain_text("The latent whose use changed most is")
    assert_readable_numbers(page.get_by_role("grid", name=re.compile(r"^Latents whose use changed most")))
    photo.click()
    page.get_by_role("button", name="Patch", exact=True).click()
    patched = page.get_by_test_id("markdown").filter(has_text="Writing the reference's residual stream")
    expect(patched).to_contain_text("noising is shown apart", timeout=STEP_S * 1000)
    expect(patched).to_contain_text("lies after the vision tower")
    assert re.search(r"\d+% after block 0", patched.inner_text())  # shares as percentages, not raw floats
    expect(page.locator('img[src*="patch_denoising11_"]').first).to_be_visible(timeout=STEP_S * 1000)
    assert not page.errors, f"errors in the page: {page.errors}"


def test_a_recipe_link_opens_the_page_with_its_state(url, page):
    query = urlencode({"model": VIT, "labels": "cat,dog,rocket", "template": "a photo of a {}.", "latents": "5,9",
                       "strengths": "0,2", "mode": "add", "tab": "steering"})  # fmt: skip
    page.goto(f"{url}?{query}", wait_until="domcontentloaded")
    expect(page.get_by_label("Labels (comma-separated)")).to_have_value("cat, dog, rocket")
    expect(page.get_by_label("Latent ids (comma-separated)")).to_have_value("5, 9")
    expect(page.get_by_label("Strengths (one, or one per latent)")).to_have_value("0, 2")
    expect(page.get_by_role("tab", name="Steering")).to_have_attribute("aria-selected", "true")
    page.get_by_role("button", name=re.compile("^Recipe: save, share")).click()
    expect(page.get_by_text("Recipe applied").first).to_be_visible()
    # A link with markup in a field is refused as data: the page says so, and shows no markup from it.
    page.goto(f"{url}?{urlencode({'model': VIT, 'mode': '<img src=x onerror=alert(1)>'})}", wait_until="load")
    page.get_by_role("button", name=re.compile("^Recipe: save, share")).click()
    expect(page.get_by_text("was not applied").first).to_be_visible(timeout=STEP_S * 1000)
    assert page.locator("img[src='x']").count() == 0
    assert not page.errors, f"errors in the page: {page.errors}"
