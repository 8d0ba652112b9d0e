"""Screenshot the app for the README: pick a toy-world example, run a tab, save the whole page.

python scripts/screenshot.py assets/screenshot.png                     # Attribution on the first example
python scripts/screenshot.py shot.png --example red_circle     # an example by (part of) its file name, or its index
python scripts/screenshot.py assets/screenshot_diff.png --tab diff --example marker   # the Diff tab
python scripts/screenshot.py assets/screenshot_explain.png --tab explain --example red   # the Explain tab

Serves the app in-process on 127.0.0.1 and drives Debian's Chromium (/usr/bin/chromium) through Playwright
(pip install playwright; apt-get install --no-install-recommends chromium). Never needs `playwright install`.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="where to write the PNG")
    parser.add_argument("--example", default="0", help="example index (sorted by name) or part of its file name")
    parser.add_argument(
        "--tab", default="attribution", choices=["attribution", "diff", "explain"], help="which tab to run"
    )
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser executable")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for each step")
    return parser.parse_args(argv)


def pick_example(examples: list[Path], which: str) -> str:
    if which.isdigit():
        return examples[int(which)].name
    matches = [p.name for p in examples if which in p.name]
    if not matches:
        raise SystemExit(f"no example matches {which!r}; have: {', '.join(p.name for p in examples)}")
    return matches[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_when_drawn(page, out: Path, timeout_ms: float) -> None:
    """Wait until every image has loaded and the plots have animated in, then save the whole page."""
    page.wait_for_function(
        "() => Array.from(document.images).every(img => img.complete && img.naturalWidth > 0)", timeout=timeout_ms
    )
    page.wait_for_timeout(1000)
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True)


def shoot(url: str, example: str, args: argparse.Namespace) -> None:
    from playwright.sync_api import expect, sync_playwright

    timeout_ms = args.timeout * 1000
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.set_default_timeout(timeout_ms)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url, wait_until="domcontentloaded")  # never "networkidle": Gradio keeps a connection open

            thumbnail = page.locator(f'button.gallery-item:has(img[src$="/{example}"])')
            try:
                expect(thumbnail).to_be_visible(timeout=timeout_ms)
            except AssertionError:
                raise SystemExit(f"the example {example} never showed in the page; errors there: {errors}") from None
            thumbnail.click()
            expect(page.locator(f'[data-testid="image"] .image-frame img[src$="/{example}"]')).to_be_visible()

            def run(button: str, reading, exact: bool = False) -> None:
                """Click ``button`` and wait for the Markdown reading that says it finished."""
                page.get_by_role("button", name=button, exact=exact).click()
                expect(page.get_by_test_id("markdown").filter(has_text=reading)).to_be_visible(timeout=timeout_ms)

            if args.tab == "diff":
                page.get_by_role("tab", name="Diff").click()
                run("Diff the checkpoints", "predictions changed")
                run("Patch", "Denoising restores", exact=True)
                save_when_drawn(page, args.out, timeout_ms)
                return
            run("Attribute", "Prediction:", exact=True)
            if args.tab == "explain":
                page.get_by_role("tab", name="Explain").click()
                run("Explain the selected latent", "Explanation: adding")
                run("Sweep", re.compile("first changes at|at every coefficient"), exact=True)
                run("Explain the top latents", "Explained the")
                save_when_drawn(page, args.out, timeout_ms)
                return
            top_latents = page.get_by_role("grid", name="Top latents", exact=False)
            expect(top_latents.get_by_test_id("cell-0-0")).not_to_be_empty(timeout=timeout_ms)
            # The top latent's heatmap follows from the selection (best effort: it does not come when the top
            # latent is 0, the number box's initial value); then let every image and the plot finish drawing.
            heatmap = page.locator('.image-frame img[src*="/latent"]')
            try:
                expect(heatmap).to_be_visible(timeout=min(timeout_ms, 15_000))
            except AssertionError:
                print("warning: the selected latent's heatmap did not appear", file=sys.stderr)
            save_when_drawn(page, args.out, timeout_ms)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not Path(args.chromium).is_file():
        raise SystemExit(f"{args.chromium} is missing (apt-get install --no-install-recommends chromium)")
    from app import create_app
    from engine.specs import ASSETS

    example = pick_example(sorted((ASSETS / "examples").glob("*.png")), args.example)
    app = create_app("cpu")
    port = free_port()
    from ui.layout import APP_CSS

    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=APP_CSS)
    try:
        shoot(f"http://127.0.0.1:{port}/", example, args)
    finally:
        app.close()
    print(f"wrote {args.out} ({example})")


if __name__ == "__main__":
    main()
