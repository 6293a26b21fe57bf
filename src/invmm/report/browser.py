"""Render an HTML file in headless Chromium: a screenshot, the DOM after scripts ran, the console output.

Used to check the report in a real browser (tests and benchmarks/audit_scale.py). Chromium comes from
the system (Debian package `chromium`); nothing here touches the network.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--no-first-run", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def render(page: Path, screenshot: Path, *, width: int = 1280, height: int = 2400,
           timeout: float = 120) -> tuple[str, list[str]]:
    """Returns the serialised DOM and the console lines Chromium logged while loading the page."""
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("headless Chromium not found; install it (Debian: apt-get install chromium)")
    url = Path(page).resolve().as_uri()
    console: list[str] = []
    with tempfile.TemporaryDirectory() as profile:
        base = [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        shot = subprocess.run([*base, f"--screenshot={Path(screenshot).resolve()}", url], capture_output=True,
                              text=True, timeout=timeout)
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=timeout)
    for proc in (shot, dom):
        console += [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln]
    if not Path(screenshot).exists():
        raise RuntimeError(f"Chromium wrote no screenshot: {shot.stderr[-2000:]}")
    return dom.stdout, console
