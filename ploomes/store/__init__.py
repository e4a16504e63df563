"""The only owner of the DuckDB file: Store, its lock, its schema and migrations.

Imports nothing of the project but `ploomes.config`.
"""

from ploomes.store.db import Store
from ploomes.store.schema import (
    SCHEMA_VERSION,
    StoreBusy,
    StoreError,
    StoreUnreadable,
    Upgrades,
    fetch_one,
    fetch_row,
    is_damage,
    migrate,
    schema_version,
    transaction,
)

__all__ = ["SCHEMA_VERSION", "Store", "StoreBusy", "StoreError", "StoreUnreadable", "Upgrades",
           "fetch_one", "fetch_row", "is_damage", "migrate", "schema_version", "transaction"]
