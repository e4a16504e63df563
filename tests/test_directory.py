"""ploomes.crm.directory: users and custom fields synced from the sandbox into a real store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from conftest import make_settings

from ploomes.crm import directory
from ploomes.crm.api import PloomesClient
from ploomes.demo.sandbox import Sandbox
from ploomes.queries import status as qstatus
from ploomes.queries import users as qusers
from ploomes.store import Store

USER_KEY = "directory-test-user-key-0123"
NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


@pytest.fixture
def sandbox():
    with Sandbox(user_key=USER_KEY, seed=11, rate_limit=0) as sb:
        yield sb


@pytest.fixture
def client(sandbox):
    with PloomesClient(sandbox.url, USER_KEY, retry_total=0) as c:
        yield c


@pytest.fixture
def store(tmp_path):
    return Store(make_settings(tmp_path / "data"))


def rows(store, sql):
    with store.reader() as con:
        return con.execute(sql).fetchall()


# -- sync -------------------------------------------------------------------------------

def test_sync_fills_users_and_custom_fields_with_accents(sandbox, client, store):
    result = directory.sync_directory(client, store, now=NOW)
    users = dict(rows(store, "SELECT id, name FROM users"))
    assert result.users == len(users) == len(sandbox.sim.users)
    assert users == {u["Id"]: u["Name"] for u in sandbox.sim.users}
    # the sandbox's account has people of its own, apart from the demo data's
    assert "Rafael Teixeira" in users.values() and "Integração Site" in users.values()
    assert "João Araújo" not in users.values()
    assert {a for (a,) in rows(store, "SELECT DISTINCT account_id FROM users")} == {
        result.account_id} == {sandbox.sim.account_id}
    fields = {k: (e, n, t) for k, e, n, t in
              rows(store, "SELECT key, entity_id, name, type_id FROM fields")}
    assert result.fields == len(fields)
    # only custom (Dynamic) fields: the system ones stay out
    assert fields == {f["Key"]: (f["EntityId"], f["Name"], f["TypeId"])
                      for f in sandbox.sim.fields}
    assert fields["contact_employees"][1] == "Nº de funcionários"
    with store.reader() as con:
        assert qstatus.last_synced_at(con) == NOW
        own = sandbox.sim.account_id
        assert qusers.user_names(con, own)[sandbox.sim.users[1]["Id"]] == "Juliana Castro"
        assert qusers.field_names(con, own)["contact_check"] == "Cliente verificado"
        # another account's data is never labelled with them
        assert qusers.user_names(con, own + 1) == {}
        assert "contact_check" not in qusers.field_names(con, own + 1)


def test_second_sync_updates_instead_of_duplicating(sandbox, client, store):
    directory.sync_directory(client, store, now=NOW)
    sandbox.sim.users[0]["Name"] = "João Araújo Júnior"
    sandbox.sim.users[0]["Suspended"] = True
    sandbox.sim.fields[0]["Name"] = "Cliente verificado?"
    later = NOW + timedelta(hours=1)
    directory.sync_directory(client, store, now=later)
    assert rows(store, "SELECT count(*), count(DISTINCT id) FROM users") == [
        (len(sandbox.sim.users), len(sandbox.sim.users))]
    assert rows(store, "SELECT count(*) FROM fields") == [(len(sandbox.sim.fields),)]
    user_id = sandbox.sim.users[0]["Id"]
    assert rows(store, f"SELECT name, suspended FROM users WHERE id = {user_id}") == [
        ("João Araújo Júnior", True)]
    assert rows(store, "SELECT name FROM fields WHERE key = 'contact_check'") == [
        ("Cliente verificado?",)]
    assert rows(store, "SELECT DISTINCT synced_at FROM users") == [(later,)]


def test_sync_due():
    assert directory.sync_due(None, 30, NOW)
    assert not directory.sync_due(NOW - timedelta(minutes=29), 30, NOW)
    assert directory.sync_due(NOW - timedelta(minutes=30), 30, NOW)
