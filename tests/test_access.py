"""Who gets which page (views/access.py), through Streamlit's AppTest: no sign-in on a
loopback address only, the sign-in page, viewers without write actions, strangers refused.

The round trip through a real OpenID Connect provider is in test_sign_in.py (a browser).
"""

from __future__ import annotations

import time
import tomllib
from datetime import UTC, datetime, timedelta

import pytest
from conftest import ROOT, free_port, make_settings
from rendered import rendered, rendered_all
from streamlit import config as streamlit_config
from streamlit.testing.v1 import AppTest

from ploomes.demo.load import load_demo
from ploomes.demo.sandbox import Sandbox

DASHBOARD = str(ROOT / "dashboard.py")
ADMIN, VIEWER, STRANGER = "ana@empresa.com.br", "vera@empresa.com.br", "eve@outra.com.br"
USER_KEY = "access-user-key-0123456789abcdef"
AUTH = {"redirect_uri": "http://127.0.0.1:8501/oauth2callback", "cookie_secret": "s" * 32,
        "client_id": "dashboard", "client_secret": "secret",
        "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration"}
WRITE_BUTTONS = {"first_run_generate_key", "load_demo", "remove_demo", "generate_key",
                 "register_submit", "sync_directory", "test_delivery", "delete_start"}
# what the seeded store holds: no page may show it to someone who is not let in
RECORD_NAME = "Padaria Pão Quente"


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    path = tmp_path / "data"
    monkeypatch.setenv("PLOOMES_DATA_DIR", str(path))
    monkeypatch.setenv("PLOOMES_RECEIVER_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("PLOOMES_DASHBOARD_ADMINS", ADMIN)
    monkeypatch.setenv("PLOOMES_DASHBOARD_VIEWERS", "@empresa.com.br")
    return path


@pytest.fixture
def seeded(data_dir):
    now = datetime.now(UTC)
    deal = {"Id": 100, "Title": RECORD_NAME, "StageId": 1}
    load_demo(make_settings(data_dir), [(now - timedelta(hours=1), {
        "Action": "Create", "Entity": "Deals", "SecondaryEntityId": None, "AccountId": 31,
        "ActionUserId": 10, "WebhookId": 5110, "WebhookCreatorId": 10, "Old": None,
        "New": deal})])
    return data_dir


@pytest.fixture
def address():
    """Set the dashboard's `server.address` for a test, as `--server.address` would."""
    before = streamlit_config.get_option("server.address")

    def set_address(value: str | None) -> None:
        streamlit_config.set_option("server.address", value)

    yield set_address
    streamlit_config.set_option("server.address", before)


def dashboard(user: dict | None = None, auth: dict | None = AUTH) -> AppTest:
    at = AppTest.from_file(DASHBOARD, default_timeout=30)
    if auth is not None:
        at.secrets["auth"] = auth
    if user is not None:
        at.user = user
    return at.run()


def signed_in(email: str, **claims) -> dict:
    return {"is_logged_in": True, "email": email, "email_verified": True,
            "iat": int(time.time()), **claims}


def shown(at: AppTest) -> str:
    """Every text on the page (main area and sidebar), as a reader sees it."""
    parts = [e for kind in ("title", "subheader", "markdown", "caption", "code", "info",
                            "warning", "error", "success", "metric")
             for e in getattr(at, kind)]
    return "\n".join(rendered(getattr(e, "label", "") or "") + " " + rendered(e.value)
                     for e in parts)


def buttons(at: AppTest) -> set[str]:
    return {b.key for b in at.button if b.key} | {b.key for b in at.get("form_submit_button")}


def test_a_fresh_install_listens_on_this_machine_only():
    settings = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert settings["server"]["address"] == "127.0.0.1"


def test_on_loopback_without_sign_in_the_machines_user_is_an_admin(seeded):
    at = dashboard(auth=None)
    assert not at.exception
    assert at.title[0].value == "Visão geral"
    assert "Esta máquina, sem login · administrador" in rendered_all(at.sidebar.caption)
    assert "remove_demo" in buttons(at)
    at.switch_page("views/audit.py").run()
    assert not at.exception and at.title[0].value == "Trilha de auditoria"


@pytest.mark.parametrize("where", ["0.0.0.0", "::", "192.0.2.10", "monitor.empresa.com.br",
                                   None])
def test_another_address_without_sign_in_shows_only_how_to_set_it_up(seeded, address, where):
    address(where)
    at = dashboard(auth=None)
    assert not at.exception
    assert [t.value for t in at.title] == ["O login não está configurado"]
    assert "[auth]" in shown(at) and "server_metadata_url" in shown(at)
    assert not at.metric and not at.dataframe and not buttons(at)
    assert RECORD_NAME not in shown(at)
    for page in ("views/events.py", "views/status.py", "views/webhooks.py"):
        at.switch_page(page).run()
        assert [t.value for t in at.title] == ["O login não está configurado"], page
        assert not at.dataframe and RECORD_NAME not in shown(at)


@pytest.mark.parametrize("where", ["localhost", "::1", "127.0.0.1"])
def test_every_loopback_address_counts_as_this_machine(data_dir, address, where):
    address(where)
    at = dashboard(auth=None)
    assert at.title[0].value == "Boas-vindas ao monitor de webhooks do Ploomes"


def test_with_sign_in_set_up_nobody_sees_data_before_signing_in(seeded):
    at = dashboard({"is_logged_in": False})
    assert not at.exception
    assert [t.value for t in at.title] == ["Monitor de webhooks do Ploomes"]
    assert [b.label for b in at.button] == ["Entrar"]
    assert not at.metric and not at.dataframe and RECORD_NAME not in shown(at)
    at.switch_page("views/records.py").run()
    assert [t.value for t in at.title] == ["Monitor de webhooks do Ploomes"]
    assert not at.dataframe and RECORD_NAME not in shown(at)


def test_each_named_provider_gets_its_sign_in_button(data_dir):
    provider = {k: AUTH[k] for k in ("client_id", "client_secret", "server_metadata_url")}
    at = dashboard({"is_logged_in": False},
                   auth={"redirect_uri": AUTH["redirect_uri"], "cookie_secret": "s" * 32,
                         "google": provider, "microsoft": provider})
    assert [b.label for b in at.button] == ["Entrar com google", "Entrar com microsoft"]


def test_a_viewer_reads_everything_but_gets_no_write_action(seeded):
    at = dashboard(signed_in(VIEWER))
    assert not at.exception
    assert at.title[0].value == "Visão geral"
    assert f"Conectado como {VIEWER} · leitor" in rendered_all(at.sidebar.caption)
    assert "Há dados de demonstração" in shown(at)  # the banner, without its button
    assert buttons(at) == {"sign_out"}
    at.switch_page("views/records.py").run()
    assert not at.exception and at.title[0].value == "Registros"
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("views/audit.py")  # not in a viewer's navigation
    # and the page itself refuses a viewer who reaches it anyway
    page = AppTest.from_file(str(ROOT / "views" / "audit.py"), default_timeout=30)
    page.secrets["auth"] = AUTH
    page.user = signed_in(VIEWER)
    page.run()
    assert "Esta página é para administradores" in rendered_all(page.error) and not page.dataframe


def test_a_viewer_gets_no_key_or_demo_button_on_the_first_screen(data_dir):
    at = dashboard(signed_in(VIEWER))
    assert at.title[0].value == "Boas-vindas ao monitor de webhooks do Ploomes"
    assert "Um administrador pode gerar uma aqui" in shown(at)
    assert buttons(at) == {"sign_out"}


def test_a_viewer_sees_subscriptions_but_cannot_change_them(data_dir, monkeypatch):
    with Sandbox(user_key=USER_KEY, seed=4, rate_limit=0) as sandbox:
        monkeypatch.setenv("PLOOMES_API_URL", sandbox.url)
        monkeypatch.setenv("PLOOMES_USER_KEY", USER_KEY)
        made = sandbox.subscribe_all("https://hooks.empresa.com.br/ploomes/webhook",
                                     "k" * 32, pairs=(("Deals", "Win"),))
        at = dashboard(signed_in(VIEWER))
        at.switch_page("views/webhooks.py").run()
        assert not at.exception
        table = next(d.value for d in at.dataframe if "Deliveries 24 h" in d.value.columns)
        assert list(table["Id"]) == [made[0]["Id"]]
        assert not buttons(at) & WRITE_BUTTONS
        assert "é para administradores" in rendered_all(at.info)

        admin = dashboard(signed_in(ADMIN))
        admin.switch_page("views/webhooks.py").run()
        assert {"generate_key", "register_submit", "test_delivery",
                "delete_start"} <= buttons(admin)
        assert sandbox.webhooks() == made


def test_a_stranger_is_refused(seeded):
    at = dashboard(signed_in(STRANGER))
    assert [t.value for t in at.title] == ["Sem permissão"]
    assert f"{STRANGER} não pode usar este painel" in rendered_all(at.error)
    assert buttons(at) == {"sign_out"}
    assert not at.metric and not at.dataframe and RECORD_NAME not in shown(at)


def test_an_address_the_provider_has_not_verified_is_refused(seeded):
    at = dashboard(signed_in(ADMIN, email_verified=False))
    assert [t.value for t in at.title] == ["Sem permissão"]
    assert "não está verificado" in rendered_all(at.error)


def test_entra_without_an_email_claim_uses_the_username(seeded):
    user = signed_in(ADMIN)
    del user["email"]
    at = dashboard({**user, "preferred_username": ADMIN})
    assert at.title[0].value == "Visão geral"
    at = dashboard({**user, "name": "Ana"})
    assert "não trouxe endereço de e-mail" in rendered_all(at.error)


def test_an_old_sign_in_must_be_renewed(seeded):
    at = dashboard(signed_in(ADMIN, iat=int(time.time()) - 13 * 3600))
    assert [b.label for b in at.button] == ["Entrar"]
    assert "tem mais de 12 horas" in shown(at) and not at.metric


def test_with_empty_allow_lists_nobody_gets_in(seeded, monkeypatch):
    monkeypatch.delenv("PLOOMES_DASHBOARD_ADMINS")
    monkeypatch.delenv("PLOOMES_DASHBOARD_VIEWERS")
    at = dashboard(signed_in(ADMIN))
    assert [t.value for t in at.title] == ["Sem permissão"]
    assert "defina PLOOMES_DASHBOARD_ADMINS" in rendered_all(at.error)


def test_signing_out_leaves_only_the_sign_in_page(seeded):
    at = dashboard(signed_in(ADMIN))
    assert at.title[0].value == "Visão geral"
    at.button(key="sign_out").click().run()
    at.run()
    assert [t.value for t in at.title] == ["Monitor de webhooks do Ploomes"]
    assert not at.metric


def test_an_admin_sees_who_did_what_on_the_audit_page(data_dir):
    at = dashboard(signed_in(ADMIN))
    at.button(key="first_run_generate_key").click().run()
    assert not at.exception
    at.switch_page("views/audit.py").run()
    assert not at.exception
    [table] = [d.value for d in at.dataframe]
    row = table.iloc[0]
    assert (row["Who"], row["Role"], row["From"], row["Action"], row["Outcome"]) == (
        ADMIN, "administrador", "esta máquina", "generate_key", "concluída")
    assert row["Detail"].startswith("key ••••")
