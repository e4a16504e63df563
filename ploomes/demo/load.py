"""Demo data: a realistic month of deliveries, stored through the real ingest path.

Demo records are journaled with the demo flag, so every table marks them (`is_demo`)
and a rebuild reproduces them, and removing them is itself a journal record, so they
stay removed after a rebuild. The journal has one writer at a time: when a receiver
runs on the data dir, the records go through its `/ploomes/demo` endpoint; otherwise
this process appends and ingests them itself, under the store's write lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import requests

from ploomes.config import Settings
from ploomes.crm.directory import upsert_directory
from ploomes.demo.generator import Simulation, demo_deliveries
from ploomes.ingest.pipeline import Pipeline
from ploomes.ingest.upgrade import UPGRADES
from ploomes.intake.journal import KIND_CONTROL, Entry, Journal, JournalBusy, JournalReader
from ploomes.intake.keys import accepted_keys
from ploomes.intake.service import REMOVE_DEMO, demo_entries
from ploomes.model.vocabulary import DEMO_PATH, VALIDATION_HEADER
from ploomes.store import Store, StoreError, fetch_one

CHUNK = 250  # deliveries per request to a running receiver
DEMO_SEED = 7


class DemoError(StoreError):
    """Demo data could not be loaded or removed."""


def ingest_pending(settings: Settings, journal: Journal) -> int:
    """Move every durable journal record not yet in the store into it; return how many."""
    store = Store(settings, upgrades=UPGRADES)
    pipeline = Pipeline(settings.duplicate_window_seconds)
    done = 0
    with store.writer() as con:
        row = fetch_one(con, "SELECT last_seq FROM ingest_state WHERE name = 'main'")
        pipeline.load_recent(con)
        reader = JournalReader(journal.dir, row[0] if row else 0)
        while batch := reader.read(5000, journal.synced_seq):
            pipeline.apply(con, batch)
            done += len(batch)
        while pipeline.derive_pending(con, 5000) is not None:
            pass  # the change model of what was just stored
    return done


def _post(settings: Settings, body: dict) -> dict:
    keys = accepted_keys(settings)
    if not keys:
        raise DemoError("the receiver is running but no validation key is known here")
    url = settings.receiver_url.rstrip("/") + DEMO_PATH
    try:
        response = requests.post(url, json=body, timeout=60,
                                 headers={VALIDATION_HEADER: keys[0]})
    except requests.RequestException as exc:
        raise DemoError(f"the receiver holds the journal but cannot be reached at "
                        f"{settings.receiver_url} (set PLOOMES_RECEIVER_URL): {exc}") from None
    if response.status_code != 200:
        raise DemoError(f"the receiver refused demo data ({response.status_code}): "
                        f"{response.text[:200]}")
    return response.json()


def _append(settings: Settings, entries: list[Entry]) -> int:
    """Append and ingest in this process; raise JournalBusy when a receiver holds it."""
    journal = Journal(settings.journal_dir, settings.journal_segment_bytes)
    try:
        journal.append_entries(entries)
        return ingest_pending(settings, journal)
    finally:
        journal.close()


def load_demo(settings: Settings, deliveries: Sequence[tuple[datetime, dict]] | None = None
              ) -> int:
    """Store the demo month (or the given deliveries) as demo data; return how many."""
    if deliveries is None:
        deliveries = demo_deliveries(seed=DEMO_SEED)
        sim = Simulation(seed=DEMO_SEED)  # the same account: its users and custom fields
        _store_names(settings, sim)
    deliveries = sorted(deliveries, key=lambda d: d[0])
    try:
        _append(settings, demo_entries(deliveries))
    except JournalBusy:
        for i in range(0, len(deliveries), CHUNK):
            _post(settings, {"deliveries": [
                {"received_at": at.isoformat(), "body": body}
                for at, body in deliveries[i:i + CHUNK]]})
    return len(deliveries)


def remove_demo(settings: Settings) -> None:
    """Remove every demo row, now and in any later rebuild."""
    try:
        _append(settings, [(REMOVE_DEMO, KIND_CONTROL, 0, None)])
    except JournalBusy:
        _post(settings, {"remove": True})


def _store_names(settings: Settings, sim: Simulation) -> None:
    """Name the demo account, its users, custom fields, stages, pipelines, tags…

    They are keyed by the demo account's AccountId, which no real account has, so they
    label demo data only. Rows written here have no `synced_at`; removing demo data
    removes exactly those.
    """
    lookups = {"stage": sim.stages, "pipeline": sim.pipelines, "tag": sim.tags,
               "loss_reason": sim.loss_reasons, "task_type": sim.task_types}
    with Store(settings, upgrades=UPGRADES).writer() as con:
        upsert_directory(con, sim.users, sim.fields, None, account_id=sim.account_id,
                         account_name=f"{sim.company} Ltda. (demo)", lookups=lookups)
