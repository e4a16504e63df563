"""The dashboard in a real Chromium speaks Brazilian Portuguese: the navigation, the pages,
and what Vega draws itself (the timeline's dates, the heatmap's weekdays); with
PLOOMES_LANGUAGE=en, English."""

from __future__ import annotations

import re

import pytest
from browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    VIEWPORT,
    StreamlitProcess,
    require_chromium,
)
from playwright.sync_api import Page, expect, sync_playwright
from store_seeds import seed_activity

pytestmark = pytest.mark.browser

PORTUGUESE_PAGES = ("Visão geral", "Eventos", "Registros", "Usuários", "Webhooks", "Status")
ENGLISH_PAGES = ("Overview", "Events", "Records", "Users", "Webhooks", "Status")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    require_chromium()
    data = tmp_path_factory.mktemp("i18n-browser") / "data"
    seed_activity(data)
    return data


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def dashboard(data_dir, tmp_path_factory, language: str | None) -> StreamlitProcess:
    env = {"PLOOMES_DATA_DIR": str(data_dir), "PLOOMES_RECEIVER_URL": "http://127.0.0.1:9"}
    if language:
        env["PLOOMES_LANGUAGE"] = language
    return StreamlitProcess(env, tmp_path_factory.mktemp("streamlit")).start()


def open_tab(browser, url: str) -> Page:
    context = browser.new_context(viewport=VIEWPORT, base_url=url)
    context.set_default_timeout(TIMEOUT_MS)
    return context.new_page()


def chart_text(page: Page, index: int = 0) -> str:
    """Return the words Vega drew in a chart (axis labels and titles, legend)."""
    texts = page.get_by_test_id("stVegaLiteChart").nth(index).locator("svg text")
    expect(texts.first).to_be_attached()
    return " ".join(texts.all_text_contents())


def test_the_dashboard_speaks_portuguese(browser, data_dir, tmp_path_factory):
    app = dashboard(data_dir, tmp_path_factory, None)
    try:
        page = open_tab(browser, app.url)
        page.goto("/")
        expect(page.get_by_role("heading", name="Visão geral", exact=True)).to_be_visible()
        nav = page.get_by_test_id("stSidebarNav")
        for title in PORTUGUESE_PAGES:
            expect(nav.get_by_role("link", name=title, exact=True)).to_be_visible()
        assert page.title() == "Webhooks do Ploomes"
        expect(page.get_by_text("Linha do tempo", exact=True)).to_be_visible()

        # the timeline over 30 days: Vega's dates in Portuguese, its titles from the catalog
        page.get_by_role("radio", name="30 d", exact=True).click()
        expect(page.get_by_text(re.compile("Uma barra por dia"))).to_be_visible()
        drawn = chart_text(page)
        assert "dia (America/Sao_Paulo)" in drawn and "eventos" in drawn
        assert re.search(r"\b(seg|ter|qua|qui|sex|sáb|dom) \d\d\b|\b(novembro|dezembro)\b",
                         drawn), drawn
        assert not re.search(r"\b(Mon|Tue|Wed|Thu|Fri|Sat|Sun|November|December)\b", drawn)

        # the Users heatmap: Portuguese weekdays, Monday first
        page.goto("/users?user=10")
        expect(page.get_by_role("heading", name="Usuários", exact=True)).to_be_visible()
        expect(page.get_by_text("Quando trabalha")).to_be_visible()
        heatmap = chart_text(page)
        days = re.findall(r"\b(seg|ter|qua|qui|sex|sáb|dom)\b", heatmap)
        assert days[:7] == ["seg", "ter", "qua", "qui", "sex", "sáb", "dom"], heatmap
        assert "hora" in heatmap
    finally:
        app.stop()


def test_the_dashboard_speaks_english_on_request(browser, data_dir, tmp_path_factory):
    app = dashboard(data_dir, tmp_path_factory, "en")
    try:
        page = open_tab(browser, app.url)
        page.goto("/users?user=10")
        expect(page.get_by_role("heading", name="Users", exact=True)).to_be_visible()
        nav = page.get_by_test_id("stSidebarNav")
        for title in ENGLISH_PAGES:
            expect(nav.get_by_role("link", name=title, exact=True)).to_be_visible()
        expect(page.get_by_text("When they work")).to_be_visible()
        heatmap = chart_text(page)
        assert re.findall(r"\b(Mon|Tue|Wed|Thu|Fri|Sat|Sun)\b", heatmap)[:2] == ["Mon", "Tue"]
    finally:
        app.stop()
