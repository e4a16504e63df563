"""The dashboard in a real browser: `streamlit run dashboard.py` driven by headless Chromium
against a real receiver taking sandbox deliveries and a sandbox standing in for Ploomes.

Every page is opened and checked for content it must show; one full-page screenshot per
page is saved in the folder printed at the start (PLOOMES_SCREENSHOTS, else tmp).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest
from browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    VIEWPORT,
    StreamlitProcess,
    choose,
    data_grid,
    grid_cell,
    grid_column,
    grid_rows,
    require_chromium,
    screenshot,
    wait_until_idle,
)
from conftest import SHARED, TEST_KEY, ReceiverProcess, make_settings
from playwright.sync_api import Page, expect, sync_playwright
from rendered import on_screen

from ploomes.demo.sandbox import DEFAULT_SUBSCRIPTIONS, Sandbox
from ploomes.model.vocabulary import ACTION_IDS, ENTITY_IDS
from ploomes.store import Store

pytestmark = pytest.mark.browser

USER_KEY = "browser-user-key-0123456789abcdef"
CONTACT = 2630362  # the record of the shared contact-update example
# Deals · Win is left out of the seeded subscriptions: the test registers it in the browser.
SEEDED = tuple(pair for pair in DEFAULT_SUBSCRIPTIONS if pair != ("Deals", "Win"))


class Live:
    """The running processes, and what the sandbox delivered so far."""

    def __init__(self, sandbox: Sandbox, receiver: ReceiverProcess, dashboard: StreamlitProcess,
                 contact_event: int, screenshots: Path):
        self.sandbox = sandbox
        self.receiver = receiver
        self.dashboard = dashboard
        self.contact_event = contact_event
        self.screenshots = screenshots

    @property
    def deliveries(self) -> list[dict]:
        """Return every delivery the sandbox made so far (tests add some)."""
        return self.sandbox.deliveries()

    @property
    def total(self) -> int:
        """Return how many events the receiver should hold."""
        return len(self.deliveries) + 1  # plus the contact update posted by hand

    def count(self, **match) -> int:
        """Return how many sandbox deliveries have these outcome values."""
        return sum(all(d[k] == v for k, v in match.items()) for d in self.deliveries)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    # Module fixtures run before conftest's autouse env cleaning, so the variable is seen.
    folder = Path(os.environ.get("PLOOMES_SCREENSHOTS") or
                  tmp_path_factory.mktemp("browser") / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def live(tmp_path_factory, screenshots):
    require_chromium()  # before starting anything
    tmp = tmp_path_factory.mktemp("live")
    with Sandbox(user_key=USER_KEY, seed=7, rate_limit=0) as sandbox:
        receiver = ReceiverProcess(tmp / "data")
        dashboard = StreamlitProcess({
            "PLOOMES_DATA_DIR": str(receiver.data_dir),
            "PLOOMES_RECEIVER_URL": receiver.url,
            "PLOOMES_API_URL": sandbox.url,
            "PLOOMES_USER_KEY": USER_KEY,
            "PLOOMES_CALLBACK_URL": receiver.webhook_url,
            "PLOOMES_VALIDATION_KEYS": TEST_KEY,  # the same deployment as the receiver
        }, tmp)
        try:
            receiver.start()
            sandbox.subscribe_all(receiver.webhook_url, TEST_KEY, pairs=SEEDED)
            # Few enough events for one page (50 rows) of the Events table.
            sandbox.run_activity(30)
            # the help article's contact update, as the sandbox's account sends it (two
            # accounts, and the choice between them, are tests/test_accounts.py's)
            contact = json.loads((SHARED / "payloads" / "contact-update.json").read_bytes())
            answer = receiver.post({**contact, "AccountId": sandbox.sim.account_id})
            assert answer.status_code == 200, answer.text
            receiver.wait_ingested()
            assert {(d["state"], d["status"]) for d in sandbox.deliveries()} == {("sent", 200)}
            dashboard.start()
            yield Live(sandbox, receiver, dashboard, answer.json()["delivery_id"], screenshots)
        finally:
            dashboard.stop()
            receiver.stop()


@pytest.fixture(scope="module")
def browser(live):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        expect.set_options(timeout=15_000)  # a slow CI machine: Streamlit draws late
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, live):
    """A fresh browser tab (a new Streamlit session) per test."""
    context = browser.new_context(viewport=VIEWPORT, base_url=live.dashboard.url)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_page(page: Page, path: str, title: str) -> None:
    """Go to a dashboard address and wait for the page's title; no exception shown."""
    page.goto(path)
    expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible(
        timeout=TIMEOUT_MS)
    wait_until_idle(page)
    expect(page.get_by_test_id("stException")).to_have_count(0)


def metric(page: Page, label: str):
    """Return the value element of the st.metric with this label."""
    return page.get_by_test_id("stMetric").filter(has_text=label).get_by_test_id(
        "stMetricValue")


def test_overview_counts_live(page, live):
    open_page(page, "/", "Visão geral")
    before = live.total
    expect(metric(page, "Entregas (24 h)")).to_have_text(str(before))
    expect(metric(page, "Receptor")).to_have_text("ok")
    expect(page.get_by_text("Linha do tempo", exact=True)).to_be_visible()
    expect(page.get_by_test_id("stVegaLiteChart")).to_be_visible()

    # Deliveries arriving while the page is open show up without a reload: the numbers
    # refresh every 10 s (views/overview.py) over a query cache at most 5 s old.
    live.sandbox.run_activity(3, "Contacts", "Update")
    live.receiver.wait_ingested()
    expect(metric(page, "Entregas (24 h)")).to_have_text(str(before + 3), timeout=30_000)
    screenshot(page, live.screenshots / "overview.png")


def test_events_filter_narrows_the_table(page, live):
    open_page(page, "/events", "Eventos")
    total, deals = live.total, live.count(entity="Deals")
    expect(page.get_by_text(f"Eventos 1–{total} de {total} ")).to_be_visible()
    grid = data_grid(page, "campos alterados")
    expect(grid).to_have_attribute("aria-rowcount", str(total + 1))  # + the header row

    choose(page, "Entidade", "Negócios")  # entities as Ploomes names them
    expect(page.get_by_text(f"Eventos 1–{deals} de {deals} ")).to_be_visible()
    expect(grid).to_have_attribute("aria-rowcount", str(deals + 1))
    cells = grid.locator(grid_column(grid, "entidade"))
    expect(cells.first).to_have_text("Negócios")
    assert set(cells.all_inner_texts()) == {"Negócios"}
    screenshot(page, live.screenshots / "events.png")


def test_event_diff(page, live):
    event_id = live.contact_event
    open_page(page, f"/events?event={event_id}", "Eventos")
    expect(page.get_by_role("heading", name=f"Evento nº {event_id}")).to_be_visible()
    expect(page.get_by_text(f"Alteração de Clientes (Update Contacts) {CONTACT}")
           ).to_be_visible()
    diff = data_grid(page, "antes")  # fields as Ploomes names them (LegalName)
    expect(grid_cell(diff, "Razão social", "antes")).to_have_text("Ploomes")
    expect(grid_cell(diff, "Razão social", "depois")).to_have_text(
        "Ploomes Sistemas Empresariais")
    screenshot(page, live.screenshots / "event-detail.png")


def test_records(page, live):
    open_page(page, f"/records?entity=Contacts&record={CONTACT}", "Registros")
    expect(page.get_by_role("heading", name=f"Clientes {CONTACT} — Ploomes Sistemas "
                                             "Empresariais")).to_be_visible()
    expect(page.get_by_text("1 evento, primeiro em")).to_be_visible()
    timeline = data_grid(page, "campos alterados")
    expect(grid_cell(timeline, str(live.contact_event), "ação")).to_have_text("Alteração")
    screenshot(page, live.screenshots / "records.png")


def test_users(page, live):
    by_user = Counter(d["body"]["ActionUserId"] for d in live.deliveries)
    user_id, events = by_user.most_common(1)[0]
    open_page(page, f"/users?user={user_id}", "Usuários")
    expect(page.get_by_role("heading", name=str(user_id))).to_be_visible()
    table = data_grid(page, "ActionUserId")
    expect(grid_cell(table, str(user_id), "Eventos")).to_have_text(str(events))
    expect(page.get_by_text("Quando trabalha")).to_be_visible()
    screenshot(page, live.screenshots / "users.png")


def test_webhooks_register_subscription(page, live):
    sandbox, callback = live.sandbox, live.receiver.webhook_url
    open_page(page, "/webhooks", "Webhooks")
    expect(page.get_by_text(on_screen(f"têm inscrição para {callback}"))).to_be_visible()
    table = data_grid(page, "Entregas 24 h")
    expect(table).to_have_attribute("aria-rowcount", str(len(SEEDED) + 1))
    expect(grid_rows(table, callback)).to_have_count(len(SEEDED))
    expect(page.get_by_role("textbox", name="URL de callback")).to_have_value(callback)

    choose(page, "Entidade", "Negócios")
    choose(page, "Ações (uma inscrição para cada)", "Ganho")
    page.get_by_role("button", name="Cadastrar").click()
    expect(page.get_by_text(on_screen(f"1 inscrição criada para {callback}."))
           ).to_be_visible()
    [hook] = [w for w in sandbox.webhooks() if (w["EntityId"], w["ActionId"]) == (
        ENTITY_IDS["Deals"], ACTION_IDS["Win"])]
    assert hook["CallbackUrl"] == callback
    assert hook["ValidationKey"] == TEST_KEY
    expect(table).to_have_attribute("aria-rowcount", str(len(SEEDED) + 2))

    # Ploomes (the sandbox) now delivers wins to the receiver; the page counts them.
    outcome = sandbox.run_activity(2, "Deals", "Win")
    assert [d["status"] for d in outcome["deliveries"]] == [200, 200], json.dumps(outcome)
    live.receiver.wait_ingested()
    page.reload()
    table = data_grid(page, "Entregas 24 h")
    expect(grid_cell(table, str(hook["Id"]), "Entregas 24 h")).to_have_text("2")
    screenshot(page, live.screenshots / "webhooks.png")


def test_status(page, live):
    open_page(page, "/status", "Status")
    expect(page.get_by_text(str(live.receiver.data_dir))).to_be_visible()
    expect(metric(page, "Receptor")).to_have_text("ok")
    expect(metric(page, "Fila do diário")).to_have_text("0")
    expect(metric(page, "Registros do diário gravados")).to_have_text(str(live.total))
    expect(metric(page, "Entregas recusadas")).to_have_text("0")
    expect(page.get_by_text("python -m ploomes status")).to_be_visible()
    screenshot(page, live.screenshots / "status.png")


def test_a_delivery_appears_on_the_open_events_page_without_a_reload(page, live):
    """The list refreshes by itself (st.fragment): a new delivery shows up while the page
    stays open, with the link's filter and the open event kept."""
    with Store(make_settings(live.receiver.data_dir)).reader() as con:
        [(deal_event,)] = con.execute("SELECT max(id) FROM events WHERE entity = 'Deals' "
                                      "AND NOT is_test").fetchall()
    deals = live.count(entity="Deals")
    page.goto(f"/events?entity=Deals&event={deal_event}")
    grid = data_grid(page, "campos alterados")
    expect(grid).to_have_attribute("aria-rowcount", str(deals + 1))
    opened = page.get_by_role("heading", name=re.compile(rf"\b{deal_event}\b"))
    expect(opened).to_be_visible()
    page.evaluate("window.stillTheSamePage = true")  # gone if the page reloads

    report = live.sandbox.run_activity(1, entity="Deals", action="Create")
    assert [d["status"] for d in report["deliveries"]] == [200]
    expect(grid).to_have_attribute("aria-rowcount", str(deals + 2), timeout=15_000)
    assert page.evaluate("window.stillTheSamePage") is True
    expect(opened).to_be_visible()  # the open event stays open
    assert f"event={deal_event}" in page.url and "entity=Deals" in page.url
    cells = grid.locator(grid_column(grid, "entidade"))
    assert set(cells.all_inner_texts()) == {"Negócios"}  # the filter stays applied
    screenshot(page, live.screenshots / "events-live.png")


def test_a_row_opens_its_event(page, live):
    event_id = live.contact_event
    open_page(page, "/events", "Eventos")
    grid = data_grid(page, "campos alterados")
    expect(grid).to_have_attribute("aria-rowcount", str(live.total + 1))
    ids = grid.locator(grid_column(grid, "evento")).all_inner_texts()
    row = ids.index(str(event_id))
    # glide-data-grid draws the table on a canvas: click where the row's selection box is
    # drawn (Streamlit's rows are 35 px high, under a header row of the same height)
    frame = page.get_by_test_id("stDataFrame").filter(
        has=page.locator("th[role=columnheader]", has_text=re.compile("^campos alterados$")))
    box = frame.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + 12, box["y"] + 35 * (row + 1) + 17)
    expect(page.get_by_role("heading", name=f"Evento nº {event_id}")).to_be_visible()
    assert f"event={event_id}" in page.url
    expect(page.get_by_text(f"Alteração de Clientes (Update Contacts) {CONTACT}")
           ).to_be_visible()


def test_a_row_of_a_records_history_opens_its_event(page, live):
    event_id = live.contact_event
    open_page(page, f"/records?entity=Contacts&record={CONTACT}", "Registros")
    timeline = data_grid(page, "campos alterados")
    expect(timeline).to_have_attribute("aria-rowcount", "2")  # one event, under the header
    frame = page.get_by_test_id("stDataFrame").filter(
        has=page.locator("th[role=columnheader]", has_text=re.compile("^campos alterados$")))
    box = frame.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + 12, box["y"] + 35 + 17)  # the row's selection box
    expect(page.get_by_role("heading", name=f"Evento nº {event_id}")).to_be_visible()
    assert f"event={event_id}" in page.url and "/events" in page.url


def test_a_refused_delivery_is_listed_with_its_body_as_text(page, live):
    body = b'{"Action": "Update", "Entity": "<img src=x onerror=alert(1)> **bold**"'  # cut off
    assert live.receiver.post(body).status_code == 400
    live.receiver.wait_ingested()
    open_page(page, "/status", "Status")
    expect(metric(page, "Entregas recusadas")).to_have_text("1")
    grid = data_grid(page, "motivo")
    expect(grid).to_have_attribute("aria-rowcount", "2")  # the one refused, under the header
    expect(grid_cell(grid, "400", "origem")).to_have_text("127.0.0.1")
    expect(grid_cell(grid, "400", "tamanho (bytes)")).to_have_text(str(len(body)))
    frame = page.get_by_test_id("stDataFrame").filter(
        has=page.locator("th[role=columnheader]", has_text=re.compile("^motivo$")))
    box = frame.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + 12, box["y"] + 35 + 17)  # the row's selection box
    shown = page.get_by_test_id("stCode").filter(has_text="onerror")
    expect(shown).to_contain_text(body.decode())  # as text: no image, no bold
    expect(page.locator("img[src='x']")).to_have_count(0)
    with page.expect_download() as download:
        page.get_by_role("button", name="Baixar o corpo").click()
    assert Path(download.value.path()).read_bytes() == body
    screenshot(page, live.screenshots / "status-refused.png")
