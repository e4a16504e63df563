"""What the store's migrations of old files need from the ingest (`ploomes.store.Upgrades`)."""

from __future__ import annotations

import duckdb

from ploomes.ingest.pipeline import Pipeline
from ploomes.ingest.rollups import refill_user_rollups
from ploomes.store import Upgrades


def rederive(con: duckdb.DuckDBPyConnection) -> None:
    """Recompute the change model of a store in place (schema migration to v2)."""
    Pipeline().rederive_all(con)


UPGRADES = Upgrades(rederive=rederive, refill_user_rollups=refill_user_rollups)
