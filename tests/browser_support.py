"""Helpers for the browser test: a real `streamlit run dashboard.py` and a headless Chromium.

Streamlit draws tables on a canvas (glide-data-grid); the grid mirrors what it paints into an
accessibility tree (`role=grid` / `row` / `gridcell`), which is what these helpers read.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote, urlsplit

import oidc_provider_mock
import pytest
import requests
import werkzeug.serving
from conftest import ROOT, free_port, stop_process, wait_for
from playwright.sync_api import BrowserContext, Locator, Page, Route, expect

# The Debian package's path; CI installs it with `apt-get install chromium`.
CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium phones home at start-up, and this
# machine's closed network refuses those connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 900}
TIMEOUT_MS = 20_000  # generous: the first run of each page imports pandas, duckdb


def require_chromium() -> None:
    """Fail (or skip with PLOOMES_SKIP_BROWSER=1) when Debian's Chromium is missing."""
    if CHROMIUM.is_file():
        return
    if os.environ.get("PLOOMES_SKIP_BROWSER") == "1":
        pytest.skip(f"{CHROMIUM} not found and PLOOMES_SKIP_BROWSER=1")
    pytest.fail(f"{CHROMIUM} not found: the browser test needs Debian's Chromium. Install it "
                "with `sudo apt-get install chromium`, or set PLOOMES_SKIP_BROWSER=1 to skip "
                "the browser tests.", pytrace=False)


class StreamlitProcess:
    """`streamlit run dashboard.py` on a free loopback port, with the given PLOOMES_* env.

    `as_configured=True` leaves the usage statistics to `.streamlit/config.toml`, as a
    plain `streamlit run` does, instead of turning them off on the command line.
    """

    def __init__(self, env: dict[str, str], log_dir: Path, *, as_configured: bool = False,
                 extra_args: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_path = log_dir / f"streamlit-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.as_configured = as_configured
        self.extra_args = extra_args  # more `streamlit run` options, e.g. --secrets.files

    def start(self) -> StreamlitProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLOOMES_")}
        env.update(self.env)
        self._log = self.log_path.open("ab")
        usage_stats = [] if self.as_configured else ["--browser.gatherUsageStats", "false"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard.py"),
             "--server.port", str(self.port), "--server.address", "127.0.0.1",
             "--server.headless", "true", *usage_stats,
             # other people edit views/ meanwhile; a changed file must not rerun pages
             "--server.fileWatcherType", "none", *self.extra_args],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._healthy, timeout=60, interval=0.1)
        return self

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"streamlit exited:\n{self.log_text()}")
        try:
            return requests.get(self.url + "/_stcore/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Terminate the server (kill it if it does not stop); safe if never started."""
        if self.proc is None:
            return
        stop_process(self.proc)
        self._log.close()


def wait_until_idle(page: Page) -> None:
    """Wait until Streamlit has finished the script run and drawn every element.

    Widgets whose code is loaded on demand show a grey skeleton until it arrives.
    """
    expect(page.get_by_test_id("stStatusWidgetRunningIcon")).to_have_count(
        0, timeout=TIMEOUT_MS)
    expect(page.locator("[data-testid^=stSkeleton]")).to_have_count(0, timeout=TIMEOUT_MS)


def screenshot(page: Page, path: Path) -> Path:
    """Save a full-page screenshot of a Streamlit page.

    Streamlit scrolls inside its main container, not the document, so Playwright's
    full_page sees one viewport; grow the viewport to the content's height instead.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    wait_until_idle(page)
    height = page.evaluate(
        "() => document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"],
                                                                       height + 40)})
    page.wait_for_timeout(300)  # let canvases (tables, charts) repaint at the new size
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(VIEWPORT)
    return path


def _exactly(text: str) -> re.Pattern:
    return re.compile(f"^{re.escape(text)}$")


def data_grid(page: Page, column: str) -> Locator:
    """Return the accessible grid of the st.dataframe that has a column titled `column`.

    The grid paints (and fills its accessibility tree) only once it is on screen.
    """
    frame = page.get_by_test_id("stDataFrame").filter(
        has=page.locator("th[role=columnheader]", has_text=_exactly(column)))
    frame.scroll_into_view_if_needed()
    expect(frame).to_be_visible()
    return frame.locator("table[role=grid]")


def grid_rows(grid: Locator, text: str) -> Locator:
    """Return the grid's data rows that have a cell reading exactly `text`."""
    return grid.locator("tr[role=row]").filter(
        has=grid.page.locator("td[role=gridcell]", has_text=_exactly(text)))


def grid_column(grid: Locator, column: str) -> str:
    """Return a selector for the cells of `column`."""
    index = grid.locator("th[role=columnheader]", has_text=_exactly(column)).get_attribute(
        "aria-colindex")
    return f"td[role=gridcell][aria-colindex='{index}']"


def grid_cell(grid: Locator, row_text: str, column: str) -> Locator:
    """Return the cell under `column` in the row that has a cell reading `row_text`."""
    return grid_rows(grid, row_text).locator(grid_column(grid, column))


def choose(page: Page, label: str, option: str) -> None:
    """Pick `option` in the selectbox or multiselect labelled `label`."""
    widget = page.get_by_role("combobox", name=label, exact=True)
    item = page.get_by_role("listbox").get_by_role("option", name=option, exact=True)
    widget.scroll_into_view_if_needed()
    for _ in range(3):
        widget.click()
        # The menu closes when the page scrolls under it (a table still settling above
        # the widget), so an open that did not stick is retried.
        try:
            expect(item).to_be_visible(timeout=3000)
            break
        except AssertionError:
            continue
    item.click()
    # A multiselect keeps its menu open, and an open menu hides the rest of the page.
    if widget.get_attribute("aria-expanded") == "true":
        widget.press("Escape")
    expect(page.get_by_role("listbox")).to_have_count(0)


# What counts as this machine for a browser request; `data:` and `blob:` URLs have no host.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", None})


class OutsideRequests:
    """Abort, and record, every request a browser context makes off this machine."""

    def __init__(self, context: BrowserContext):
        self.urls: list[str] = []
        context.route("**/*", self._route)

    def _route(self, route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            self.urls.append(url)
            route.abort()


class OidcProvider:
    """A real OpenID Connect provider (oidc-provider-mock) on a free loopback port.

    It runs in a thread of the test process: discovery document, authorization form
    (type the user's `sub` and press Authorize), token endpoint with RS256-signed ID
    tokens, JWKS and an end-session endpoint, as Google or Entra would serve them.
    """

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metadata_url = self.url + "/.well-known/openid-configuration"
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self) -> OidcProvider:
        # the nonce makes the provider check what st.login sends, as real ones do
        app = oidc_provider_mock.app(require_nonce=True)
        self._server = werkzeug.serving.make_server("127.0.0.1", self.port, app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="oidc",
                                        daemon=True)
        self._thread.start()
        return self

    def add_user(self, email: str, **claims) -> None:
        """Give the user signing in as `email` (their `sub`) these ID-token claims."""
        answer = requests.put(f"{self.url}/users/{quote(email)}", timeout=5,
                              json={"email": email, "email_verified": True, **claims})
        answer.raise_for_status()

    def stop(self) -> None:
        """Stop serving; safe if never started."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)


def auth_secrets(path: Path, dashboard_url: str, provider: OidcProvider) -> Path:
    """Write a secrets.toml whose `[auth]` signs in to the dashboard through `provider`."""
    path.write_text(
        "[auth]\n"
        f'redirect_uri = "{dashboard_url}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_urlsafe(32)}"\n'
        'client_id = "ploomes-dashboard"\n'
        f'client_secret = "{secrets.token_urlsafe(16)}"\n'
        f'server_metadata_url = "{provider.metadata_url}"\n', encoding="utf-8")
    return path
