"""The tour of the app: serve it, walk every tab in one browser page as a user would (run its main action and check
what it shows), and save one screenshot per tab. The README's screenshots are written by this walk, and
tests/test_browser_tour.py runs the same walk as a test.

python scripts/screenshot.py                                  # every tab: assets/screenshot.png (Attribution),
                                                              # assets/screenshot_<tab>.png for the others
python scripts/screenshot.py --tab diff --tab explain         # only those tabs' screenshots (Attribution still runs)
python scripts/screenshot.py --example red_circle --out-dir /tmp/shots   # an example by (part of) its name or index

Serves the toy world in-process on 127.0.0.1 (the toy pair in Diff, the toy LLaVA in Explain, the toy index in
Latents, as `python app.py` offers them) and drives Debian's Chromium (/usr/bin/chromium) through Playwright (pip
install playwright; apt-get install --no-install-recommends chromium). Never needs `playwright install`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
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
DEFAULT_EXAMPLE = "marker"
"""The tour's image: a toy scene with the corner marker, the planted shortcut the Diff tab finds and localises."""

DIFF_PROBE = "64"
"""Freshly rendered probe scenes for the Diff tab (its default); a test may ask for fewer."""


def screenshot_name(tab: str) -> str:
    """The README's file for a tab: screenshot.png for Attribution (the first one the README shows), else
    screenshot_<tab>.png."""
    return "screenshot.png" if tab == "attribution" else f"screenshot_{tab}.png"


CHROMIUM = Path("/usr/bin/chromium")


@contextlib.contextmanager
def browser_page(url: str | None, timeout_s: float, errors: list[str], chromium: Path = CHROMIUM) -> Iterator:
    """A 1400x1000 page in headless Chromium (Playwright driving Debian's binary, never its own downloads), at
    ``url`` when given; uncaught page errors are appended to ``errors``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(timeout_s * 1000)
            page.on("pageerror", lambda error: errors.append(str(error)))
            if url is not None:
                page.goto(url, wait_until="domcontentloaded")  # never "networkidle": Gradio keeps a connection open
            yield page
        finally:
            browser.close()


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


class Tour:
    """One page of the served app, walked tab by tab. Each step runs a tab's main action and asserts what the user
    then sees (Playwright's ``expect`` raises an AssertionError naming the missing text or element), so a broken tab
    fails the walk rather than leaving a blank screenshot."""

    def __init__(self, page, timeout_s: float, diff_probe: str = DIFF_PROBE):
        self.page = page
        self.timeout_ms = timeout_s * 1000
        self.diff_probe = diff_probe
        self.latent = ""  # the top latent of the attribution, which the later tabs use

    def expect(self, locator):
        from playwright.sync_api import expect

        return expect(locator)

    def reading(self, text):
        return self.page.get_by_test_id("markdown").filter(has_text=text)

    def run(self, button: str, reading, exact: bool = False):
        """Click ``button``, wait for the Markdown ``reading`` that says it finished, and return it."""
        self.page.get_by_role("button", name=button, exact=exact).click()
        found = self.reading(reading)
        self.expect(found.first).to_be_visible(timeout=self.timeout_ms)
        return found.first

    def grid(self, name):
        return self.page.get_by_role("grid", name=name)

    def expect_rows(self, name, at_least: int = 1) -> None:
        grid = self.grid(name)
        self.expect(grid.get_by_test_id("cell-0-0")).not_to_be_empty(timeout=self.timeout_ms)
        rows = grid.locator('[role="row"][data-index]').count()
        assert rows >= at_least, f"{name}: {rows} rows, expected at least {at_least}"

    def expect_images_drawn(self, label: str, at_least: int = 1, src: str = "") -> None:
        """The image component (or gallery) labelled ``label`` shows at least ``at_least`` images, all decoded (no
        broken link); with ``src``, only images whose URL contains it count."""
        block = self.page.locator(".block").filter(has=self.page.get_by_test_id("block-label").filter(has_text=label))
        images = block.locator(f'img[src*="{src}"]' if src else "img")
        self.expect(images.nth(at_least - 1)).to_be_visible(timeout=self.timeout_ms)
        self.page.wait_for_function(
            "images => images.every(img => img.complete && img.naturalWidth > 0)",
            arg=images.element_handles(),
            timeout=self.timeout_ms,
        )

    def expect_plot_drawn(self, title: str) -> None:
        """The plot titled ``title`` drew its bars or lines (Vega renders an SVG whose text includes the title)."""
        plot = self.page.locator("svg.marks").filter(has_text=title)
        self.expect(plot.locator("g.mark-rect path, g.mark-line path").first).to_be_visible(timeout=self.timeout_ms)

    def open_tab(self, name: str) -> None:
        tab = self.page.get_by_role("tab", name=name, exact=True)
        tab.click()
        self.expect(tab).to_have_attribute("aria-selected", "true")

    def choose_example(self, example: str) -> None:
        thumbnail = self.page.locator(f'button.gallery-item:has(img[src$="/{example}"])')
        self.expect(thumbnail).to_be_visible(timeout=self.timeout_ms)
        thumbnail.click()
        shown = self.page.locator(f'#input-image .image-frame img[src$="/{example}"]')
        self.expect(shown).to_be_visible()
        box = shown.bounding_box()  # the 48-px toy image is shown at a readable size (APP_CSS)
        assert box is not None and box["width"] >= 200 and box["height"] >= 200, box

    def attribution(self) -> None:
        self.open_tab("Attribution")
        self.run("Attribute", "The model says", exact=True)
        self.expect(self.reading("Prediction:").first).to_contain_text("faithfulness")
        self.expect_rows(re.compile(r"^Predictions"), at_least=2)
        top_latents = self.grid(re.compile(r"^Top latents"))
        first = top_latents.get_by_test_id("cell-0-0")
        self.expect(first).to_have_text(re.compile(r"^\s*\d+\s*$"), timeout=self.timeout_ms)
        self.latent = first.inner_text().strip()
        self.expect(self.page.get_by_role("textbox", name=re.compile(r"^Selected latent id"))).to_have_value(
            self.latent
        )
        self.expect_images_drawn("Where the top latents fire", at_least=2)
        self.expect_images_drawn("Where the selected latent fires", src=f"/latent{self.latent}_")
        self.expect_plot_drawn("Prediction")

    def steering(self) -> None:
        self.open_tab("Steering")
        self.expect(self.page.get_by_label("Latent ids (comma-separated)")).to_have_value(self.latent)
        steered = self.run("Steer", "Before the edit the model says", exact=True)
        self.expect(steered).to_contain_text(f"After removing latent {self.latent}")
        self.expect_rows("Probabilities before and after", at_least=2)
        swept = self.run("Sweep", "Unedited (strength 1) the model says", exact=True)
        self.expect(swept).to_contain_text("random direction of the same size")
        self.expect_rows("Sweep", at_least=2)
        self.expect_plot_drawn("Metric against strength")

    def explain(self) -> None:
        self.open_tab("Explain")
        explained = self.run("Explain the selected latent", "Explanation: adding")
        self.expect(explained).to_contain_text(f"latent {self.latent}")
        controls = self.grid("The explanation and its controls")
        self.expect(controls.get_by_test_id("cell-1-0")).to_have_text("unsteered")
        self.run("Sweep", re.compile("first changes at|at every coefficient"), exact=True)
        self.expect_rows("What the model says at each coefficient", at_least=2)
        self.run("Explain the top latents", "Explained the 5 latents")
        self.expect_rows("Top latents with their explanations", at_least=5)
        self.open_tab("Attribution")  # the explanations join the attribution's table
        header = self.grid(re.compile(r"^Top latents")).get_by_role("columnheader")
        self.expect(header.filter(has_text="explanation")).to_have_count(1, timeout=self.timeout_ms)
        self.open_tab("Explain")

    def diff(self) -> None:
        self.open_tab("Diff")
        self.page.get_by_label("Probe set").fill(self.diff_probe)
        summary = self.run("Diff the checkpoints", "predictions changed")
        self.expect(summary).to_contain_text("marker=present")  # the planted shortcut, named
        self.expect_rows(re.compile(r"^Concepts whose presence predicts the change"))
        self.expect_plot_drawn("How alike the two models' residual streams are")
        patched = self.run("Patch", "Denoising restores", exact=True)
        self.expect(patched).to_contain_text("noising is shown apart")
        self.expect_images_drawn("Share of the difference restored", at_least=2, src="patch_denoising")
        self.expect_rows("Per block, every token patched at once", at_least=2)

    def latents(self) -> None:
        self.open_tab("Latents")
        self.expect_card(self.latent)  # the latent selected in Attribution, shown at once
        self.page.get_by_label("Search labels (or a latent id)").fill("marker")
        self.page.get_by_role("button", name="Show", exact=True).click()
        table = self.grid(re.compile(r"^Latents \(click a row"))
        self.expect(table.get_by_test_id("cell-0-1")).to_contain_text("marker", timeout=self.timeout_ms)
        picked = table.get_by_test_id("cell-0-0").inner_text().strip()
        table.get_by_test_id("cell-0-1").click()  # a row opens its latent's card
        self.expect(self.page.get_by_role("textbox", name=re.compile(r"^Selected latent id"))).to_have_value(picked)
        self.expect(self.expect_card(picked)).to_contain_text("marker")
        self.expect_images_drawn("Top-activating images", at_least=4)
        self.expect_plot_drawn("Activation histogram")

    def expect_card(self, latent: str):
        """The latent card's summary (its caption and statistics) for ``latent``, once shown; returned."""
        card = self.reading("fires on (images)").filter(has_text=re.compile(rf"\blatent {latent}\b"))
        self.expect(card).to_be_visible(timeout=self.timeout_ms)
        return card

    def steps(self) -> dict[str, Callable[[], None]]:
        """Every tab of the app, in the order of its tab bar."""
        return {
            "attribution": self.attribution,
            "steering": self.steering,
            "explain": self.explain,
            "diff": self.diff,
            "latents": self.latents,
        }


TABS = tuple(Tour(None, 0).steps())


def walk(page, example: str, out_dir: Path, tabs=TABS, timeout_s: float = 60, diff_probe: str = DIFF_PROBE):
    """Choose ``example``, walk ``tabs`` (Attribution always: it selects the latent the others use) and save each
    walked tab's screenshot in ``out_dir``; returns {tab: screenshot path}."""
    unknown = set(tabs) - set(TABS)
    if unknown:
        raise ValueError(f"unknown tabs {sorted(unknown)}; valid: {', '.join(TABS)}")
    tour = Tour(page, timeout_s, diff_probe)
    tour.choose_example(example)
    shown = [name.strip().lower() for name in page.get_by_role("tab").all_inner_texts()]
    assert shown == list(TABS), f"the app's tabs are {shown}; the tour walks {list(TABS)}: give each tab a step"
    shots = {}
    for tab, step in tour.steps().items():
        if tab == "attribution" or tab in tabs:
            step()
        if tab in tabs:
            shots[tab] = out_dir / screenshot_name(tab)
            save_when_drawn(page, shots[tab], tour.timeout_ms)
    return shots


def serve_toy(explain_cache: str):
    """The app as `python app.py` serves it (toy model, toy pair, toy LLaVA, toy index), on a free loopback port;
    returns (app, url). Explanations are cached in ``explain_cache`` (a fresh one: the walk must generate)."""
    from app import create_app, serve

    app = create_app("cpu", explain_cache=explain_cache)
    port = free_port()
    serve(app, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    return app, f"http://127.0.0.1:{port}/"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "assets", help="where the PNGs go")
    parser.add_argument(
        "--example", default=DEFAULT_EXAMPLE, help="example index (sorted by name) or part of its file name"
    )
    parser.add_argument(
        "--tab", action="append", choices=[*TABS, "all"], help="a tab to screenshot (repeatable; default: all)"
    )
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser executable")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for each step")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not Path(args.chromium).is_file():
        raise SystemExit(f"{args.chromium} is missing (apt-get install --no-install-recommends chromium)")
    from engine.specs import ASSETS

    tabs = TABS if not args.tab or "all" in args.tab else tuple(args.tab)
    example = pick_example(sorted((ASSETS / "examples").glob("*.png")), args.example)
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as cache:
        app, url = serve_toy(cache)
        try:
            with browser_page(url, args.timeout, errors, Path(args.chromium)) as page:
                shots = walk(page, example, args.out_dir, tabs, args.timeout)
        finally:
            app.close()
    if errors:
        raise SystemExit(f"errors in the page: {errors}")
    for tab, path in shots.items():
        print(f"wrote {path} ({tab}, {example})")


if __name__ == "__main__":
    main()
