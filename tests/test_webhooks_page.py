"""The Webhooks page through Streamlit's AppTest, against a running Ploomes sandbox."""

from __future__ import annotations

import pytest
from conftest import ROOT, free_port, query
from rendered import rendered_all
from streamlit.testing.v1 import AppTest

from ploomes.demo.sandbox import Sandbox
from ploomes.model.vocabulary import ACTION_IDS, ENTITY_IDS

PAGE = str(ROOT / "views" / "webhooks.py")
USER_KEY = "page-test-user-key-0123456789"
RECEIVER_KEY = "page-receiver-key-0123456789abcdef"
CALLBACK = "https://hooks.example.com/ploomes/webhook"
TIMEOUT = 30


@pytest.fixture
def sandbox():
    with Sandbox(user_key=USER_KEY, seed=5, rate_limit=0) as sb:
        yield sb


@pytest.fixture
def page_env(monkeypatch, tmp_path, sandbox):
    """Point the page at the sandbox and a fresh data dir."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("PLOOMES_API_URL", sandbox.url)
    monkeypatch.setenv("PLOOMES_USER_KEY", USER_KEY)
    monkeypatch.setenv("PLOOMES_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PLOOMES_CALLBACK_URL", CALLBACK)
    monkeypatch.setenv("PLOOMES_VALIDATION_KEYS", RECEIVER_KEY)
    return sandbox


def run_page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> str:
    return rendered_all(elements)


def subscriptions(at: AppTest):
    """Return the subscription table shown on the page."""
    return next(d.value for d in at.dataframe if "Deliveries 24 h" in d.value.columns)


def coverage(at: AppTest):
    """Return the coverage grid shown on the page."""
    return next(d.value for d in at.dataframe if d.value.index.name == "Entidade")


def register(at: AppTest, entity: str, actions: list[str], url: str | None = None) -> AppTest:
    at.selectbox(key="register_entity").set_value(ENTITY_IDS[entity])
    at.multiselect(key="register_actions").set_value(
        [ACTION_IDS[a] for a in actions])
    if url is not None:
        at.text_input(key="register_callback_url").set_value(url)
    at.button(key="register_submit").click().run()
    assert not at.exception, at.exception
    return at


def test_lists_subscriptions_with_names(page_env):
    sandbox = page_env
    made = sandbox.subscribe_all(CALLBACK, RECEIVER_KEY,
                                 pairs=(("Deals", "Win"), ("Contacts", "Update")))
    at = run_page()
    table = subscriptions(at)
    assert list(table["Id"]) == [w["Id"] for w in made]
    assert list(table["Entity"]) == ["Negócios", "Clientes"]  # as Ploomes names them
    assert list(table["Action"]) == ["Ganho", "Alteração"]
    assert set(table["Callback URL"]) == {CALLBACK}
    assert list(table["Deliveries 24 h"]) == [0, 0]
    assert set(table["Key accepted here"]) == {"sim"}
    # The page synced the directory on its first run, so the creator has a name.
    assert set(table["Creator"]) == {sandbox.sim.users[0]["Name"]}
    assert "•" in table["Validation key"][0] and RECEIVER_KEY not in table.to_string()
    grid = coverage(at)
    assert grid.loc["Negócios", "Ganho"] == "✓" and grid.loc["Clientes", "Alteração"] == "✓"
    assert grid.loc["Negócios", "Criação"] == ""
    assert USER_KEY not in texts(at.markdown) + texts(at.caption) + texts(at.error)


def test_registers_through_the_form(page_env):
    sandbox = page_env
    at = run_page()
    assert at.text_input(key="register_callback_url").value == CALLBACK
    register(at, "Deals", ["Create", "Win"])
    made = sorted(sandbox.webhooks(), key=lambda w: w["ActionId"])
    assert [(w["EntityId"], w["ActionId"], w["CallbackUrl"], w["ValidationKey"])
            for w in made] == [(2, 1, CALLBACK, RECEIVER_KEY), (2, 4, CALLBACK, RECEIVER_KEY)]
    assert "2 inscrições criadas" in texts(at.success)
    assert len(subscriptions(at)) == 2


def test_refuses_plain_http_and_duplicates(page_env):
    sandbox = page_env
    sandbox.subscribe_all(CALLBACK, RECEIVER_KEY, pairs=(("Deals", "Win"),))
    at = run_page()
    register(at, "Deals", ["Lose"], url="http://example.com/hook")
    assert "deve usar https://" in texts(at.error)
    assert len(sandbox.webhooks()) == 1

    at = run_page()
    register(at, "Deals", ["Win", "Lose"])
    errors = texts(at.error)
    assert "já tem inscrição" in errors and "Negócios Ganho" in errors
    assert "Nada foi criado" in errors
    assert len(sandbox.webhooks()) == 1

    at = run_page()
    register(at, "Deals", [])
    assert "escolha ao menos uma ação" in texts(at.error)


def test_generate_key_is_stored_and_used(page_env, tmp_path):
    sandbox = page_env
    at = run_page()
    at.button(key="generate_key").click().run()
    assert "guardada" in texts(at.success)
    register(at, "Contacts", ["Create"])
    [hook] = sandbox.webhooks()
    stored = (tmp_path / "data" / "keys" / "validation-keys.txt").read_text().split()
    assert hook["ValidationKey"] in stored and hook["ValidationKey"] != RECEIVER_KEY


def test_deletes_only_after_confirmation(page_env):
    sandbox = page_env
    made = sandbox.subscribe_all(CALLBACK, RECEIVER_KEY,
                                 pairs=(("Deals", "Win"), ("Deals", "Lose")))
    at = run_page()
    at.selectbox(key="manage_subscription").set_value(made[1]["Id"])
    at.button(key="delete_start").click().run()
    assert "Excluir a inscrição" in texts(at.warning)
    assert len(sandbox.webhooks()) == 2  # nothing yet

    at.button(key="delete_cancel").click().run()
    assert len(sandbox.webhooks()) == 2
    assert not any("Excluir a inscrição" in w.value for w in at.warning)

    at.button(key="delete_start").click().run()
    at.button(key="delete_confirm").click().run()
    assert not at.exception
    assert [w["Id"] for w in sandbox.webhooks()] == [made[0]["Id"]]
    assert f"Inscrição {made[1]['Id']}" in texts(at.success)
    assert list(subscriptions(at)["Id"]) == [made[0]["Id"]]


def test_test_delivery_to_a_dead_callback_is_a_message(page_env):
    dead = f"http://127.0.0.1:{free_port()}/ploomes/webhook"
    [hook] = page_env.subscribe_all(dead, RECEIVER_KEY, pairs=(("Deals", "Win"),))
    at = run_page()
    at.selectbox(key="manage_subscription").set_value(hook["Id"])
    at.button(key="test_delivery").click().run()
    assert not at.exception, at.exception
    errors = texts(at.error)
    assert "não pôde ser enviada" in errors and "receptor está rodando" in errors
    assert RECEIVER_KEY not in errors


def test_api_errors_are_messages_not_tracebacks(page_env, monkeypatch):
    monkeypatch.setenv("PLOOMES_USER_KEY", "wrong-user-key-0123456789")
    at = run_page()
    errors = texts(at.error)
    assert "Invalid or missing User-Key" in errors and "PLOOMES_USER_KEY" in errors
    assert "wrong-user-key-0123456789" not in errors


def test_unreachable_api_is_a_message(page_env, monkeypatch):
    monkeypatch.setenv("PLOOMES_API_URL", f"http://127.0.0.1:{free_port()}")
    at = run_page()
    errors = texts(at.error)
    assert "cannot reach Ploomes" in errors and "PLOOMES_API_URL" in errors
    assert USER_KEY not in errors


def test_without_user_key_shows_how_to_set_one(page_env, monkeypatch):
    if (ROOT / ".streamlit" / "secrets.toml").exists():
        pytest.skip("a developer secrets.toml may hold a User-Key")
    monkeypatch.delenv("PLOOMES_USER_KEY")
    at = run_page()
    shown = texts(at.markdown) + texts(at.code) + texts(at.warning)
    assert "PLOOMES_USER_KEY" in shown and ".streamlit/secrets.toml" in shown
    assert "python -m ploomes sandbox --port 8765" in shown
    assert ("PLOOMES_API_URL=http://127.0.0.1:8765 PLOOMES_USER_KEY=sandbox-key "
            "streamlit run dashboard.py") in shown
    assert len(at.dataframe) == 0


def test_edits_a_subscription_and_the_audit_trail_says_who(page_env, tmp_path):
    sandbox = page_env
    [hook] = sandbox.subscribe_all(CALLBACK, "old-key-0123456789abcdef",
                                   pairs=(("Deals", "Win"),))
    hook_id = hook["Id"]
    at = run_page()
    at.selectbox(key="manage_subscription").set_value(hook_id)
    at.text_input(key=f"edit_callback_url_{hook_id}").set_value(CALLBACK + "/v2")
    at.radio(key=f"edit_key_{hook_id}").set_value("receiver")
    at.button(key=f"edit_submit_{hook_id}").click().run()
    assert not at.exception, at.exception
    # asked first: nothing changes in Ploomes until it is confirmed
    assert [w for w in at.warning if f"{CALLBACK}/v2" in w.value and "••••" in w.value]
    assert sandbox.webhooks()[0]["CallbackUrl"] == CALLBACK
    at.button(key="edit_confirm").click().run()
    assert not at.exception, at.exception
    [changed] = sandbox.webhooks()
    assert (changed["CallbackUrl"], changed["Active"], changed["ValidationKey"]) == (
        CALLBACK + "/v2", True, RECEIVER_KEY)

    # pause, confirmed; then re-activate, confirmed; a cancel changes nothing
    at.button(key="active_start").click().run()
    at.button(key="active_cancel").click().run()
    assert sandbox.webhooks()[0]["Active"] is True
    at.button(key="active_start").click().run()
    at.button(key="active_confirm").click().run()
    assert not at.exception, at.exception
    assert sandbox.webhooks()[0]["Active"] is False
    at.button(key="active_start").click().run()
    at.button(key="active_confirm").click().run()
    assert sandbox.webhooks()[0]["Active"] is True

    rows = query(tmp_path / "data", "SELECT actor, role, action, outcome, detail FROM audit_log "
                                    "ORDER BY id")
    assert rows == [
        ("local", "admin", "edit_subscription", "done",
         f"callback_url = {CALLBACK}/v2, validation_key = ••••{RECEIVER_KEY[-4:]}"),
        ("local", "admin", "pause_subscription", "done", "active = False"),
        ("local", "admin", "activate_subscription", "done", "active = True")]

    at.button(key=f"edit_submit_{hook_id}").click().run()  # nothing changed this time
    assert "Nada foi alterado" in texts(at.info)


def test_one_callback_url_from_the_setting(page_env, monkeypatch):
    at = run_page()  # PLOOMES_CALLBACK_URL set: the form and the coverage say that one
    assert at.text_input(key="register_callback_url").value == CALLBACK
    assert CALLBACK in texts(at.caption)
    assert "PLOOMES_CALLBACK_URL" not in texts(at.warning)

    monkeypatch.delenv("PLOOMES_CALLBACK_URL")
    at = run_page()  # unset: no made-up address, but what to set and why
    assert at.text_input(key="register_callback_url").value == ""
    explained = texts(at.warning)
    assert "PLOOMES_CALLBACK_URL" in explained and "HTTPS" in explained
    assert "127.0.0.1" not in explained and "/ploomes/webhook" in explained
