"""Tests for ploomes.generator: the one generator of realistic deliveries."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ploomes.demo.generator import (
    Change,
    Simulation,
    delivery_body,
    demo_deliveries,
    local_stamp,
)
from ploomes.model.diff import change_fingerprint, diff_record
from ploomes.model.vocabulary import ACTION_IDS, ENTITY_IDS

SHARED = Path(__file__).resolve().parent / "data"  # the shared examples, copied
SAO_PAULO = ZoneInfo("America/Sao_Paulo")
END = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,3})?$")
PHONE = re.compile(r"^\(\d\d\) (9\d{4}|[2-5]\d{3})-\d{4}$")


def body_of(change: Change, **kwargs) -> dict:
    return delivery_body(
        change, account_id=3100210, webhook_id=31005120, webhook_creator_id=31007700, **kwargs
    )


def as_json(changes: list[Change]) -> str:
    return json.dumps(
        [(c.at.isoformat(), body_of(c)) for c in changes], ensure_ascii=False, sort_keys=True
    )


@pytest.fixture(scope="module")
def run() -> list[Change]:
    return list(Simulation(seed=11).steps(6000))


@pytest.fixture(scope="module")
def demo() -> list[tuple[datetime, dict]]:
    return demo_deliveries(seed=7, days=30, end=END)


def record_id(body: dict) -> int:
    return (body["New"] or body["Old"])["Id"]


def fingerprint(body: dict) -> str:
    return change_fingerprint(
        body["Entity"],
        record_id(body),
        body["Action"],
        body["ActionUserId"],
        body["Old"],
        body["New"],
    )


def gaps(deliveries: list[tuple[datetime, dict]]) -> list[tuple[str, int, list[str]]]:
    """Find deliveries whose Old disagrees with the last New seen for the record."""
    seen: set[str] = set()
    last_new: dict[tuple[str, int], dict] = {}
    found = []
    for _, body in deliveries:
        key = fingerprint(body)
        if key in seen:  # duplicates are the receiver's dedupe's business, not gaps
            continue
        seen.add(key)
        record = (body["Entity"], record_id(body))
        if body["Old"] is not None and record in last_new:
            rows = diff_record("Update", last_new[record], body["Old"])
            if rows:
                found.append((*record, [row.field for row in rows]))
        if body["New"] is not None:
            last_new[record] = body["New"]
    return found


# --- constants and reference data ------------------------------------------------------


def test_ids_match_the_documented_tables():
    assert ENTITY_IDS == {"Contacts": 1, "Deals": 2, "Orders": 4, "Products": 10, "Tasks": 12}
    assert ACTION_IDS == {"Create": 1, "Update": 2, "Delete": 3, "Win": 4, "Lose": 5, "Reopen": 6}


def test_reference_data_is_brazilian_and_consistent():
    sim = Simulation(seed=1)
    assert sim.account_id == 3100210
    assert 5 <= len(sim.users) <= 8
    assert all(set(u) == {"Id", "Name", "Email", "Suspended"} for u in sim.users)
    assert any(ch in "ãáâçéêíóôõú" for u in sim.users for ch in u["Name"])
    assert all(u["Email"].isascii() and "@" in u["Email"] for u in sim.users)
    assert len({u["Id"] for u in sim.users}) == len(sim.users)
    keys = {f["Key"] for f in sim.fields}
    assert "contact_check" in keys and any(re.fullmatch(r"deal_[0-9A-F-]{36}", k) for k in keys)
    assert {f["EntityId"] for f in sim.fields} == {1, 2, 12}
    stage_pipelines = {s["PipelineId"] for s in sim.stages}
    assert stage_pipelines == {p["Id"] for p in sim.pipelines}
    assert sim.tags and all("Name" in t for t in sim.tags)


# --- determinism -------------------------------------------------------------------------


def test_same_seed_same_changes():
    first = as_json(list(Simulation(seed=5).steps(800)))
    second = as_json(list(Simulation(seed=5).steps(800)))
    assert first == second
    assert first != as_json(list(Simulation(seed=6).steps(800)))


def test_demo_is_deterministic_for_seed_and_end(demo):
    again = demo_deliveries(seed=7, days=30, end=END)
    assert json.dumps(again, default=str) == json.dumps(demo, default=str)
    other = demo_deliveries(seed=8, days=30, end=END)
    assert json.dumps(other, default=str) != json.dumps(demo, default=str)


# --- changes -------------------------------------------------------------------------------


def test_changes_are_well_formed(run):
    previous = None
    for change in run:
        assert change.at.tzinfo is not None and change.at.utcoffset() == timedelta(0)
        assert previous is None or change.at > previous
        previous = change.at
        assert change.entity in ("Contacts", "Deals", "Tasks")
        assert change.action in ACTION_IDS
        if change.action in ("Win", "Lose", "Reopen"):
            assert change.entity == "Deals"
        if change.action == "Create":
            assert change.old is None and change.new["Id"] == change.record_id
        elif change.action == "Delete":
            assert change.new is None and change.old["Id"] == change.record_id
        else:
            assert change.old["Id"] == change.new["Id"] == change.record_id
    actions = Counter((c.entity, c.action) for c in run)
    for pair in [
        ("Contacts", "Create"),
        ("Contacts", "Update"),
        ("Contacts", "Delete"),
        ("Deals", "Win"),
        ("Deals", "Lose"),
        ("Deals", "Reopen"),
        ("Deals", "Delete"),
        ("Tasks", "Update"),
    ]:
        assert actions[pair] > 0, pair


def test_each_change_continues_the_last_snapshot(run):
    last: dict[tuple[str, int], dict | None] = {}
    for change in run:
        key = (change.entity, change.record_id)
        if change.old is not None and key in last:
            assert last[key] == change.old, change
        last[key] = change.new
    assert last  # and the simulation itself never misses a change


def test_every_update_changes_something_real(run):
    for change in run:
        if change.action == "Create" or change.action == "Delete":
            continue
        rows = diff_record(change.action, change.old, change.new)
        assert any(not row.bookkeeping for row in rows), change
        stamps = {row.field for row in rows if row.bookkeeping}
        assert "LastUpdateDate" in stamps


def test_deal_outcomes(run):
    for change in run:
        if change.entity != "Deals" or change.action in ("Create", "Delete", "Update"):
            continue
        old, new = change.old, change.new
        if change.action == "Win":
            assert (old["StatusId"], new["StatusId"]) == (1, 2)
            assert new["LastStageId"] == old["StageId"] and STAMP.match(new["FinishDate"])
        elif change.action == "Lose":
            assert (old["StatusId"], new["StatusId"]) == (1, 3)
            assert new["LossReasonId"] is not None
        else:
            assert old["StatusId"] in (2, 3) and new["StatusId"] == 1
            assert new["FinishDate"] is None


def test_records_look_like_ploomes(run):
    for change in run:
        record = change.new or change.old
        assert STAMP.match(record["LastUpdateDate"]) and STAMP.match(record["CreateDate"])
        assert isinstance(record.get("OtherProperties"), dict)
        assert all(set(tag) == {"TagId"} for tag in record["Tags"])
        if change.entity == "Contacts":
            assert record["TypeId"] in (1, 2)
            for phone in record["Phones"]:
                assert PHONE.match(phone["PhoneNumber"]) and phone["CountryId"] == 76
        elif change.entity == "Deals":
            assert {"Title", "ContactId", "PipelineId", "StageId", "StatusId", "OwnerId"} <= set(
                record
            )
            assert isinstance(record["Amount"], float) and record["StatusId"] in (1, 2, 3)
            assert record["DaysInStage"] == record["HoursInStage"] // 24
        else:
            assert {"Title", "DateTime", "Finished", "OwnerId"} <= set(record)
            assert isinstance(record["Finished"], bool)
    text = as_json(run)
    for accented in ("ã", "ç", "é", "í", "ó"):
        assert accented in text


def test_last_update_date_is_sao_paulo_local_time(run):
    for change in run[:500]:
        if change.action == "Delete":
            continue
        local = change.at.astimezone(SAO_PAULO).replace(tzinfo=None)
        stamped = datetime.fromisoformat(change.new["LastUpdateDate"])
        assert timedelta(0) <= local - stamped < timedelta(milliseconds=1)
    assert local_stamp(datetime(2024, 3, 18, 22, 32, 40, 680000, tzinfo=UTC).timestamp()) == (
        "2024-03-18T19:32:40.68"
    )
    assert local_stamp(datetime(2026, 11, 3, 13, 0, tzinfo=UTC).timestamp()) == (
        "2026-11-03T10:00:00"
    )


def test_business_hours_dominate(run):
    local = [c.at.astimezone(SAO_PAULO) for c in run]
    business = sum(1 for t in local if t.weekday() < 5 and 8 <= t.hour < 19)
    assert business / len(local) > 0.8
    assert business < len(local)  # but a few evening and weekend changes happen


def test_records_are_copies_of_live_state():
    sim = Simulation(seed=2)
    contacts = sim.records("Contacts")
    assert contacts and all("Id" in c for c in contacts)
    contacts[0]["Name"] = "changed by the caller"
    contacts[0]["Phones"].append({"PhoneNumber": "x"})
    assert sim.records("Contacts")[0] != contacts[0]
    created = sim.step("Contacts", "Create")
    assert created.new in sim.records("Contacts")
    deleted = sim.step("Contacts", "Delete")
    assert deleted.record_id not in {c["Id"] for c in sim.records("Contacts")}
    with pytest.raises(ValueError):
        sim.records("Orders")


# --- forcing -----------------------------------------------------------------------------


def test_forced_entity_and_action():
    sim = Simulation(seed=3)
    for entity in ("Contacts", "Deals", "Tasks"):
        for action in ("Create", "Update", "Delete"):
            change = sim.step(entity, action)
            assert (change.entity, change.action) == (entity, action)
    change = sim.step(action="Win")
    assert (change.entity, change.action) == ("Deals", "Win")
    assert sim.step(entity="Tasks").entity == "Tasks"


def test_forcing_an_impossible_action_makes_its_prerequisite_first():
    sim = Simulation(seed=4)
    # no task left: an Update must create one first, then the Update can happen
    while sim.records("Tasks"):
        assert sim.step("Tasks", "Delete").action == "Delete"
    assert sim.step("Tasks", "Update").action == "Create"
    assert sim.step("Tasks", "Update").action == "Update"
    # the account starts with open deals only: Reopen closes one first
    sim = Simulation(seed=4)
    first = sim.step(action="Reopen")
    assert first.action in ("Win", "Lose")
    second = sim.step(action="Reopen")
    assert second.action == "Reopen" and second.record_id == first.record_id


def test_forcing_nonsense_is_an_error():
    sim = Simulation(seed=4)
    with pytest.raises(ValueError):
        sim.step("Contacts", "Win")
    with pytest.raises(ValueError):
        sim.step("Orders", "Create")
    with pytest.raises(ValueError):
        sim.step("Deals", "Finish")
    with pytest.raises(ValueError):
        Simulation(start=datetime(2026, 1, 1))


# --- bodies -----------------------------------------------------------------------------------


def test_body_shape_matches_real_deliveries(run):
    expected = [
        "Action",
        "Entity",
        "SecondaryEntityId",
        "AccountId",
        "ActionUserId",
        "WebhookId",
        "WebhookCreatorId",
        "Old",
        "New",
    ]
    if SHARED.is_dir():  # the real deliveries, when present, are the authority
        real = json.loads((SHARED / "payloads" / "deal-win.json").read_text(encoding="utf-8"))
        assert list(real) == expected
        first_line = (
            (SHARED / "real" / "deals-win.jsonl").read_text(encoding="utf-8").split("\n")[0]
        )
        assert list(json.loads(first_line)) == expected
    for change in run[:300]:
        body = body_of(change)
        assert list(body) == expected
        assert body["SecondaryEntityId"] is None and body["AccountId"] == 3100210
        assert (body["Action"], body["Entity"], body["ActionUserId"]) == (
            change.action,
            change.entity,
            change.action_user_id,
        )
        assert json.loads(json.dumps(body)) == body


def test_short_new_keeps_id_and_changed_fields(run):
    wins = [c for c in run if c.action == "Win"]
    assert wins
    for change in wins + [c for c in run if c.action == "Update"][:200]:
        body = body_of(change, short_new=True)
        assert body["Old"] == change.old  # Old stays full
        assert list(body["New"])[0] == "Id"
        assert set(body["New"]) < set(change.new)
        full = diff_record(change.action, change.old, change.new)
        short = diff_record(change.action, body["Old"], body["New"])
        assert short == full  # the same story, told with fewer fields
    win = body_of(wins[0], short_new=True)
    assert {"Id", "StatusId", "LastStageId", "FinishDate", "LastUpdateDate"} <= set(win["New"])
    create = next(c for c in run if c.action == "Create")
    assert body_of(create, short_new=True)["New"] == create.new


# --- the demo month ---------------------------------------------------------------------------


def test_demo_month_size_and_order(demo):
    assert 1500 <= len(demo) <= 3000
    times = [at for at, _ in demo]
    assert times == sorted(times)
    assert all(t.tzinfo is not None for t in times)
    assert END - timedelta(days=30) <= times[0] and times[-1] <= END + timedelta(minutes=1)
    entities = Counter((b["Entity"], b["Action"]) for _, b in demo)
    assert entities[("Deals", "Win")] > 10 and entities[("Deals", "Lose")] > 10
    assert entities[("Tasks", "Create")] > 10 and entities[("Contacts", "Update")] > 10
    assert len({b["ActionUserId"] for _, b in demo}) >= 5
    assert any(ch in json.dumps(demo[0][1], ensure_ascii=False) for ch in "ãçéíóúâêô")


def test_demo_has_exact_duplicates(demo):
    seen: dict[str, datetime] = {}
    resent = []
    for at, body in demo:
        text = json.dumps(body, sort_keys=True)
        if text in seen:
            resent.append(at - seen[text])
        else:
            seen[text] = at
    assert 5 <= len(resent) <= 100
    assert all(timedelta(0) < gap <= timedelta(seconds=60) for gap in resent)


def test_demo_has_one_change_sent_to_two_subscriptions(demo):
    hooks_by_change: dict[str, set[int]] = {}
    for _, body in demo:
        hooks_by_change.setdefault(fingerprint(body), set()).add(body["WebhookId"])
    twins = [hooks for hooks in hooks_by_change.values() if len(hooks) > 1]
    assert len(twins) == 1 and len(twins[0]) == 2


def test_demo_misses_exactly_one_update(demo):
    found = gaps(demo)
    assert len(found) == 1
    entity, _, fields = found[0]
    assert any(not field.endswith(("LastUpdateDate", "UpdaterId")) for field in fields)


def test_demo_options():
    end = datetime(2026, 6, 15, 18, 0, tzinfo=UTC)
    clean = demo_deliveries(seed=3, days=10, end=end, duplicate_rate=0.0, drop_one_update=False)
    assert gaps(clean) == []
    texts = Counter(json.dumps(body, sort_keys=True) for _, body in clean)
    assert max(texts.values()) == 1  # no resends; the one twin differs by WebhookId
    prints = Counter(fingerprint(body) for _, body in clean)
    assert sorted(prints.values())[-2:] == [1, 2]
    assert len(gaps(demo_deliveries(seed=3, days=10, end=end))) == 1
    with pytest.raises(ValueError):
        demo_deliveries(end=datetime(2026, 6, 15))
