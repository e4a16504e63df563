"""Data dirs seeded through the real journal + ingest path, shared by the query tests.

Three sets: the change model's scenarios (a contact update, a deal's life, the 51 real Win
deliveries), a week of activity for the Overview, Users and Status queries and the export,
and bare event rows for per-subscription statistics.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from conftest import SHARED, make_settings, real_deliveries

from ploomes.demo.load import ingest_pending, load_demo
from ploomes.ingest.pipeline import Pipeline
from ploomes.intake.journal import KIND_REJECTED, Journal, rejected_payload
from ploomes.store import Store

# --- the change model's scenarios --------------------------------------------------------

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
CONTACT_ID = 2630362
DEAL_ID = 517000123


def seed(tmp_path: Path, deliveries, name: str = "data"):
    """Store (received_at, body) pairs through the real journal + Pipeline path."""
    settings = make_settings(tmp_path / name)
    load_demo(settings, deliveries)
    return settings


def run(settings, fn, *args, **kwargs):
    """Call fn(con, *args, **kwargs) on a read connection of the data dir."""
    with Store(settings).reader() as con:
        return fn(con, *args, **kwargs)


def label(settings, users=(), fields=()):
    """Name users (id, name) and custom fields (key, entity id, name), as a sync would."""
    with Store(settings).writer() as con:
        con.executemany("INSERT INTO users (id, name, email, suspended, synced_at) "
                        "VALUES (?, ?, NULL, false, NULL)", list(users))
        con.executemany("INSERT INTO fields (key, entity_id, name, type_id, synced_at) "
                        "VALUES (?, ?, ?, NULL, NULL)", list(fields))


def contact_update() -> dict:
    path = SHARED / "payloads" / "contact-update.json"
    if not path.exists():
        pytest.skip(f"seed payload not found at {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def plain(value):
    """Return a cell as a plain value: SQL NULL (NaN, NA) as None."""
    if isinstance(value, list | dict | tuple):
        return value
    return None if pd.isna(value) else value


def rows(df: pd.DataFrame, columns: list[str]) -> list[tuple]:
    return [tuple(plain(v) for v in r) for r in df[columns].itertuples(index=False)]


CHANGE_COLS = ["field", "old_value", "new_value", "old_known", "new_known", "kind", "summary",
               "added", "removed"]
SEED_CHANGES = [
    ("OtherProperties.contact_check", "false", "true", True, True, "changed", "False → True",
     None, None),
    ("Phones", '[{"PhoneNumber":"(11) 3842-6673","TypeId":1,"CountryId":76}]',
     '[{"PhoneNumber":"(11) 4380-7749","TypeId":1,"CountryId":76}]', True, True, "list",
     "Phones: (11) 3842-6673 → (11) 4380-7749", None, None),
    ("Tags", "[290]", "[287]", True, True, "tags", "+287 −290", "[287]", "[290]"),
    ("LegalName", '"Ploomes"', '"Ploomes Sistemas Empresariais"', True, True, "changed",
     "'Ploomes' → 'Ploomes Sistemas Empresariais'", None, None),
]


def deal_life() -> list[tuple[datetime, dict]]:
    """A deal's life: create → update → update (by user 8) → win."""
    created = {"Id": DEAL_ID, "Title": "Implantação São Jorge", "StatusId": 1, "StageId": 10,
               "Amount": 1000.0, "OwnerId": 7, "LastUpdateDate": "2026-03-02T09:00:00"}
    staged = dict(created, StageId=11, LastUpdateDate="2026-03-02T09:01:00")
    priced = dict(staged, Amount=1500.0, OtherProperties={"deal_plan": "Plano Pro"},
                  LastUpdateDate="2026-03-02T09:02:00")
    won = dict(priced, StatusId=2, LastUpdateDate="2026-03-02T09:03:00")

    def body(action, old, new, user=7):
        return {"Action": action, "Entity": "Deals", "AccountId": 1, "ActionUserId": user,
                "WebhookId": 55, "WebhookCreatorId": 7, "SecondaryEntityId": None,
                "Old": copy.deepcopy(old), "New": copy.deepcopy(new)}

    return [
        (T0, body("Create", None, created)),
        (T0 + timedelta(minutes=1), body("Update", created, staged)),
        (T0 + timedelta(minutes=2), body("Update", staged, priced, user=8)),
        (T0 + timedelta(minutes=3), body("Win", priced, won)),
    ]


def mixed_deliveries() -> list[tuple[datetime, dict]]:
    """Events 1 a contact update, 2 its repeat (a day before T0), 3–6 the deal's life."""
    contact = contact_update()
    return [(T0 - timedelta(days=1), contact),
            (T0 - timedelta(days=1) + timedelta(seconds=3), contact), *deal_life()]


def seed_real_wins(tmp_path: Path):
    """Store the 51 real Win deliveries, ten seconds apart."""
    base = datetime(2024, 3, 18, 22, 0, tzinfo=UTC)
    return seed(tmp_path, [(base + timedelta(seconds=10 * i), body)
                           for i, body in enumerate(real_deliveries())])


# --- a week of activity -----------------------------------------------------------------

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)  # a Friday, 12:00 in São Paulo
SP = ZoneInfo("America/Sao_Paulo")


def activity_body(entity, action, user, old, new, webhook=5110):
    return {"Action": action, "Entity": entity, "SecondaryEntityId": None, "AccountId": 31,
            "ActionUserId": user, "WebhookId": webhook, "WebhookCreatorId": 10,
            "Old": old, "New": new}


DEAL_OLD = {"Id": 100, "Title": "Padaria Bom Grão", "StageId": 1, "Amount": 10,
            "LastUpdateDate": "2026-11-20T11:00:00"}
DEAL_NEW = {"Id": 100, "StageId": 2, "LastUpdateDate": "2026-11-20T11:30:00"}
STAGE_MOVE = activity_body("Deals", "Update", 10, DEAL_OLD, DEAL_NEW)

ACTIVITY = [
    # 1 and 2: user 10 creates deal 100, then moves its stage (one delivered twice)
    (NOW - timedelta(hours=1), activity_body("Deals", "Create", 10, None, DEAL_OLD)),
    (NOW - timedelta(minutes=30), STAGE_MOVE),
    (NOW - timedelta(minutes=30) + timedelta(seconds=5), STAGE_MOVE),  # duplicate
    # user 20 on contact 200: Tuesday 12:00 local, then Tuesday 23:30 local (Wednesday UTC)
    (datetime(2026, 11, 17, 15, 0, tzinfo=UTC),
     activity_body("Contacts", "Create", 20, None, {"Id": 200, "Name": "Ana"})),
    (datetime(2026, 11, 18, 2, 30, tzinfo=UTC),
     activity_body("Contacts", "Update", 20, {"Id": 200, "Name": "Ana"},
                   {"Id": 200, "Name": "Ana Lima", "OtherProperties": {"contact_vip": True}})),
    # older than 7 days
    (NOW - timedelta(days=10), activity_body("Deals", "Win", 30, {"Id": 101, "StatusId": 1},
                                             {"Id": 101, "StatusId": 2})),
    (NOW - timedelta(days=20), activity_body("Tasks", "Create", None, None,
                                             {"Id": 300, "Subject": "Ligar"})),
]


def seed_activity(data_dir: Path) -> Store:
    """A data dir with ACTIVITY, one rejected delivery, two auth failures, one named user
    (10, João Araújo) and one named custom field (contact_vip, Cliente VIP)."""
    settings = make_settings(data_dir)
    assert load_demo(settings, ACTIVITY) == len(ACTIVITY)
    journal = Journal(settings.journal_dir, settings.journal_segment_bytes)
    try:
        journal.append_many([rejected_payload(400, "not JSON", b"oops", "127.0.0.1")],
                            kind=KIND_REJECTED,
                            received_ns=[int((NOW - timedelta(hours=1)).timestamp() * 1e9)])
        ingest_pending(settings, journal)
    finally:
        journal.close()
    store = Store(settings)
    with store.writer() as con:
        Pipeline().apply(con, [], auth_failures=[
            (NOW - timedelta(hours=2), "10.0.0.1", "wrong key"),
            (NOW - timedelta(days=5), "10.0.0.2", "missing key")])
        con.execute("INSERT INTO users (id, name, email, suspended, synced_at) "
                    "VALUES (10, 'João Araújo', 'joao@example.com', false, now())")
        con.execute("INSERT INTO fields (key, entity_id, name, type_id, synced_at) "
                    "VALUES ('contact_vip', 1, 'Cliente VIP', 10, now())")
    return store


# --- bare event rows ----------------------------------------------------------------------

def seed_events(store: Store, events) -> None:
    """Insert (id, received_at, webhook_id, duplicate_of, is_demo) event rows."""
    with store.writer() as con:
        con.executemany(
            "INSERT INTO events (id, received_at, action, entity, webhook_id, payload, "
            "body_sha256, is_demo, duplicate_of) VALUES (?, ?, 'Update', 'Deals', ?, '{}', "
            "'x', ?, ?)",
            [(i, at, hook, demo, dup) for i, at, hook, dup, demo in events])
