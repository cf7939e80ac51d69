"""Screenshot the search page after a text query, for the README (headless chromium through Playwright).

Start a page first (for example `imtext demo --data flickr8k:../shared/data/flickr8k-762`), then:

    python bench/page_screenshot.py --page http://127.0.0.1:7860 --query "a dog runs through the snow" \
        --out docs/screenshots/flickr8k-text-search.png

The page's own query box and search button are used, as a person would, and the shot waits until every
result photo has loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium: .ci/install-browser.sh installs it
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def screenshot(page_url: str, query: str, out: Path, width: int = 1280, height: int = 900) -> Path:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} not found: run .ci/install-browser.sh first")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            pg = browser.new_page(viewport={"width": width, "height": height})
            pg.set_default_timeout(60_000)
            pg.goto(page_url)
            box = pg.locator("#query textarea, #query input").first
            box.fill(query)
            pg.click("#search-btn")
            pg.locator("#text-gallery .caption-label").first.wait_for(state="visible")
            pg.wait_for_function(
                "Array.from(document.querySelectorAll('.gallery-item img'))"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            pg.wait_for_timeout(500)  # thumbnails fade in
            out.parent.mkdir(parents=True, exist_ok=True)
            pg.screenshot(path=str(out))
        finally:
            browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page", required=True, help="the page's URL (imtext ui / imtext demo print it)")
    p.add_argument("--query", required=True, help="the sentence to type")
    p.add_argument("--out", required=True, type=Path, help="where to write the PNG")
    args = p.parse_args(argv)
    print(screenshot(args.page, args.query, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
