"""Headless Chromium (Debian's ``chromium``) with networking off, for tests of HTML the
pipeline writes. ``make test`` installs it and sets STL_TEST_REQUIRE_BROWSER, so that in CI a
missing browser fails instead of skipping."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REQUIRED = os.environ.get("STL_TEST_REQUIRE_BROWSER") == "1"  # read before fixtures clear STL_*
OFFLINE = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    # Networking off: every host name fails to resolve and any connection meets a dead proxy.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=socks5://127.0.0.1:9",
    "--no-first-run",
    "--disable-extensions",
    "--disable-background-networking",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "Debian's chromium is not installed (`make browser` installs it)"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return found


def run(page: Path, *flags: str, profile: Path) -> subprocess.CompletedProcess:
    command = [chromium(), *OFFLINE, f"--user-data-dir={profile}", *flags, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def dump_dom(page: Path, profile: Path) -> str:
    """The DOM after the page's scripts ran (its load event included)."""
    return run(page, "--virtual-time-budget=10000", "--dump-dom", profile=profile).stdout


def screenshot(page: Path, out: Path, profile: Path, size: tuple[int, int] = (1400, 1800)) -> Path:
    run(
        page,
        "--hide-scrollbars",
        f"--window-size={size[0]},{size[1]}",
        f"--screenshot={out}",
        profile=profile,
    )
    return out
