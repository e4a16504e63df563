"""IngestWorker's schedule: stage 2 stays a small share while deliveries keep coming."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from conftest import make_settings

from ploomes.demo import demo_records
from ploomes.generator import demo_deliveries
from ploomes.journal import Journal
from ploomes.service import IngestWorker, SharedState
from ploomes.store import Store


def test_stage_two_takes_small_steps_until_a_gather_window_passes_empty(tmp_path):
    settings = make_settings(tmp_path / "data")
    Store(settings).ensure_ready()
    pairs = demo_deliveries(seed=3, days=2, end=datetime(2026, 11, 20, tzinfo=UTC)
                            - timedelta(hours=1))[:300]
    payloads, stamps = demo_records(pairs)
    journal = Journal(settings.journal_dir, settings.journal_segment_bytes)
    try:
        last = journal.append_many(payloads, received_ns=stamps)[-1]
    finally:
        journal.close()
    shared = SharedState()
    shared.synced_seq.value = last
    worker = IngestWorker(settings, shared)
    worker.DERIVE_BUSY = 50
    try:
        worker._start()
        assert worker.step()  # stage 1: the 300 deliveries become events
        assert worker.ingested_seq == last and worker.derived_seq == 0
        # 300 records in one gather window is a burst: stage 2 yields more to answering
        assert worker.derive_share == worker.DERIVE_SHARE_BURST < worker.DERIVE_SHARE
        # The journal is caught up, but deliveries came less than GATHER ago: a flow
        # pausing between two syncs, not an idle receiver. Stage 2 gets a small step.
        worker._next_batch_at = time.monotonic() + 10  # (the first batch may take longer)
        assert worker.step()
        assert 0 < worker.derived_seq <= 50
        worker._next_batch_at = 0.0  # a whole gather window passed with nothing new
        while worker.derived_seq < worker.ingested_seq:
            assert worker.step()
        assert worker.derived_seq == last
        # a flow below a burst: stage 2 keeps its usual share
        journal = Journal(settings.journal_dir, settings.journal_segment_bytes)
        try:
            shared.synced_seq.value = journal.append_many(payloads[:5])[-1]
        finally:
            journal.close()
        assert worker.step() and worker._last_batch == 5
        assert worker.derive_share == worker.DERIVE_SHARE
    finally:
        worker.session.close()
