"""Text from deliveries, the Ploomes API and links is shown as text, in a real browser.

Deliveries whose names are Markdown (an image and a link to an attacker), bold, LaTeX,
Streamlit's colour syntax, HTML and a 100 KB Name go through the real receiver; users and
a custom field with such names come from the sandbox (the local Ploomes API) through a
directory sync. Headless Chromium opens every page that shows them, and the shareable
links that repeat a value from the address, with every request off this machine aborted
and recorded: none may happen, and nothing from the data may render as a link, an image,
bold, LaTeX or colour. The dashboard runs as `.streamlit/config.toml` configures it (usage
statistics included), so the checks also cover what Streamlit itself would send out.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import hostile
import pytest
from browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    VIEWPORT,
    OutsideRequests,
    StreamlitProcess,
    require_chromium,
    wait_until_idle,
)
from conftest import ReceiverProcess, make_settings, wait_for
from hostile import HUGE, NAMES, REFLECTED, SHORT
from playwright.sync_api import Page, expect, sync_playwright

from ploomes.crm.api import PloomesClient
from ploomes.crm.directory import sync_directory
from ploomes.demo import generator
from ploomes.demo.sandbox import Sandbox
from ploomes.model.names import action_label
from ploomes.store import Store
from views.text import HEADER_LIMIT

pytestmark = pytest.mark.browser

USER_KEY = "injection-user-key-0123456789abcdef"
# What data must never become on a page: (what, CSS selector).
RENDERED_FROM_DATA = (
    ("a link to the attacker", "a[href*='attacker.example'], a[href*='evil.example']"),
    ("an image from the data", "img[src*='attacker.example'], img[src='x'], "
                               "[data-testid=stMarkdownContainer] img"),
    ("bold", "strong:text-is('bold')"),
    ("LaTeX", ".katex"),
    ("coloured text", ".stMarkdownColoredText, .stMarkdownColoredBackground"),
)


class Hostile:
    """The running receiver and dashboard, and the ids the hostile data got."""

    def __init__(self, dashboard: StreamlitProcess, user_ids: list[int], events: list[int]):
        self.dashboard = dashboard
        self.user_ids = user_ids
        self.events = events  # event ids, in the order of hostile.deliveries()

    def update_event(self, name: str) -> int:
        """Return the event id of the update of the record named `name`."""
        return self.events[2 * NAMES.index(name) + 1]

    def user(self, name: str) -> int:
        """Return the id of the Ploomes user named `name`."""
        return self.user_ids[NAMES.index(name)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    require_chromium()  # before starting anything
    tmp = tmp_path_factory.mktemp("injection")
    account = generator.Simulation(seed=5, account_id=hostile.ACCOUNT_ID)
    user_ids = [user["Id"] for user in account.users[:len(NAMES)]]
    for user, name in zip(account.users, NAMES, strict=False):
        user["Name"] = name  # what any Ploomes admin can call a user
    account.fields.append({"Id": 31099999, **hostile.custom_field()})
    with Sandbox(user_key=USER_KEY, simulation=account, rate_limit=0) as sandbox:
        receiver = ReceiverProcess(tmp / "data").start()
        dashboard = StreamlitProcess({"PLOOMES_DATA_DIR": str(receiver.data_dir),
                                      "PLOOMES_RECEIVER_URL": receiver.url}, tmp,
                                     as_configured=True)
        try:
            events = []
            for body in hostile.deliveries(user_ids):
                answer = receiver.post(body)
                assert answer.status_code == 200, answer.text
                events.append(answer.json()["delivery_id"])
            receiver.wait_ingested(timeout=30)
            settings = make_settings(receiver.data_dir)
            with PloomesClient(sandbox.url, USER_KEY, retry_total=0) as client:
                sync_directory(client, Store(settings))
            dashboard.start()
            yield Hostile(dashboard, user_ids, events)
        finally:
            dashboard.stop()
            receiver.stop()


@pytest.fixture(scope="module")
def browser(data):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        expect.set_options(timeout=15_000)
        try:
            yield browser
        finally:
            browser.close()


class Visitor:
    """One browser tab that records what leaves the machine and what the page runs."""

    def __init__(self, page: Page, outside: OutsideRequests):
        self.page = page
        self.outside = outside
        self.requested: list[str] = []  # what pages load, from this machine too (`<img src=x>`)
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda request: request.resource_type != "document"
                and self.requested.append(request.url))
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, path: str, title: str) -> Page:
        """Open a dashboard address; wait for the page's title and its last element."""
        self.start(path)
        return self.finish(title)

    def start(self, path: str) -> None:
        """Start loading a dashboard address (other tabs may load meanwhile)."""
        self.page.goto(path, wait_until="commit")

    def finish(self, title: str) -> Page:
        """Wait for the page being loaded: its title, then its last element."""
        expect(self.page.get_by_role("heading", name=title, exact=True)).to_be_visible(
            timeout=TIMEOUT_MS)
        wait_until_idle(self.page)
        expect(self.page.get_by_test_id("stException")).to_have_count(0)
        return self.page

    def shown(self) -> str:
        """Return the text of the page's main area as a reader sees it."""
        text = self.page.get_by_test_id("stMain").inner_text()
        return " ".join(text.replace("\u2060", "").split())

    def assert_text_only(self, path: str, *values: str) -> None:
        """Assert `values` show as text, and nothing on the page came from the data as
        Markdown; nothing went off the machine, and no script ran."""
        wanted = [" ".join(value.split()) for value in values]
        try:  # the page may still be drawing its last elements
            wait_for(lambda: all(value in self.shown() for value in wanted), timeout=10,
                     interval=0.2)
        except AssertionError:
            shown = self.shown()
            missing = [value for value in wanted if value not in shown]
            raise AssertionError(f"{path}: not shown as text: {missing}\nshown: {shown[:3000]}"
                                 f"\nrequests off this machine: {self.outside.urls}") from None
        self.assert_stays_here(path)
        for what, selector in RENDERED_FROM_DATA:
            found = self.page.locator(selector)
            if found.count():
                html = found.first.evaluate("e => e.outerHTML")
                raise AssertionError(f"{path}: {what} rendered from the data: {html[:300]}")
        assert not self.dialogs and not self.errors, (self.dialogs, self.errors)

    def assert_stays_here(self, path: str) -> None:
        """Assert the pages opened so far asked nothing of another machine."""
        assert not self.outside.urls, f"{path}: requests off this machine: {self.outside.urls}"
        assert not [u for u in self.requested if re.search(r"attacker|evil|/x$", u)]


@pytest.fixture
def tabs(browser, data):
    """Three tabs of one browser: pages load side by side, as a reader's tabs do."""
    context = browser.new_context(viewport=VIEWPORT, base_url=data.dashboard.url)
    context.set_default_timeout(TIMEOUT_MS)
    outside = OutsideRequests(context)
    yield [Visitor(context.new_page(), outside) for _ in range(3)]
    context.close()


@pytest.fixture
def visitor(tabs):
    return tabs[0]


def alert_texts(page: Page) -> list[str]:
    return page.get_by_test_id("stAlert").all_inner_texts()


def test_names_from_ploomes_render_as_text(tabs, data):
    """Problem 2: record names, actions, an entity, user and field names, on every page
    that shows them; problem 13: the 100 KB Name is cut in the headers."""
    events, records, users = tabs
    for name in NAMES:
        shown = name if name in SHORT else HUGE[:HEADER_LIMIT - 1].rstrip() + "…"
        event, record, user = data.update_event(name), hostile.record_id(name), data.user(name)
        paths = (f"/events?event={event}", f"/records?entity=Contacts&record={record}",
                 f"/users?user={user}")
        for tab, path in zip(tabs, paths, strict=True):
            tab.start(path)

        page = events.finish("Eventos")
        what = page.get_by_test_id("stMarkdownContainer").filter(has_text="O quê:")
        expect(what).to_have_count(1)
        action = hostile.update_action(name)  # an unknown action keeps its own name
        events.assert_text_only(paths[0], f"de Clientes ({action} Contacts) {record} “{shown}”",
                                f"Quem: {shown} ({user})", hostile.LINK)
        assert len(what.inner_text()) < 1000
        assert len(alert_texts(page)) == 1 and len(alert_texts(page)[0]) < 2000  # the gap

        page = records.finish("Registros")
        header = page.locator("h2").filter(has_text=f"Clientes {record}")
        expect(header).to_have_count(1)
        assert header.inner_text().replace("\u2060", "") == f"Clientes {record} — {shown}"
        quoted = json.dumps(f"Antes: {name}", ensure_ascii=False)[:60]  # as the gap says it
        records.assert_text_only(paths[1], f"Nome era {quoted}", hostile.LINK,
                                 f"após o evento nº {event} ({action_label(action)}, ")
        assert all(len(text) < 2000 for text in alert_texts(page))

        page = users.finish("Usuários")
        expect(page.locator("h3").filter(has_text=f"({user})")).to_have_count(1)
        users.assert_text_only(paths[2], f"{shown} ({user})", f"Ver os eventos de {shown} ({user})")

    # the record of an entity named LINK, and the pages that show every name at once
    visits = [(f"/records?entity={quote(hostile.LINK)}&record={hostile.ENTITY_RECORD}",
               "Registros", [f"{hostile.LINK} {hostile.ENTITY_RECORD} — {hostile.RED}"]),
              (f"/events?event={data.events[-1]}", "Eventos",
               [f"Criação de {hostile.LINK} (Create {hostile.LINK}) {hostile.ENTITY_RECORD}"]),
              ("/", "Visão geral", []), ("/status", "Status", [])]
    for batch in (visits[:3], visits[3:]):
        for tab, (path, _, _) in zip(tabs, batch, strict=False):
            tab.start(path)
        for tab, (path, title, values) in zip(tabs, batch, strict=False):
            tab.finish(title)
            tab.assert_text_only(path, *values)


def test_values_from_a_link_render_as_text(visitor, data):
    """Problem 3: a shared link repeats its values in messages, as text."""
    value = quote(REFLECTED)
    for path, title, messages in (
            # the event id, then filters: entity, from (its message quotes it in backticks),
            # user, field
            (f"/events?event={value}&entity={value}&from={value}&user={value}&field={value}",
             "Eventos", 5),
            (f"/records?entity={value}&record=1", "Registros", 1)):
        visitor.open(path, title)
        visitor.assert_text_only(path, REFLECTED)
        assert visitor.shown().count(" ".join(REFLECTED.split())) == messages, path


def test_the_dashboard_asks_nothing_of_other_machines(visitor):
    """The tab's icon (also when moving between pages), the pages' icons and Streamlit's
    usage statistics (`.streamlit/config.toml`) are nothing fetched from outside."""
    page = visitor.open("/", "Visão geral")
    for title in ("Eventos", "Registros", "Usuários", "Status"):
        page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
        expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible()
        wait_until_idle(page)
    page.wait_for_load_state("networkidle")
    visitor.assert_stays_here("the pages")
