"""Export from the Events page (issue 18): exactly the list's filters, as CSV and Parquet."""

from __future__ import annotations

import io
from datetime import timedelta

import pandas as pd
from store_seeds import T0, mixed_deliveries, seed

from ploomes.queries import events as qevents
from ploomes.store import Store

FILTERS = [
    qevents.EventFilter(),
    qevents.EventFilter(entity="Deals"),
    qevents.EventFilter(include_duplicates=True, action="Update"),
    qevents.EventFilter(start=T0 + timedelta(minutes=1), include_demo=True),
    qevents.EventFilter(field="StageId"),
    qevents.EventFilter(text="a"),
]


def test_the_export_holds_exactly_the_lists_events(tmp_path):
    settings = seed(tmp_path, mixed_deliveries())
    with Store(settings).reader() as con:
        for flt in FILTERS:
            listed = qevents.events_page(con, flt, 1, 200).rows
            exported = qevents.export_events(con, flt, tz="America/Sao_Paulo")
            assert list(exported["id"]) == list(listed["event_id"]), flt
            # the files a user downloads hold the same rows
            csv = pd.read_csv(io.BytesIO(exported.to_csv(index=False).encode("utf-8")))
            assert list(csv["id"]) == list(listed["event_id"])
            buffer = io.BytesIO()
            exported.to_parquet(buffer, index=False)
            parquet = pd.read_parquet(io.BytesIO(buffer.getvalue()))
            assert list(parquet["id"]) == list(listed["event_id"])
        everything = qevents.export_events(con, qevents.EventFilter(include_duplicates=True))
        narrowed = qevents.export_events(con, qevents.EventFilter(entity="Deals"))
    assert len(narrowed) < len(everything)
    assert "payload" not in narrowed.columns
