"""The README's screenshots of central's pages, taken from a running demo's real data.

Start the demo first (it must have passed its loop), then, in a second terminal:

    .venv/bin/python deploy/demo.py --duration 300 &
    .venv/bin/python deploy/screenshots.py

Uses Debian's Chromium (/usr/bin/chromium) through Playwright; it downloads no browser.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
OUT = REPO / "deploy" / "screenshots"
# (file, path, height in px or None for the full page): the pages the README shows for the
# loop and the gateway run from central. The long pages are cut to their top, which says what
# they are, to keep the PNGs small.
PAGES = [
    ("central_model_version.png", "/models/surface-defects/1.1.0", None),
    ("central_samples.png", "/review/samples", 1000),
    ("central_audit.png", "/audit", 900),
    ("central_overview.png", "/", 900),
    ("central_alerts.png", "/alerts", 800),
    ("central_fleet.png", "/fleet", 700),
    ("central_device.png", "/devices/line1-gw1", 1200),
]

OPERATOR_SHOT = "operator_alerts.png"  # the gateway's page, with its line's alerts band

EPILOG = """examples:
  .venv/bin/python deploy/screenshots.py                      # the demo in var/demo
  .venv/bin/python deploy/screenshots.py --url http://127.0.0.1:41234 --out /tmp/shots
"""


def demo_url(workdir: Path) -> str:
    """Central's address from the demo's config (its port is chosen at each start)."""
    config = workdir / "central-sync.yaml"
    if not config.exists():
        raise SystemExit(f"{config} is missing: start the demo first (bash deploy/demo.sh)")
    web = yaml.safe_load(config.read_text())["web"]
    return f"http://{web['host']}:{web['port']}"


def gateway_url(workdir: Path) -> str | None:
    """The demo gateway's operator page, from its config; None when the demo has none."""
    config = workdir / "edge-agent.yaml"
    if not config.exists():
        return None
    ui = yaml.safe_load(config.read_text()).get("ui") or {}
    return f"http://{ui.get('host', '127.0.0.1')}:{ui['port']}" if ui.get("port") else None


def take_operator_page(url: str, out: Path) -> Path:
    """The gateway's operator page as a panel shows it, with the open alerts of its line."""
    from playwright.sync_api import TimeoutError as NotShown
    from playwright.sync_api import sync_playwright

    target = out / OPERATOR_SHOT
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": 1440, "height": 810})
        page.goto(url)
        page.wait_for_load_state("networkidle")
        try:  # the band shows once central has alerts for the line (the demo's defect rate)
            page.wait_for_selector("section.alerts", timeout=10_000)
        except NotShown:
            print("no open alert on the gateway's page yet: taken without the band")
        page.screenshot(path=str(target))
        browser.close()
    return target


def take(url: str, user: str, password: str, out: Path, width: int) -> list[Path]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit("playwright is not installed: .venv/bin/pip install -e '.[browser]'"
                         ) from None
    if not CHROMIUM.exists():
        raise SystemExit("Debian's Chromium is missing: sudo apt-get install -y chromium")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(f"{url}/login")
        page.fill("input[name=username]", user)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        if "/login" in page.url:
            raise SystemExit(f"logging in as {user} failed: check --user and --password")
        for name, path, height in PAGES:
            reply = page.goto(f"{url}{path}")
            if reply is None or reply.status != 200:
                raise SystemExit(f"{url}{path} answered {reply and reply.status}: has the demo "
                                 "finished its loop?")
            # Evidence images load lazily: load them all before the picture is taken.
            page.evaluate("document.querySelectorAll('img[loading=lazy]')"
                          ".forEach(img => img.loading = 'eager')")
            page.wait_for_load_state("networkidle")
            page.wait_for_function("[...document.images].every(img => img.complete)")
            target = out / name
            clip = {"x": 0, "y": 0, "width": width, "height": height} if height else None
            page.screenshot(path=str(target), full_page=True, clip=clip)
            written.append(target)
        browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="central's address (default: read from the demo's config)")
    parser.add_argument("--workdir", type=Path, default=REPO / "var" / "demo",
                        help="the demo's folder, to find central's port (default var/demo)")
    parser.add_argument("--user", default="demo", help="account to log in with (default demo)")
    parser.add_argument("--password", default="edge-mlops-demo",
                        help="its password (default: the demo's)")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="folder for the PNG files (default deploy/screenshots)")
    parser.add_argument("--width", type=int, default=1280, help="page width in px (default 1280)")
    args = parser.parse_args(argv)
    url = (args.url or demo_url(args.workdir)).rstrip("/")
    written = take(url, args.user, args.password, args.out, args.width)
    gateway = gateway_url(args.workdir) if not args.url else None
    if gateway:
        written.append(take_operator_page(gateway, args.out))
    for path in written:
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
