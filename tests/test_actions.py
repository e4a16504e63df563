"""The write actions below the pages (ploomes.actions): roles from the allow-lists, the
refusal of anyone but an admin, and the audit trail, called directly, without Streamlit."""

from __future__ import annotations

import threading

import pytest
from conftest import TEST_KEY, free_port, make_settings, query

from ploomes.actions import (
    Actor,
    AuditUnavailable,
    NotAllowed,
    Role,
    role_of,
)
from ploomes.actions import demo_data as demo_actions
from ploomes.actions import keys as key_actions
from ploomes.actions import subscriptions as subscription_actions
from ploomes.config import ConfigError, load_settings
from ploomes.crm.api import PloomesClient
from ploomes.crm.subscriptions import Catalog, load_catalog
from ploomes.demo.sandbox import Sandbox
from ploomes.ingest.rebuild import rebuild
from ploomes.intake.keys import key_file, stored_keys
from ploomes.model.vocabulary import ACTION_IDS, ENTITY_IDS
from ploomes.queries.audit import audit_entries
from ploomes.store import SCHEMA_VERSION, Store, schema_version

USER_KEY = "actions-user-key-0123456789abcdef"
CALLBACK = "https://hooks.empresa.com.br/ploomes/webhook"
ADMIN = Actor("Ana@Empresa.com.br", client_ip="203.0.113.7")
VIEWER = Actor("vera@empresa.com.br", forwarded_for="198.51.100.4")
STRANGER = Actor("eve@outra.com.br")
AUDIT_SQL = ("SELECT actor, role, client_ip, forwarded_for, action, target, outcome, detail "
             "FROM audit_log ORDER BY id")


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path / "data", dashboard_admins=("ana@empresa.com.br",),
                         dashboard_viewers=("@empresa.com.br",))


@pytest.fixture
def store(settings):
    return Store(settings)


@pytest.fixture
def sandbox():
    with Sandbox(user_key=USER_KEY, seed=3, rate_limit=0) as sb:
        yield sb


@pytest.fixture
def client(sandbox):
    with PloomesClient(sandbox.url, USER_KEY, retry_total=0) as api:
        yield api


def audit(settings) -> list[tuple]:
    return query(settings.data_dir, AUDIT_SQL)


def test_roles_come_from_the_allow_lists(settings):
    assert role_of(ADMIN, settings) is Role.ADMIN  # addresses match in any case
    assert role_of(VIEWER, settings) is Role.VIEWER  # by its domain
    assert role_of(Actor("ana@empresa.com.br.evil.example"), settings) is None
    assert role_of(Actor("x@vendas.empresa.com.br"), settings) is None  # not subdomains
    assert role_of(STRANGER, settings) is None
    assert role_of(Actor(None), settings) is Role.ADMIN  # this machine, no sign-in
    nobody = make_settings(settings.data_dir)
    assert role_of(VIEWER, nobody) is None and role_of(ADMIN, nobody) is None


def test_allow_lists_are_read_from_the_environment_and_secrets(tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('PLOOMES_DASHBOARD_ADMINS = ["Ana@Empresa.com.br", "bia@empresa.com.br"]\n'
                       'PLOOMES_DASHBOARD_VIEWERS = "empresa.com.br, @parceiro.com"\n'
                       '[auth]\nredirect_uri = "x"\n')
    cfg = load_settings(env={}, secrets_path=secrets)
    assert cfg.dashboard_admins == ("ana@empresa.com.br", "bia@empresa.com.br")
    assert cfg.dashboard_viewers == ("@empresa.com.br", "@parceiro.com")
    # the environment wins over secrets.toml, like every other setting
    cfg = load_settings(env={"PLOOMES_DASHBOARD_ADMINS": "caio@empresa.com.br"},
                        secrets_path=secrets)
    assert cfg.dashboard_admins == ("caio@empresa.com.br",)
    with pytest.raises(ConfigError, match="PLOOMES_DASHBOARD_VIEWERS: 'vendas' is neither"):
        load_settings(env={"PLOOMES_DASHBOARD_VIEWERS": "ana@empresa.com.br, vendas"},
                      secrets_path=secrets)


def test_a_viewer_or_stranger_is_refused_by_every_action_and_it_is_recorded(
        settings, store, sandbox, client):
    [hook] = sandbox.subscribe_all(CALLBACK, TEST_KEY, pairs=(("Deals", "Win"),))
    catalog = load_catalog(client)
    attempts = {
        "register_subscription": lambda who: subscription_actions.register(
            who, settings, store, client, [hook], ENTITY_IDS["Deals"], [ACTION_IDS["Lose"]],
            CALLBACK, None, catalog),
        "edit_subscription": lambda who: subscription_actions.edit(
            who, settings, store, client, hook, {"active": False}),
        "delete_subscription": lambda who: subscription_actions.delete(
            who, settings, store, client, hook),
        "test_delivery": lambda who: subscription_actions.send_test(
            who, settings, store, hook, TEST_KEY),
        "sync_directory": lambda who: subscription_actions.sync_directory(
            who, settings, store, client),
        "generate_key": lambda who: key_actions.generate(who, settings, store),
        "load_demo": lambda who: demo_actions.load(who, settings, store),
        "remove_demo": lambda who: demo_actions.remove(who, settings, store),
    }
    for who in (VIEWER, STRANGER):
        for name, attempt in attempts.items():
            with pytest.raises(NotAllowed, match=f"{who.email} não pode .*só administradores"):
                attempt(who)

    assert sandbox.webhooks() == [hook]  # nothing registered, changed or deleted
    assert not key_file(settings).exists()
    assert query(settings.data_dir, "SELECT count(*) FROM events") == [(0,)]
    assert query(settings.data_dir, "SELECT count(*) FROM users") == [(0,)]
    assert not settings.journal_dir.exists() or not any(settings.journal_dir.iterdir())
    rows = audit(settings)
    assert [(r[0], r[1], r[4], r[6]) for r in rows] == [
        (who.email, role, name, "refused")
        for who, role in ((VIEWER, "viewer"), (STRANGER, None)) for name in attempts]
    assert {r[3] for r in rows[:len(attempts)]} == {"198.51.100.4"}


def test_an_admins_actions_are_done_and_recorded(settings, store, sandbox, client):
    catalog = load_catalog(client)
    created, key = subscription_actions.register(
        ADMIN, settings, store, client, [], ENTITY_IDS["Deals"],
        [ACTION_IDS["Win"], ACTION_IDS["Lose"]], CALLBACK, None, catalog)
    assert stored_keys(settings) == [key]  # a new key, stored so the receiver accepts it
    assert {(w["ActionId"], w["ValidationKey"]) for w in sandbox.webhooks()} == {
        (ACTION_IDS["Win"], key), (ACTION_IDS["Lose"], key)}
    win = next(w for w in created if w["ActionId"] == ACTION_IDS["Win"])
    subscription_actions.edit(ADMIN, settings, store, client, win, {"active": False})
    assert next(w for w in sandbox.webhooks() if w["Id"] == win["Id"])["Active"] is False
    subscription_actions.delete(ADMIN, settings, store, client, win)
    assert [w["Id"] for w in sandbox.webhooks()] == [
        w["Id"] for w in created if w["Id"] != win["Id"]]
    second = key_actions.generate(ADMIN, settings, store)
    assert stored_keys(settings) == [key, second]

    rows = audit(settings)
    assert [(r[0], r[1], r[2], r[4], r[6]) for r in rows] == [
        ("ana@empresa.com.br", "admin", "203.0.113.7", action, "done")
        for action in ("register_subscription", "edit_subscription", "delete_subscription",
                       "generate_key")]
    assert rows[0][5] == f"Deals Win, Lose → {CALLBACK}"
    assert rows[0][7].startswith(f"created {created[0]['Id']}, {created[1]['Id']} with key ••••")
    assert rows[1][7] == "active = False" and rows[2][5].startswith(f"subscription {win['Id']}")
    shown = repr(rows)
    assert key not in shown and second not in shown  # keys only masked


def test_a_failing_action_is_recorded_with_its_error(settings, store, client):
    with pytest.raises(ValueError, match="https"):
        subscription_actions.register(ADMIN, settings, store, client, [], 2, [1],
                                      "http://hooks.example.com/hook", TEST_KEY, Catalog({}, {}))
    dead = {"Id": 9, "EntityId": 2, "ActionId": 1,
            "CallbackUrl": f"http://127.0.0.1:{free_port()}/ploomes/webhook"}
    with pytest.raises(ConnectionError):
        subscription_actions.send_test(ADMIN, settings, store, dead, TEST_KEY)
    rows = audit(settings)
    assert [(r[4], r[6]) for r in rows] == [("register_subscription", "failed"),
                                          ("test_delivery", "failed")]
    assert "deve usar https" in rows[0][7] and "cannot reach" in rows[1][7]
    assert TEST_KEY not in repr(rows)


def test_nothing_is_done_when_the_audit_trail_cannot_be_written(settings, sandbox, client):
    holder = Store(settings)
    impatient = Store(settings, busy_timeout=0.3)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.writer():
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(10)
        with pytest.raises(AuditUnavailable, match="nada foi feito"):
            subscription_actions.register(ADMIN, settings, impatient, client, [], 2, [1],
                                          CALLBACK, TEST_KEY, Catalog({}, {}))
        with pytest.raises(AuditUnavailable):
            key_actions.generate(ADMIN, settings, impatient)
    finally:
        release.set()
        thread.join()
    assert sandbox.webhooks() == []
    assert not key_file(settings).exists()
    assert audit(settings) == []


def test_the_audit_trail_survives_a_rebuild(settings, store, client):
    key_actions.generate(ADMIN, settings, store)
    with pytest.raises(NotAllowed):
        key_actions.generate(VIEWER, settings, store)
    before = audit(settings)
    rebuild(settings)
    assert audit(settings) == before and len(before) == 2
    key_actions.generate(ADMIN, settings, store)  # ids go on after the kept ones
    with store.reader() as con:
        assert list(audit_entries(con)["id"]) == [3, 2, 1]


def test_a_v4_store_gets_an_empty_audit_trail(settings):
    Store(settings, schema_target=4).ensure_ready()
    with Store(settings, schema_target=4).reader() as con:
        assert schema_version(con) == 4
        assert audit_entries(con).empty  # the Audit page before the upgrade
    with Store(settings).reader() as con:
        assert schema_version(con) == SCHEMA_VERSION > 4
        assert audit_entries(con).empty
    key_actions.generate(ADMIN, settings, Store(settings))
    assert [r[4] for r in audit(settings)] == ["generate_key"]
