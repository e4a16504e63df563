"""Sign-in and roles in a real browser: `streamlit run dashboard.py` with an `[auth]`
section, signing in through a real OpenID Connect provider on loopback (oidc-provider-mock:
discovery, authorization form, signed ID tokens, end of session), driven by headless
Chromium. An admin registers a subscription and finds it on the Audit page; a viewer sees
the data but no write action; a stranger sees nothing; signing out ends it all. A local
dashboard without sign-in refuses a request that came through a reverse proxy.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    VIEWPORT,
    OidcProvider,
    OutsideRequests,
    StreamlitProcess,
    auth_secrets,
    choose,
    data_grid,
    grid_cell,
    require_chromium,
    wait_until_idle,
)
from conftest import make_settings
from playwright.sync_api import Page, expect, sync_playwright
from rendered import on_screen

from ploomes.demo.load import load_demo
from ploomes.demo.sandbox import Sandbox
from ploomes.model.vocabulary import ACTION_IDS, ENTITY_IDS

pytestmark = pytest.mark.browser

ADMIN, VIEWER, STRANGER = "ana@empresa.com.br", "vera@empresa.com.br", "eve@outra.com.br"
USER_KEY = "sign-in-user-key-0123456789abcdef"
CALLBACK = "https://hooks.empresa.com.br/ploomes/webhook"
RECORD_NAME = "Padaria Pão Quente"
SIGN_IN_TITLE = "Monitor de webhooks do Ploomes"


def seed(data_dir) -> None:
    """One demo deal, so pages have data to show, or to keep from strangers."""
    load_demo(make_settings(data_dir), [(datetime.now(UTC) - timedelta(hours=1), {
        "Action": "Create", "Entity": "Deals", "SecondaryEntityId": None, "AccountId": 31,
        "ActionUserId": 10, "WebhookId": 5110, "WebhookCreatorId": 10, "Old": None,
        "New": {"Id": 100, "Title": RECORD_NAME}})])


@pytest.fixture(scope="module")
def provider():
    require_chromium()  # before starting anything
    idp = OidcProvider().start()
    for email, name in ((ADMIN, "Ana"), (VIEWER, "Vera"), (STRANGER, "Eve")):
        idp.add_user(email, name=name)
    try:
        yield idp
    finally:
        idp.stop()


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(user_key=USER_KEY, seed=9, rate_limit=0) as sb:
        sb.subscribe_all(CALLBACK, "k" * 32, pairs=(("Deals", "Create"),))
        yield sb


@pytest.fixture(scope="module")
def signed(tmp_path_factory, provider, sandbox):
    """The dashboard with sign-in set up: admins and viewers from the allow-lists."""
    tmp = tmp_path_factory.mktemp("signed")
    seed(tmp / "data")
    secrets_file = tmp / "secrets.toml"
    dashboard = StreamlitProcess({
        "PLOOMES_DATA_DIR": str(tmp / "data"),
        "PLOOMES_RECEIVER_URL": "http://127.0.0.1:9",  # no receiver: not needed here
        "PLOOMES_API_URL": sandbox.url,
        "PLOOMES_USER_KEY": USER_KEY,
        "PLOOMES_CALLBACK_URL": CALLBACK,
        "PLOOMES_DASHBOARD_ADMINS": ADMIN,
        "PLOOMES_DASHBOARD_VIEWERS": "@empresa.com.br",
    }, tmp, extra_args=("--secrets.files", str(secrets_file)))
    auth_secrets(secrets_file, dashboard.url, provider)
    try:
        yield dashboard.start()
    finally:
        dashboard.stop()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The dashboard as shipped: on 127.0.0.1, no sign-in set up."""
    tmp = tmp_path_factory.mktemp("local")
    seed(tmp / "data")
    dashboard = StreamlitProcess({"PLOOMES_DATA_DIR": str(tmp / "data"),
                                  "PLOOMES_RECEIVER_URL": "http://127.0.0.1:9"}, tmp,
                                 extra_args=("--secrets.files", str(tmp / "none.toml")))
    try:
        yield dashboard.start()
    finally:
        dashboard.stop()


@pytest.fixture(scope="module")
def browser(provider):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        expect.set_options(timeout=15_000)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser, base_url: str, **options) -> Page:
    """A fresh browser context (no cookie: nobody signed in) and its tab."""
    context = browser.new_context(viewport=VIEWPORT, base_url=base_url, **options)
    context.set_default_timeout(TIMEOUT_MS)
    OutsideRequests(context)  # the provider's own page links a stylesheet on a CDN
    return context.new_page()


@pytest.fixture
def open_page(browser):
    pages: list[Page] = []

    def opener(base_url: str, **options) -> Page:
        pages.append(new_page(browser, base_url, **options))
        return pages[-1]

    yield opener
    for page in pages:
        page.context.close()


def heading(page: Page, name: str):
    return page.get_by_role("heading", name=name, exact=True)


def sidebar(page: Page):
    return page.get_by_test_id("stSidebar")


def goto(page: Page, path: str, title: str) -> None:
    page.goto(path)
    expect(heading(page, title)).to_be_visible(timeout=TIMEOUT_MS)
    wait_until_idle(page)
    expect(page.get_by_test_id("stException")).to_have_count(0)


def sign_in(page: Page, provider: OidcProvider, dashboard: StreamlitProcess,
            email: str) -> None:
    """Sign in from the dashboard's sign-in page through the provider's form."""
    goto(page, "/", SIGN_IN_TITLE)
    page.get_by_role("button", name="Entrar", exact=True).click()
    page.wait_for_url(re.compile(re.escape(provider.url) + "/oauth2/authorize"))
    page.get_by_placeholder("sub").fill(email)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(re.compile(re.escape(dashboard.url) + "/"))
    wait_until_idle(page)


def sign_out(page: Page, provider: OidcProvider) -> None:
    """Sign out (sidebar, or the refusal page), and end the session at the provider too."""
    page.get_by_role("button", name="Sair").click()
    page.wait_for_url(re.compile(re.escape(provider.url) + "/oauth2/end_session"))
    page.get_by_role("button", name="End session").click()
    expect(heading(page, SIGN_IN_TITLE)).to_be_visible(timeout=TIMEOUT_MS)


def test_an_admin_signs_in_changes_a_subscription_sees_it_audited_and_signs_out(
        open_page, provider, signed, sandbox):
    page = open_page(signed.url)
    goto(page, "/webhooks", SIGN_IN_TITLE)  # no page before signing in
    expect(page.get_by_test_id("stDataFrame")).to_have_count(0)
    expect(sidebar(page).get_by_role("link")).to_have_count(0)

    sign_in(page, provider, signed, ADMIN)
    expect(heading(page, "Visão geral")).to_be_visible()
    expect(sidebar(page)).to_contain_text(on_screen(f"Conectado como {ADMIN} · administrador"))
    expect(sidebar(page).get_by_role("link", name="Auditoria")).to_be_visible()
    expect(page.get_by_role("button", name="Remover dados de demonstração")).to_be_visible()

    goto(page, "/webhooks", "Webhooks")
    choose(page, "Entidade", "Negócios")
    choose(page, "Ações (uma inscrição para cada)", "Ganho")
    page.get_by_role("button", name="Cadastrar").click()
    expect(page.get_by_text(on_screen(f"1 inscrição criada para {CALLBACK}."))
           ).to_be_visible()
    [win] = [w for w in sandbox.webhooks() if w["ActionId"] == ACTION_IDS["Win"]]
    assert win["EntityId"] == ENTITY_IDS["Deals"]

    goto(page, "/audit", "Trilha de auditoria")
    trail = data_grid(page, "Resultado")
    expect(grid_cell(trail, "register_subscription", "Quem")).to_have_text(ADMIN)
    expect(grid_cell(trail, "register_subscription", "Resultado")).to_have_text("concluída")
    expect(grid_cell(trail, "register_subscription", "De onde")).to_have_text("esta máquina")

    sign_out(page, provider)
    goto(page, "/audit", SIGN_IN_TITLE)  # the identity cookie is gone
    expect(page.get_by_test_id("stDataFrame")).to_have_count(0)


def test_a_viewer_sees_the_data_but_no_write_action(open_page, provider, signed, sandbox):
    page = open_page(signed.url)
    sign_in(page, provider, signed, VIEWER)
    expect(heading(page, "Visão geral")).to_be_visible()
    expect(sidebar(page)).to_contain_text(on_screen(f"Conectado como {VIEWER} · leitor"))
    expect(page.get_by_text("Há dados de demonstração")).to_be_visible()
    expect(page.get_by_role("button", name="Remover dados de demonstração")).to_have_count(0)
    expect(sidebar(page).get_by_role("link", name="Auditoria")).to_have_count(0)

    goto(page, "/webhooks", "Webhooks")
    expect(data_grid(page, "Entregas 24 h")).to_have_attribute(
        "aria-rowcount", str(len(sandbox.webhooks()) + 1))  # + the header row
    expect(page.get_by_text("é para administradores")).to_be_visible()
    for label in ("Cadastrar", "Gerar uma nova chave de validação", "Sincronizar usuários e campos",
                  "Enviar uma entrega de teste", "Excluir…"):
        expect(page.get_by_role("button", name=label)).to_have_count(0)

    page.goto("/audit")  # not a viewer's page: Streamlit runs the first one instead
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Page not found")
    expect(heading(page, "Visão geral")).to_be_visible()
    expect(heading(page, "Trilha de auditoria")).to_have_count(0)
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_have_count(0)
    before = sandbox.webhooks()
    sign_out(page, provider)
    assert sandbox.webhooks() == before


def test_a_stranger_is_refused_and_sees_no_data(open_page, provider, signed):
    page = open_page(signed.url)
    sign_in(page, provider, signed, STRANGER)
    expect(heading(page, "Sem permissão")).to_be_visible()
    expect(page.get_by_text(on_screen(f"{STRANGER} não pode usar este painel"))).to_be_visible()
    for path in ("/events", "/records?entity=Deals&record=100", "/status"):
        goto(page, path, "Sem permissão")
        expect(page.get_by_test_id("stDataFrame")).to_have_count(0)
        expect(page.get_by_text(RECORD_NAME)).to_have_count(0)
    sign_out(page, provider)


def test_a_local_dashboard_without_sign_in_refuses_what_came_through_a_proxy(open_page,
                                                                             local):
    page = open_page(local.url)
    goto(page, "/", "Visão geral")  # this machine's own browser
    expect(sidebar(page)).to_contain_text("Esta máquina, sem login · administrador")

    proxied = open_page(local.url, extra_http_headers={"X-Forwarded-For": "203.0.113.9"})
    goto(proxied, "/", "O login não está configurado")
    goto(proxied, "/records?entity=Deals&record=100", "O login não está configurado")
    expect(proxied.get_by_text(RECORD_NAME)).to_have_count(0)
    expect(proxied.get_by_test_id("stDataFrame")).to_have_count(0)
