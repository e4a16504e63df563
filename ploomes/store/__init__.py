"""The only owner of the DuckDB file: Store, its lock, its schema and migrations.

Imports nothing of the project but `ploomes.config`.
"""

from ploomes.store.db import Store
from ploomes.store.schema import (
    SCHEMA_VERSION,
    StoreBusy,
    StoreError,
    Upgrades,
    fetch_one,
    fetch_row,
    migrate,
    schema_version,
    transaction,
)

__all__ = ["SCHEMA_VERSION", "Store", "StoreBusy", "StoreError", "Upgrades", "fetch_one",
           "fetch_row", "migrate", "schema_version", "transaction"]
