"""The ingest worker's two stages, step by step, on a real journal and DuckDB file.

The worker is driven through `start()` and `step()` as its process loop drives it, and
observed through the shared state the receiver reads (`/healthz`) and the store. Between
steps the test closes the worker's write session, as the worker does for any reader.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta

import pytest
from conftest import make_settings, query, wait_for

from ploomes.ingest.pipeline import PositionMoved
from ploomes.ingest.worker import IngestWorker
from ploomes.intake.journal import KIND_CONTROL, KIND_REJECTED, Journal, rejected_payload
from ploomes.intake.shared import SharedState

START = datetime(2026, 11, 2, 12, tzinfo=UTC)


def deal(n: int, title: str, old_title: str | None = None, user: int = 10) -> bytes:
    """A delivery for deal n: created with `title`, or renamed from `old_title`."""
    body = {"Action": "Create" if old_title is None else "Update", "Entity": "Deals",
            "AccountId": 1, "ActionUserId": user, "WebhookId": 7,
            "Old": None if old_title is None else {"Id": n, "Title": old_title},
            "New": {"Id": n, "Title": title}}
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


class Receiver:
    """The receiver's side for the worker: a journal that publishes what is durable."""

    def __init__(self, settings, *shared: SharedState):
        self.journal = Journal(settings.journal_dir, settings.journal_segment_bytes)
        self.shared = shared

    def append(self, *payloads: bytes, kind: int = 0) -> int:
        """Append records a minute apart (from the journal's last one); return the last."""
        first = self.journal.synced_seq + 1
        stamps = [int((START + timedelta(minutes=first + i)).timestamp() * 1e9)
                  for i in range(len(payloads))]
        last = self.journal.append_entries([(p, kind or 1, 0, ns)
                                            for p, ns in zip(payloads, stamps, strict=True)])[-1]
        for shared in self.shared:
            shared.synced_seq.value = last
        return last

    def close(self) -> None:
        self.journal.close()


def drain(worker: IngestWorker) -> None:
    """Step until every durable record is stored and derived, then let readers in.

    While deliveries flow the worker leaves stage 2 a share of its time (a step with
    nothing due returns False although work remains), so this waits for the outcome,
    not for a step that says there was nothing to do.
    """
    shared = worker.shared

    def caught_up() -> bool:
        worker.step()
        return (shared.synced_seq.value == shared.ingested_seq.value
                == shared.derived_seq.value)

    wait_for(caught_up, timeout=60, interval=0.005)
    worker.session.close()


def snapshot(data_dir) -> dict[str, list[str]]:
    """Every row the two stages write, as comparable text."""
    tables = {"events": "events", "field_changes": "field_changes",
              "continuity_gaps": "continuity_gaps", "record_state": "record_state",
              "rejected_deliveries": "rejected_deliveries", "user_records": "user_records",
              "user_fields": "user_fields",
              "ingest_state": "(SELECT name, last_seq FROM ingest_state)"}
    return {name: sorted(map(repr, query(data_dir, f"SELECT * FROM {sql}")))
            for name, sql in tables.items()}


def test_a_batch_is_visible_after_stage_one_and_its_change_model_follows(tmp_path):
    settings = make_settings(tmp_path / "data")
    shared = SharedState()
    receiver = Receiver(settings, shared)
    worker = IngestWorker(settings, shared)
    try:
        receiver.append(deal(1, "Clínica"), deal(1, "Clínica São José", "Clínica"),
                        deal(2, "Padaria"))
        worker.start()
        assert shared.ready.value
        assert (shared.ingested_seq.value, shared.derived_seq.value) == (0, 0)
        assert worker.step()  # stage 1: the batch becomes events
        assert (shared.ingested_seq.value, shared.derived_seq.value) == (3, 0)
        worker.session.close()
        assert query(settings.data_dir, "SELECT id, record_id, action FROM events "
                     "ORDER BY id") == [(1, 1, "Create"), (2, 1, "Update"), (3, 2, "Create")]
        assert query(settings.data_dir, "SELECT count(*) FROM field_changes")[0][0] == 0
        assert query(settings.data_dir, "SELECT count(*) FROM record_state")[0][0] == 0
        drain(worker)  # stage 2: the change model of those events
        assert (shared.ingested_seq.value, shared.derived_seq.value) == (3, 3)
        assert shared.backlog() == 0 and shared.get_error() is None
        assert query(settings.data_dir, "SELECT event_id, old_value::VARCHAR, "
                     "new_value::VARCHAR FROM field_changes WHERE field = 'Title' "
                     "ORDER BY event_id") == [(1, None, '"Clínica"'),
                                              (2, '"Clínica"', '"Clínica São José"'),
                                              (3, None, '"Padaria"')]
        assert query(settings.data_dir, "SELECT record_id, title, last_event_id FROM "
                     "record_state ORDER BY record_id") == [(1, "Clínica São José", 2),
                                                            (2, "Padaria", 3)]
        assert query(settings.data_dir, "SELECT action_user_id, events FROM user_records "
                     "ORDER BY record_id") == [(10, 2), (10, 1)]
        assert not worker.step()  # caught up: nothing to do
        assert query(settings.data_dir, "SELECT name, last_seq FROM ingest_state "
                     "ORDER BY name") == [("derive", 3), ("main", 3)]
    finally:
        worker.session.close()
        receiver.close()


# records the store cannot take, written by some other version of the program
UNSTORABLE = {
    "refusal without its fields": (KIND_REJECTED, b'{"reason": "from an older receiver"}'),
    "operation that is not JSON": (KIND_CONTROL, b"remove_demo"),
    "refusal with a lone surrogate": (KIND_REJECTED,
                                      rejected_payload(400, "bad \ud800", b"[]", "192.0.2.7")),
}


@pytest.mark.parametrize("kind,payload", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_a_record_the_store_refuses_is_kept_as_rejected_and_later_ones_flow(tmp_path, kind,
                                                                         payload):
    settings = make_settings(tmp_path / "data")
    shared = SharedState()
    receiver = Receiver(settings, shared)
    worker = IngestWorker(settings, shared, batch_size=4)
    try:
        receiver.append(deal(1, "Um"))
        receiver.append(payload, kind=kind)
        receiver.append(deal(2, "Dois"), deal(3, "Três"))
        worker.start()
        drain(worker)  # one batch of 4, stored record by record around the bad one
        assert (shared.ingested_seq.value, shared.derived_seq.value) == (4, 4)
        assert query(settings.data_dir, "SELECT id FROM events ORDER BY id") == [
            (1,), (3,), (4,)]
        [(rejected_id, status, reason, raw)] = query(
            settings.data_dir, "SELECT id, status, reason, raw FROM rejected_deliveries")
        assert (rejected_id, status, raw) == (2, 200, payload)  # kept whole, with why
        assert reason.startswith("accepted, but DuckDB refused it (kept in the journal)")
        receiver.append(*(deal(n, f"Negócio {n}") for n in range(5, 9)))
        drain(worker)  # the next batch goes through as a batch again
        assert query(settings.data_dir, "SELECT count(*), max(id) FROM events")[0] == (7, 8)
        assert (shared.ingested_seq.value, shared.derived_seq.value) == (8, 8)
        assert query(settings.data_dir, "SELECT count(*) FROM record_state")[0][0] == 7
    finally:
        worker.session.close()
        receiver.close()


BODIES = [deal(1, "A"), deal(2, "B", user=11), deal(1, "A2", "A"), deal(1, "A2", "A"),
          deal(2, "B2", "B", user=11), deal(3, "C"), deal(1, "A3", "A2"),
          deal(2, "B3", "B9", user=11), deal(4, "D")]  # a duplicate (4) and a gap (8)


def test_a_recreated_worker_resumes_exactly_once_from_the_stored_positions(tmp_path):
    # small segments: the resumed reader starts in the middle of the journal
    settings = make_settings(tmp_path / "data", journal_segment_bytes=4096)
    first_shared, stale_shared, shared = SharedState(), SharedState(), SharedState()
    receiver = Receiver(settings, first_shared, stale_shared, shared)
    first = IngestWorker(settings, first_shared)
    stale = IngestWorker(settings, stale_shared)  # started before the first one's batch
    resumed = None
    try:
        for body in BODIES[:6]:
            receiver.append(body + b" " * 1000)  # ~1.2 KB each: three segments
        first.start()
        stale.start()
        first.DERIVE_STEP = 2
        assert first.step() and first.step()  # stage 1, then stage 2 of two events
        assert (first_shared.ingested_seq.value, first_shared.derived_seq.value) == (6, 2)
        first.session.close()  # then it stops: its process ended here
        # a worker still at the position it read at its start cannot apply anything twice
        with pytest.raises(PositionMoved):
            stale.step()
        stale.session.close()
        for body in BODIES[6:]:
            receiver.append(body + b" " * 1000)
        resumed = IngestWorker(settings, shared)
        resumed.start()
        assert (shared.ingested_seq.value, shared.derived_seq.value) == (6, 2)
        drain(resumed)
        assert (shared.ingested_seq.value, shared.derived_seq.value) == (9, 9)
    finally:
        for worker in (first, stale, resumed):
            if worker is not None:
                worker.session.close()
        receiver.close()
    # the same journal ingested in one go by one worker gives the very same rows
    other = make_settings(tmp_path / "other", journal_segment_bytes=4096)
    other_shared = SharedState()
    receiver = Receiver(other, other_shared)
    worker = IngestWorker(other, other_shared)
    try:
        for body in BODIES:
            receiver.append(body + b" " * 1000)
        worker.start()
        drain(worker)
    finally:
        worker.session.close()
        receiver.close()
    resumed_rows = snapshot(settings.data_dir)
    assert resumed_rows == snapshot(other.data_dir)
    assert len(resumed_rows["events"]) == 9 and len(resumed_rows["continuity_gaps"]) == 1
    assert query(settings.data_dir, "SELECT count(*) FROM events WHERE duplicate_of = 3"
                 ) == [(1,)]


def test_stage_two_takes_small_steps_and_a_due_batch_goes_first(tmp_path):
    settings = make_settings(tmp_path / "data")
    shared = SharedState()
    receiver = Receiver(settings, shared)
    worker = IngestWorker(settings, shared, batch_size=300)
    worker.DERIVE_STEP = 50
    try:
        receiver.append(*(deal(n, f"Negócio {n}") for n in range(300)))
        worker.start()
        assert worker.step()  # stage 1: 300 events at once
        assert (shared.ingested_seq.value, shared.derived_seq.value) == (300, 0)
        assert worker.step()  # stage 2: one small step
        assert (shared.ingested_seq.value, shared.derived_seq.value) == (300, 50)
        # a full batch is due: it is stored before the change model catches up
        receiver.append(*(deal(n, f"Negócio {n}", f"Negócio {n - 300}")
                          for n in range(300, 600)))
        assert worker.step()
        assert (shared.ingested_seq.value, shared.derived_seq.value) == (600, 50)
        drain(worker)
        assert query(settings.data_dir, "SELECT count(*), count(DISTINCT event_id) FROM "
                     "field_changes WHERE field = 'Title'") == [(600, 600)]
    finally:
        worker.session.close()
        receiver.close()


def test_a_stopping_worker_stores_and_derives_everything_durable_before_it_returns(
        tmp_path):
    settings = make_settings(tmp_path / "data")
    shared = SharedState()
    receiver = Receiver(settings, shared)
    worker = IngestWorker(settings, shared)
    worker.GATHER = 3600.0  # a gather window that does not end during the test
    try:
        receiver.append(*(deal(n, f"Negócio {n}") for n in range(3)))
        worker.start()
        assert worker.step()  # a batch: the next one is gathered for a while ...
        receiver.append(deal(3, "Três"), deal(4, "Quatro"))  # ... and these just came
        shared.stop.value = True  # the receiver is stopping: drain, then return
        loop = threading.Thread(target=worker.run, args=(os.getppid(),))
        loop.start()
        loop.join(60)
        assert not loop.is_alive()
    finally:
        worker.session.close()
        receiver.close()
    assert (shared.ingested_seq.value, shared.derived_seq.value) == (5, 5)
    assert query(settings.data_dir, "SELECT name, last_seq FROM ingest_state "
                 "ORDER BY name") == [("derive", 5), ("main", 5)]


def test_a_store_that_does_not_open_is_retried_and_reported_once_until_it_opens(
        tmp_path, caplog):
    from ploomes.intake.shared import STORE_OK, STORE_UNREADABLE

    caplog.set_level("INFO", logger="ploomes.ingest")
    settings = make_settings(tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    settings.db_path.write_bytes(b"\0" * 8192)  # a DuckDB file whose header is gone
    shared = SharedState()
    receiver = Receiver(settings, shared)
    worker = IngestWorker(settings, shared)
    loop = threading.Thread(target=worker.run, args=(os.getppid(),))
    try:
        receiver.append(deal(1, "Um"), deal(2, "Dois"))
        loop.start()
        wait_for(lambda: shared.ingest_errors.value >= 3, timeout=30)  # retried, backing off
        assert shared.store_state.value == STORE_UNREADABLE
        assert "not a valid DuckDB database file" in shared.get_error()
        assert shared.ingested_seq.value == 0
        settings.db_path.rename(settings.db_path.with_name("ploomes.duckdb.broken"))
        wait_for(lambda: shared.ingested_seq.value == 2 and shared.derived_seq.value == 2,
                 timeout=30)
        assert shared.store_state.value == STORE_OK and shared.get_error() is None
    finally:
        shared.stop.value = True
        loop.join(60)
        worker.session.close()
        receiver.close()
    messages = [record.getMessage() for record in caplog.records]
    assert sum("ingest paused" in m for m in messages) == 1  # not once per retry
    assert sum("ingest resumed" in m for m in messages) == 1
    assert query(settings.data_dir, "SELECT count(*) FROM events") == [(2,)]
