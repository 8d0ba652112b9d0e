"""The Latents tab: browse every latent of the current SAE, and read one latent's card (engine.cards).

The card of the selected latent (the one picked in the Attribution table, or typed) shows the dataset images that
activate it most, with its heatmap on each, how often it fires, its histogram and its label. Cards export as a
self-contained HTML page or as JSON. Everything here needs a feature index built for the current SAE
(engine.index): the toy SAE ships one; for another SAE, put one in ``feature_index/`` beside it.
"""

from __future__ import annotations

import threading

import gradio as gr
import pandas as pd

from engine import cards, index
from engine.errors import UserInputError
from ui import readings, share
from ui.common import (
    AppContext,
    ModelContext,
    clear_on_failure,
    drawn_in_parallel,
    parse_int_list,
    parse_latent,
    save_drawing,
    user_errors,
)

NAMED_POOL = 512  # a real SAE's latents named by the vocabulary for label search: the most frequent ones
MAX_EXPORT = 64


def feature_index(ctx: ModelContext) -> index.FeatureIndex:
    found = index.find_index(ctx.workbench)
    if found is None:
        raise UserInputError(
            f"no feature index for the SAE {ctx.workbench.sae_spec.display_name}: build one with "
            "`python -m engine.index build --model ... --sae ... --data FOLDER --out SAE_DIR/feature_index`"
        )
    return found


_pool_names: dict[tuple, dict[int, str]] = {}  # (workbench, index, template) -> names; a few entries per server
_pool_lock = threading.Lock()


def pool_names(ctx: ModelContext, found: index.FeatureIndex, template: str | None) -> dict[int, str]:
    """Vocabulary names of the index's most frequent latents, computed once per (workbench, index, template)."""
    key = (id(ctx.workbench), id(found), template)
    with _pool_lock:
        if key not in _pool_names:
            pool = sorted(range(found.d_sae), key=lambda i: -float(found.frequency_S[i]))[:NAMED_POOL]
            _pool_names[key] = {i: name for i, (name, _, _) in ctx.latent_names(pool, template).items()}
        return _pool_names[key]


def labels_for(
    ctx: ModelContext, found: index.FeatureIndex, template: str | None
) -> tuple[dict[int, str], list[int] | None]:
    """(labels, searchable): every latent's shipped label (toy), or vocabulary names of the most frequent latents."""
    info = ctx.workbench.latent_info
    if info is not None:
        return dict(enumerate(info.labels)), None
    names = pool_names(ctx, found, template)
    return names, sorted(names)


def browse_latents(ctx: ModelContext, query, sort, page, template=None):
    """Handler behind `latents`: one page of the latents table, and a line saying where it is."""
    found = feature_index(ctx)
    template = template or None
    labels, searchable = labels_for(ctx, found, template)
    try:
        page_number = int(float(page or 1))
    except (TypeError, ValueError):
        raise ValueError(f"page must be a whole number; got {page!r}") from None
    result = cards.browse(found, labels, str(query or ""), sort or cards.SORTS[0], page_number, searchable=searchable)
    frame = pd.DataFrame(
        result.rows, columns=["latent", "label", "frequency", "image_frequency", "mean_activation", "dead"]
    )
    scope = "" if searchable is None else f" (label search covers the {len(searchable)} most frequent latents)"
    status = (
        f"Page {result.page} of {result.pages} · {result.matches} latents{scope} · index: "
        f"{readings.escaped(found.manifest['dataset'])}, {found.state.n_images} images, "
        f"{len(found.dead_latents())} dead latents"
    )
    return readings.display_table(frame), status, result.page


def card_outputs(card: cards.LatentCard) -> tuple[list, str, pd.DataFrame]:
    # PNG (zlib level 1) or JPEG files, drawn on a few threads: a third of the time Gradio takes to encode WebP
    files = drawn_in_parallel(
        lambda e: save_drawing(cards.heat_thumbnail(e.image, e.map_HW, 160), f"card{card.latent}_", e.image),
        list(card.examples),
    )
    gallery = [(f, f"{readings.number(e.activation)} · {e.name}") for f, e in zip(files, card.examples, strict=True)]
    rows = "".join(f"| {k} | {readings.escaped(v)} |\n" for k, v in cards.stats_rows(card))
    summary = f"### {readings.escaped(card.caption)}\n\n| statistic | value |\n|---|---|\n{rows}"
    bars = cards.histogram_bars(card.stats)
    # numbered bins: the plot orders its categories as text, and "01 · 0.1–0.13" < "02 · ..." keeps them in order
    histogram = pd.DataFrame({"activation": [f"{i + 1:02d} · {b}" for i, (b, _) in enumerate(bars)]})
    histogram["count"] = [n for _, n in bars]
    return gallery, summary, histogram


def latent_card(ctx: ModelContext, latent, template=None, allowed=None):
    """Handler behind `latent_card`: thumbnails with the latent's heatmap, its statistics, its histogram. A folder
    dataset's images are read only from ``allowed`` directories."""
    workbench = ctx.workbench
    number = parse_latent(latent, workbench)
    card = cards.latent_card(
        workbench, feature_index(ctx), number, template or None, allowed=allowed, concepts=ctx.concepts()
    )
    return card_outputs(card)


def export_cards(ctx: ModelContext, latents_text, latent, kind, template=None, allowed=None) -> str:
    """Handler behind `export_cards`: the cards of the listed latents (or the selected one) as HTML or JSON."""
    workbench = ctx.workbench
    latents = parse_int_list(latents_text, "latent ids") or [parse_latent(latent, workbench)]
    if len(latents) > MAX_EXPORT:
        raise ValueError(f"export at most {MAX_EXPORT} latents at a time; got {len(latents)}")
    found = feature_index(ctx)
    built = [
        cards.latent_card(
            workbench, found, workbench.check_latent(i), template or None, allowed=allowed, concepts=ctx.concepts()
        )
        for i in latents
    ]
    if kind == "json":
        return share.write_file(cards.cards_json(built), "latent_cards_", ".json")
    title = f"Latent cards: {workbench.model_spec.display_name}, {workbench.sae_spec.display_name}"
    return share.write_file(cards.cards_html(built, title), "latent_cards_", ".html")


def build(app: AppContext, model: gr.Dropdown, template: gr.Textbox, selected_latent: gr.Textbox) -> None:
    gr.Markdown(
        "Every latent of the current SAE through the images that activate it most (its **feature index**). "
        "Click a row, or pick a latent in the Attribution table, to see its card."
    )
    with gr.Row():
        query = gr.Textbox(label="Search labels (or a latent id)", scale=3, max_lines=1)
        sort = gr.Dropdown(list(cards.SORTS), value=cards.SORTS[0], label="Order", scale=2)
        page = gr.Number(value=1, precision=0, minimum=1, label="Page", scale=1)
        show = gr.Button("Show", scale=1)
    first_table, first_status = None, ""
    try:  # the default model's first page at once, when its SAE has an index
        first_table, first_status, _ = browse_latents(app.model(app.default), "", cards.SORTS[0], 1)
    except UserInputError:
        first_status = "No feature index for this SAE: see the README (Train an SAE and build its index)."
    status = gr.Markdown(first_status)
    table = gr.Dataframe(first_table, label="Latents (click a row for its card)", interactive=False)
    with gr.Row():
        card_button = gr.Button("Show the card of the selected latent", variant="primary")
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Top-activating images (red: where it fires)", columns=8, height=300)
        with gr.Column(scale=2):
            summary = gr.Markdown()
            histogram = gr.BarPlot(x="activation", y="count", title="Activation histogram", sort=None)
    with gr.Row():
        export_latents = gr.Textbox(label="Latents to export (comma-separated; blank: the selected one)", scale=3)
        kind = gr.Radio([("HTML page", "html"), ("JSON", "json")], value="html", label="Format", scale=1)
        export = gr.Button("Export cards", scale=1)
        exported = gr.File(label="Cards to share", scale=2)

    def latents_page(query_text, order, page_value, template_text, model_name):
        return browse_latents(app.model(model_name), query_text, order, page_value, template_text)

    def card(latent, template_text, model_name):
        return latent_card(app.model(model_name), latent, template_text, app.allowed)

    def card_if_any(latent, template_text, model_name):
        """A card for a selection from elsewhere; nothing (and no error) when the SAE has no index."""
        ctx = app.model(model_name)
        if not str(latent or "").strip() or index.find_index(ctx.workbench) is None:
            return [], "", cards_empty()
        return latent_card(ctx, latent, template_text, app.allowed)

    def export_files(latents_text, latent, kind_value, template_text, model_name):
        return export_cards(app.model(model_name), latents_text, latent, kind_value, template_text, app.allowed)

    def pick(frame, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return str(int(frame.iloc[row]["latent"]))

    listing = show.click(
        user_errors(latents_page), [query, sort, page, template, model], [table, status, page], api_name="latents"
    )
    clear_on_failure(listing, [table, status])
    query.submit(user_errors(latents_page), [query, sort, page, template, model], [table, status, page], api_name=False)
    carded = card_button.click(
        user_errors(card), [selected_latent, template, model], [gallery, summary, histogram], api_name="latent_card"
    )
    clear_on_failure(carded, [gallery, summary, histogram])
    table.select(pick, table, selected_latent, api_name=False)
    selected_latent.change(
        user_errors(card_if_any), [selected_latent, template, model], [gallery, summary, histogram], api_name=False
    )
    exporting = export.click(
        user_errors(export_files),
        [export_latents, selected_latent, kind, template, model],
        exported,
        api_name="export_cards",
    )
    clear_on_failure(exporting, [exported])


def cards_empty() -> pd.DataFrame:
    return pd.DataFrame({"activation": [], "count": []})
