"""Concept Steering Workbench: attribute, steer and explain the SAE concepts behind a vision model's prediction.

python app.py                      # the embedded toy world on http://127.0.0.1:7860
python app.py --host 0.0.0.0 --port 8080
"""

from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from engine.resident import load_workbench  # noqa: E402
from engine.specs import ModelSpec, SAESpec  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="address to serve on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cuda when present)")
    parser.add_argument("--cache-mb", type=int, default=512, help="byte budget of the per-image activation cache")
    parser.add_argument("--max-threads", type=int, default=8, help="concurrent requests Gradio accepts")
    return parser.parse_args(argv)


def create_app(device: str | None = None):
    """The Gradio Blocks on the embedded toy world (used by the CLI, the Space and the tests)."""
    from ui.layout import build_app, context_for

    bench = load_workbench(ModelSpec.toy(), SAESpec.toy(), device)
    return build_app(context_for(bench))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import gradio as gr

    app = create_app(args.device)
    app.queue(default_concurrency_limit=1).launch(
        server_name=args.host or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=args.port or int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_threads=args.max_threads,
        theme=gr.themes.Soft(),
        show_error=True,
    )


if __name__ == "__main__":
    main()
