"""Concept Steering Workbench: attribute, steer and explain the SAE concepts behind a vision model's prediction.

python app.py                                  # the embedded toy world on http://127.0.0.1:7860
python app.py --host 0.0.0.0 --port 8080
python app.py --preset prisma-vit-b32          # a published SAE for a real CLIP (needs the hub or a cache)
python app.py --model open_clip:ViT-B-32@/models/vit_b_32.bin --sae /saes/my_sae@blocks.10.resid_post \\
              --allow-dir /saes
python app.py --model hf:openai/clip-vit-base-patch32 --sae hf:OWNER/REPO/PATH
python app.py --model open_clip:ViT-B-32@/ckpt/base.bin --sae /saes/b32@blocks.10.resid_post \\
              --intervened open_clip:ViT-B-32@/ckpt/finetuned.safetensors --allow-dir /ckpt --allow-dir /saes

Models: toy | open_clip:NAME@TAG | open_clip:NAME@/path/weights | open_clip:hf-hub:ORG/REPO |
open_clip:local-dir:/path | hf:HUB_ID_OR_DIR. SAEs: a local file or directory in any supported format
(SAELens, saev, ViT-Prisma, PatchSAE, sparsify, dictionary_learning, overcomplete) or hf:OWNER/REPO[/PATH],
optionally @blocks.N.resid_post. Each --model pairs with the --sae that follows it; the first is the default
and is loaded at start-up (so a missing one fails at once); the toy world is always offered too. Each
--intervened names a fine-tuned checkpoint of the --model at its position (same syntax), compared with it in
the Diff tab through that model's SAE; the toy pair (the toy CLIP and its planted-shortcut fine-tune) is
always offered there. The Explain tab offers the toy LLaVA with the toy SAE, then each --explain-preset
(llava-sae, gemma3-sae) and each --vlm with the --vlm-sae after it (a transformers image-text-to-text model by
hub id or save_pretrained directory, and an SAE at a site of its vision tower):

python app.py --explain-preset llava-sae --device cuda --dtype float16
python app.py --vlm /models/llava-1.5-7b-hf --vlm-sae /saes/ae_100000.pt@blocks.22.resid_post --allow-dir /saes
"""

from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Gradio's queue rebuilds a pandas summary of up to 10,000 past events (its monitoring page's) after every request,
# on a worker thread that holds the GIL: 2.3 ms with 50 events and 12 ms with 10,000 on this project's 2 cores, a
# cost that grows with a Space's uptime. Every 100 events the page is still current enough.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")

from engine.errors import WorkbenchError  # noqa: E402
from engine.registry import (  # noqa: E402
    EXPLAIN_PRESETS,
    PRESETS,
    TOY,
    TOY_DIFF,
    TOY_EXPLAIN,
    DiffPreset,
    ExplainPreset,
    Preset,
    explain_preset,
    label_set,
    parse_model,
    parse_sae,
    preset,
)
from engine.resident import DTYPES, load_workbench  # noqa: E402
from engine.sources import HUB_PREFIX, AllowedDirs, local_model_paths  # noqa: E402
from engine.specs import TOY_SHORTCUT_DIR, TOY_VLM_DIR, VLMSpec  # noqa: E402

QUEUE_POLL_S = 0.005
"""How often Gradio's queue looks for work when it has none (its own default: every millisecond). Each look wakes
the event loop and takes a core slice from torch's threads, which then wait for each other: on a 2-core machine
that made a served ViT-B/32 attribution 20 to 30% slower than the same engine calls in one process (measured with
`python -m engine.bench --only endpoints`). Every 5 ms costs a request at most 4 ms more to be picked up."""
QUEUE_MAX_SIZE = 64
"""Requests that may wait in the queue; beyond it the app answers at once that it is busy (:func:`busy_answer`)
instead of letting waits grow without bound."""
BUSY_RETRY_AFTER_S = 60


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="address to serve on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--model", action="append", default=[], help="a model to offer (syntax above); repeatable")
    parser.add_argument("--sae", action="append", default=[], help="the SAE for the --model before it")
    parser.add_argument(
        "--intervened", action="append", default=[],
        help="a fine-tuned checkpoint of the --model at the same position (same syntax; e.g. "
        "open_clip:ViT-B-32@/ckpt/finetuned.safetensors), compared with it in the Diff tab; repeatable",
    )  # fmt: skip
    parser.add_argument("--preset", action="append", default=[], help=f"a named pair; one of: {', '.join(PRESETS)}")
    parser.add_argument("--default", help="which offered model the app opens with (default: the first named)")
    parser.add_argument("--list-presets", action="store_true", help="print the presets with their sources and exit")
    parser.add_argument("--labels", default="imagenet1k", help="default label set for --model (assets/labels)")
    parser.add_argument(
        "--allow-dir", action="append", default=[], help="a directory model and SAE files may be read from"
    )
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cuda when present)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="model and SAE precision")
    parser.add_argument("--cache-mb", type=int, default=512, help="byte budget of the per-image activation cache")
    parser.add_argument("--max-threads", type=int, default=8, help="concurrent requests Gradio accepts")
    parser.add_argument(
        "--explain-preset",
        action="append",
        default=[],
        help=f"a VLM + SAE pair for Explain; one of: {', '.join(EXPLAIN_PRESETS)}",
    )
    parser.add_argument("--vlm", action="append", default=[], help="a VLM for the Explain tab (hub id or directory)")
    parser.add_argument(
        "--vlm-sae", action="append", default=[], help="the SAE (at a vision-tower site) for the --vlm before it"
    )
    parser.add_argument(
        "--explain-cache", help="where explanations are cached (default: $WORKBENCH_EXPLAIN_CACHE or ~/.cache/...)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="requests computed at once per endpoint (the rest wait in the queue)"
    )
    parser.add_argument(
        "--queue-size", type=int, default=QUEUE_MAX_SIZE, help="requests that may wait; more are told it is busy"
    )
    args = parser.parse_args(argv)
    if len(args.model) != len(args.sae):
        parser.error(f"each --model needs one --sae: got {len(args.model)} models and {len(args.sae)} SAEs")
    if len(args.vlm) != len(args.vlm_sae):
        parser.error(f"each --vlm needs one --vlm-sae: got {len(args.vlm)} VLMs and {len(args.vlm_sae)} SAEs")
    if len(args.intervened) > len(args.model):
        parser.error(f"each --intervened pairs with a --model: got {len(args.intervened)} for {len(args.model)} models")
    return args


def choices_from_args(args: argparse.Namespace) -> dict[str, Preset]:
    """The models to offer, in order: those named on the command line, the presets asked for, the toy."""
    choices: dict[str, Preset] = {}
    for model_text, sae_text in zip(args.model, args.sae):
        label_set(args.labels)  # an unknown label set fails here, with the valid names
        name = f"{model_text} + {sae_text}"
        choices[name] = Preset(
            name, parse_model(model_text), parse_sae(sae_text), "named on the command line", (), args.labels
        )
    for name in args.preset:
        choices[name] = preset(name)
    choices[TOY.name] = TOY
    if args.default:
        if args.default not in choices:
            raise SystemExit(f"--default {args.default!r} is not offered; valid: {', '.join(choices)}")
        choices = {args.default: choices[args.default], **choices}
    return choices


def pairs_from_args(args: argparse.Namespace) -> dict[str, DiffPreset]:
    """Checkpoint pairs for the Diff tab: each --intervened with the --model (and its --sae) at its position, then
    the toy pair."""
    pairs: dict[str, DiffPreset] = {}
    for model_text, sae_text, intervened_text in zip(args.model, args.sae, args.intervened):
        name = f"{model_text} vs {intervened_text}"
        pairs[name] = DiffPreset(
            name,
            parse_model(model_text),
            parse_model(intervened_text),
            parse_sae(sae_text),
            "named on the command line",
        )
    if TOY_SHORTCUT_DIR.is_dir():
        pairs[TOY_DIFF.name] = TOY_DIFF
    return pairs


def explain_pairs_from_args(args: argparse.Namespace) -> dict[str, ExplainPreset]:
    """VLM + SAE pairs for the Explain tab: the toy (when built), the presets asked for, each --vlm with its SAE."""
    pairs: dict[str, ExplainPreset] = {TOY_EXPLAIN.name: TOY_EXPLAIN} if TOY_VLM_DIR.is_dir() else {}
    for name in args.explain_preset:
        pairs[name] = explain_preset(name)
    for vlm_text, sae_text in zip(args.vlm, args.vlm_sae):
        name = f"{vlm_text} + {sae_text}"
        pairs[name] = ExplainPreset(name, VLMSpec(vlm_text), parse_sae(sae_text), "named on the command line")
    return pairs


def create_app(
    device: str | None = None,
    choices: dict[str, Preset] | None = None,
    cache_mb: int = 512,
    dtype: str = "float32",
    allowed: AllowedDirs | None = None,
    concepts: tuple[str, ...] | None = None,
    pairs: dict[str, DiffPreset] | None = None,
    explain_pairs: dict[str, ExplainPreset] | None = None,
    explain_cache: str | None = None,
    preload: bool = False,
):
    """The Gradio Blocks (used by the CLI, the Space and the tests); the default model is loaded now, and with
    ``preload`` every offered model, pair and explainer too (a Space on a lent GPU must hold its models before any
    call; one that cannot be loaded is logged, and says why when chosen).

    ``concepts`` replaces the shipped vocabulary (assets/labels/concepts.txt) that names latents of real models.
    ``pairs`` are the checkpoint pairs the Diff tab offers (default: the toy pair, when its assets are present);
    ``explain_pairs`` the VLM + SAE pairs of the Explain tab (default: the toy LLaVA, when built), whose explanations
    are cached in ``explain_cache`` (default: engine.explain.default_cache_dir()).
    """
    from pathlib import Path

    from engine.diff import DiffPair
    from engine.explain import Explainer, ExplanationCache, default_cache_dir
    from engine.resident import KeyedCache, resident_sae
    from engine.vlm import resident_vlm
    from ui.common import AppContext
    from ui.explain_tab import ExplainContext
    from ui.layout import build_app, example_files, heldout_for

    choices = choices or {TOY.name: TOY}
    allowed = allowed or AllowedDirs.default()
    if pairs is None:
        pairs = {TOY_DIFF.name: TOY_DIFF} if TOY_SHORTCUT_DIR.is_dir() else {}

    def load(chosen: Preset):
        return load_workbench(chosen.model, chosen.sae, device, cache_mb, dtype, allowed)

    def load_pair(chosen: DiffPreset) -> DiffPair:
        return DiffPair(
            load_workbench(chosen.reference, chosen.sae, device, cache_mb, dtype, allowed),
            load_workbench(chosen.intervened, chosen.sae, device, cache_mb, dtype, allowed),
        )

    ctx = AppContext(
        choices=choices, load=load, heldout=heldout_for, examples=example_files(), pairs=pairs, load_pair=load_pair,
        allowed=allowed,
    )  # fmt: skip
    if explain_pairs is None:
        explain_pairs = {TOY_EXPLAIN.name: TOY_EXPLAIN} if TOY_VLM_DIR.is_dir() else {}
    cache_dir = Path(explain_cache) if explain_cache else default_cache_dir()
    explainers: KeyedCache[ExplainPreset, Explainer] = KeyedCache()

    def load_explainer(chosen: ExplainPreset) -> Explainer:
        def make() -> Explainer:
            sae = resident_sae(chosen.sae, device, dtype, allowed)  # first: a missing SAE fails before a slow load
            return Explainer(resident_vlm(chosen.vlm, device, dtype, allowed), sae, cache_dir)

        return explainers.get(chosen, make)

    ctx.explain = ExplainContext(explain_pairs, load_explainer, ExplanationCache(cache_dir))
    if concepts is not None:
        ctx.concepts = lambda: concepts
    ctx.model(ctx.default)
    if preload:
        loads = [(name, ctx.model, name) for name in choices] + [(name, ctx.pair, name) for name in pairs]
        loads += [(name, load_explainer, chosen) for name, chosen in explain_pairs.items()]
        for name, load_one, key in loads:
            try:
                load_one(key)
            except (WorkbenchError, ValueError, FileNotFoundError) as error:
                logging.getLogger(__name__).warning("not preloaded: %s: %s", name, error)
    return build_app(ctx)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.list_presets:
        for found in PRESETS.values():
            print(f"{found.name}: {found.description}\n  model {found.model.display_name}\n  sae {found.sae.path}")
            print("".join(f"  source {url}\n" for url in found.sources), end="")
        return
    choices = choices_from_args(args)
    # Paths the operator named on the command line are allowed; files chosen later must lie in --allow-dir.
    pairs = pairs_from_args(args)
    named = [path for chosen in choices.values() for path in local_model_paths(chosen.model)]
    named += [path for pair in pairs.values() for path in local_model_paths(pair.intervened)]
    named += [chosen.sae.path for chosen in choices.values() if not chosen.sae.path.startswith(HUB_PREFIX)]
    allowed = AllowedDirs.default(args.allow_dir).with_paths(named)
    try:
        explain_pairs = explain_pairs_from_args(args)
        named += [p.vlm.name for p in explain_pairs.values() if p.vlm.is_local]
        named += [p.sae.path for p in explain_pairs.values() if not p.sae.path.startswith(HUB_PREFIX)]
        allowed = AllowedDirs.default(args.allow_dir).with_paths(named)
        app = create_app(
            args.device, choices, args.cache_mb, args.dtype, allowed, pairs=pairs, explain_pairs=explain_pairs,
            explain_cache=args.explain_cache,
        )  # fmt: skip
    except (WorkbenchError, ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None  # the message says what to do; no traceback
    serve(
        app,
        args.host or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        args.port or int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_threads=args.max_threads,
        concurrency=args.concurrency,
        queue_size=args.queue_size,
    )


def busy_message(queue_size: int) -> str:
    waiting = f"{queue_size} request{'' if queue_size == 1 else 's'}"
    return f"The server is busy ({waiting} waiting, the limit). Please try again in a minute."


def busy_answer(queue_size: int):
    """A FastAPI exception handler that answers a request refused by the full queue with HTTP 429 Too Many Requests,
    ``Retry-After`` and :func:`busy_message`, instead of Gradio's 503 "Queue is full. Max size is N and size is N.";
    every other HTTP error keeps FastAPI's own answer.

    Why a handler: Gradio refuses at ``/queue/join`` by raising ``HTTPException(503, "Queue is full...")`` and has
    no setting for that text; FastAPI's ``exception_handlers``, passed through Gradio's public
    ``launch(app_kwargs=...)``, is the supported place to shape an HTTP error (the one coupling to Gradio is the
    "Queue is full" prefix it is recognised by, which a test pins). Why 429 rather than Gradio's 503: Gradio's
    frontend shows its own fixed text for a 503 whatever the body says, and the body's ``detail`` for any other
    error status; 429 (RFC 6585) is the status that means "too many requests, retry after". gradio_client turns a
    503 into its QueueError with its own fixed text, and a 429 into ``httpx.HTTPStatusError`` ("429 Too Many
    Requests") whose ``response.json()["detail"]`` is this message.
    """
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.responses import JSONResponse

    async def answer(request, error):
        if error.status_code == 503 and str(error.detail).startswith("Queue is full"):
            return JSONResponse(
                {"detail": busy_message(queue_size)},
                status_code=429,
                headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
            )
        return await http_exception_handler(request, error)

    return answer


def serve(app, host: str, port: int, concurrency: int = 1, queue_size: int = 0, **launch) -> None:
    """Queue and launch with the limits a public server needs: uploads above engine.images.MAX_UPLOAD_BYTES are
    refused by Gradio before it stores them, and at most ``queue_size`` requests wait (default
    :data:`QUEUE_MAX_SIZE`; more are answered at once that the server is busy, :func:`busy_answer`). The CLI, the
    Space and the served tests all launch through here."""
    import gradio as gr
    from starlette.exceptions import HTTPException

    from engine.images import MAX_UPLOAD_BYTES
    from ui.layout import APP_CSS

    queue_size = queue_size or QUEUE_MAX_SIZE
    app_kwargs = launch.pop("app_kwargs", None) or {}
    handlers = {HTTPException: busy_answer(queue_size), **app_kwargs.get("exception_handlers", {})}
    options = dict(
        theme=gr.themes.Soft(), css=APP_CSS, show_error=True, max_file_size=MAX_UPLOAD_BYTES,
        app_kwargs={**app_kwargs, "exception_handlers": handlers},
    )  # fmt: skip
    queued = app.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    queued._queue.sleep_when_free = QUEUE_POLL_S  # Gradio has no public setting for it
    queued.launch(server_name=host, server_port=port, **{**options, **launch})


if __name__ == "__main__":
    main()
