"""The plain-language readings, number formats, glossary and error boundary of ui/, without a server."""

import logging

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ui import glossary, readings
from ui.common import blend, colour_strip, overlay, overlay_base, user_errors, with_colour_scale


@pytest.mark.parametrize(
    ("value", "shown"),
    [(-7.348247528076172, "-7.35"), (0.9047619047619048, "0.905"), (0.00003, "3e-05"), (0.0, "0"), (6.1, "6.1")],
)
def test_numbers_are_shown_with_three_significant_digits(value, shown):
    assert readings.number(value) == shown


def test_tiny_probabilities_are_never_shown_as_zero():
    assert readings.percent(0.00003) == "0.003%" and readings.percent(3e-9) == "3e-07%"


def test_tables_round_their_numbers_and_show_them_alike():
    import pandas as pd

    styled = readings.display_table(pd.DataFrame({"label": ["a"], "p": [0.000031234], "d": [-7.348247528076172]}))
    assert styled.frame.iloc[0].tolist() == ["a", 3.12e-05, -7.35]
    assert styled["data"] == [["a", 3.12e-05, -7.35]] and styled["headers"] == ["label", "p", "d"]
    assert styled["metadata"]["display_value"] == [["a", "3.12e-05", "-7.35"]]


def test_predictions_are_listed_by_probability_with_ties_in_the_labels_order():
    import pandas as pd

    from ui.attribution_tab import predictions_frame

    labels = ["a", "b", "c", "d", "e"]
    logits_L = torch.tensor([0.5, 2.0, 0.5, 2.0, 1.0])
    reference = (
        pd.DataFrame({"label": labels, "probability": logits_L.softmax(-1).tolist(), "logit": logits_L.tolist()})
        .sort_values("probability", ascending=False, kind="stable")
        .reset_index(drop=True)
    )
    frame = predictions_frame(labels, logits_L)
    assert list(frame["label"]) == ["b", "d", "e", "a", "c"]
    pd.testing.assert_frame_equal(frame, reference)


def test_the_sweep_reading_names_both_sides_of_the_flip_from_the_numbers():
    strengths = [-1.0, -0.6, -0.2, 0.0667, 0.333, 0.6, 1.0, 1.4]
    predicted = ["square", "square", "square", "circle", "circle", "circle", "circle", "circle"]
    text = readings.sweep_reading(strengths, predicted, "circle", 1.0)
    assert "stays circle down to 0.0667 and becomes **square** at -0.2" in text
    assert "up to 1.4 (the end of the sweep)" in text


def test_the_sweep_reading_in_add_mode_starts_from_zero_and_reads_upward():
    text = readings.sweep_reading([0.0, 1.0, 2.0, 3.0], ["red", "red", "red", "blue"], "red", 0.0)
    assert text.startswith("Unedited (strength 0)") and "stays red up to 2 and becomes **blue** at 3" in text


def test_the_sweep_reading_when_the_first_step_already_flips():
    text = readings.sweep_reading([0.0, 1.0], ["square", "circle"], "circle", 1.0)
    assert "already **square** at the first strength sampled, 0" in text


def test_the_attribution_reading_tells_the_answer_the_support_and_what_removal_does():
    text = readings.attribution_reading(
        ["circle", "square", "cross"], [0.997, 0.002, 0.001], 0, "logit_difference", 6.1, 51, "shape=circle", 6.2, 1,
        [0.4, 0.59, 0.01], 0.2, 5,
    )  # fmt: skip
    assert text.startswith("The model says **circle** (99.7%).")
    assert "latent 51 (shape=circle)" in text and "from 6.1 to -0.1" in text and "becomes **square** (59%)" in text
    assert "poorly" in text and "actual drop" in text


def test_the_attribution_reading_for_another_target_and_without_support():
    text = readings.attribution_reading(
        ["circle", "square"], [0.9, 0.1], 1, "probability", 0.1, None, None, None, None, None, float("nan"), 3
    )
    assert "You asked about **square** (10%)" in text and "None of the top 3 concepts supports square" in text


def test_the_steer_reading_says_what_changed():
    text = readings.steer_reading(["circle", "square"], [0.9, 0.1], [0.2, 0.8], "removing latent 5 (shape=circle)")
    assert "After removing latent 5 (shape=circle) it says **square** (80%); circle falls from 90% to 20%." in text
    text = readings.steer_reading(["circle", "square"], [0.9, 0.1], [0.95, 0.05], "scaling latent 5 by 2")
    assert "stays **circle**; its probability rises to 95%" in text


def test_blank_heatmaps_get_a_caption_in_plain_words():
    assert "only on the class token" in readings.heatmap_caption(3, "red", 0.0, 2.0)
    assert "does not fire anywhere" in readings.heatmap_caption(3, "red", 0.0, 0.0)
    assert "strongest on a patch 1.5" in readings.heatmap_caption(3, "red", 1.5, None)


@pytest.mark.parametrize(
    "term",
    ["logit difference", "Spearman", "explained variance", "AUROC", "label_score", "class token", "KL",
     "norm-matched", "latent", "SAE", "patch"],
)  # fmt: skip
def test_every_technical_term_has_a_plain_explanation(term):
    assert len(glossary.explain(term)) > 20 and f"**{term}**" in glossary.markdown()


def test_a_heatmap_is_sharp_has_a_colour_scale_and_the_patch_grid():
    image = Image.new("RGB", (48, 48), (0, 200, 0))
    image.putpixel((0, 0), (0, 0, 255))
    map_HW = torch.zeros(3, 3)
    map_HW[1, 1] = 2.0
    out = overlay(image, map_HW, size=240)
    assert out.width == 240 and out.height > 240  # the colour scale lies beneath the image
    assert out.getpixel((2, 2)) == (0, 0, 255)  # NEAREST: the corner pixel stays pure blue, not blurred
    assert out.getpixel((80, 40)) == (255, 255, 255)  # a grid line between patches
    assert out.getpixel((120, 120))[0] > out.getpixel((120, 120))[1]  # the firing patch is red
    scale_row = [out.getpixel((x, 248)) for x in (5, 235)]
    assert scale_row[0][1] > scale_row[1][1]  # the scale goes from pale (0) to red (the maximum)


def test_a_small_image_is_upscaled_by_a_whole_factor_so_its_pixels_are_all_one_size():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    out = overlay(image, torch.zeros(6, 6))  # a blank map: the picture itself, with the grid
    assert out.width == 240  # 5 x 48, the largest whole factor within 256
    picture = np.asarray(out)[:240]
    lines = np.zeros((240, 240), bool)
    lines[:, 40::40] = lines[40::40, :] = True
    expected = np.kron(np.asarray(image), np.ones((5, 5, 1), np.uint8))
    assert np.array_equal(picture[~lines], expected[~lines])
    map_HW = torch.rand(6, 6)  # a request's heatmaps share one base picture, made once: the same drawing
    assert np.array_equal(
        np.asarray(overlay(image, map_HW)), np.asarray(overlay(image, map_HW, base=overlay_base(image)))
    )


@pytest.mark.parametrize("signed", [False, True])
def test_the_composited_heatmap_equals_the_per_pixel_float_blend(signed):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    map_HW = torch.tensor(rng.normal(size=(6, 6)), dtype=torch.float32)
    if not signed:
        map_HW = map_HW.clamp_min(0)
    out = np.asarray(overlay(image, map_HW, size=240, signed=signed), dtype=np.float32)[:240]
    base = np.asarray(image.resize((240, 240), Image.NEAREST), dtype=np.float32) / 255
    norm = np.kron((map_HW / map_HW.abs().max()).numpy(), np.ones((40, 40)))
    reference = blend(base, norm, signed) * 255
    lines = np.zeros((240, 240), bool)
    lines[:, 40::40] = lines[40::40, :] = True  # the white patch grid drawn over both
    assert np.abs(out - reference)[~lines].max() <= 2


def legend_drawn_directly(picture, peak, signed, height=34):
    """The reference: every part of the legend drawn on the picture's own canvas, nothing cached."""
    width = picture.width
    out = Image.new("RGB", (width, picture.height + height), (255, 255, 255))
    out.paste(picture, (0, 0))
    out.paste(colour_strip(width, signed), (0, picture.height + 2))
    draw = ImageDraw.Draw(out)
    draw.rectangle([0, picture.height + 2, width - 1, picture.height + 13], outline=(120, 120, 120))
    y = picture.height + 16
    draw.text((2, y), f"-{readings.number(peak)}" if signed and peak else "0", fill=(0, 0, 0))
    draw.text((width - 2, y), readings.number(peak) if peak else "0 (fires on no patch)", fill=(0, 0, 0), anchor="ra")
    if peak:
        draw.text((width // 2, y), "activation per patch", fill=(90, 90, 90), anchor="ma")
    return out


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("peak", [0.0, 3.217, 1234.5])
def test_the_legend_from_its_cached_template_equals_one_drawn_directly(signed, peak):
    picture = Image.new("RGB", (256, 256), (10, 120, 30))
    fast = np.asarray(with_colour_scale(picture, peak, signed))
    assert np.array_equal(fast, np.asarray(legend_drawn_directly(picture, peak, signed)))


def test_a_user_error_logs_one_line_and_no_traceback(caplog):
    def handler():
        raise ValueError("label 'x' is unknown")

    with caplog.at_level(logging.DEBUG), pytest.raises(gr.Error) as raised:
        user_errors(handler)()
    assert raised.value.message == "label &#x27;x&#x27; is unknown" and not raised.value.print_exception
    records = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is None and "\n" not in records[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)


def test_a_bug_logs_its_traceback_once_and_tells_the_user_nothing_internal(caplog):
    def handler():
        raise IndexError("tensor index 99 /secret/path")

    with caplog.at_level(logging.DEBUG), pytest.raises(gr.Error) as raised:
        user_errors(handler)()
    assert "/secret/path" not in raised.value.message and not raised.value.print_exception
    assert sum(1 for r in caplog.records if r.exc_info) == 1


def test_pixel_art_is_drawn_sharp_as_png_and_a_224_px_photograph_smoothly_as_jpeg():
    from ui.common import save_drawing

    scene, photo = Image.new("RGB", (48, 48), (9, 9, 9)), Image.new("RGB", (224, 224), (9, 9, 9))
    assert overlay_base(scene).size == (240, 240) and overlay_base(photo).size == (256, 256)
    assert save_drawing(overlay(scene, torch.rand(6, 6)), "t_", scene).endswith(".png")
    assert save_drawing(overlay(photo, torch.rand(7, 7)), "t_", photo).endswith(".jpg")
