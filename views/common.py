"""What every dashboard page shares: settings, the store, time formatting, error display."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import pandas as pd
import streamlit as st

from ploomes.config import ConfigError, Settings, load_settings
from ploomes.store import Store, StoreBusy, StoreError

T = TypeVar("T")
QUERY_TTL = 5  # seconds: data on screen is at most this old


def settings() -> Settings:
    """Return the project settings (environment, secrets.toml); stops the page on error."""
    try:
        return load_settings()
    except ConfigError as exc:
        st.error(f"Configuration problem: {exc}. Fix the setting and reload the page.")
        st.stop()
        raise  # unreachable: st.stop() ends the script run


@st.cache_resource(show_spinner=False)
def _store(data_dir: str) -> Store:
    # one Store per data dir and process; it holds no open connection, only paths
    return Store(load_settings(data_dir=data_dir), busy_timeout=10.0, memory_limit="256MB")


def store() -> Store:
    """Return the store of the configured data dir."""
    return _store(str(settings().data_dir))


def run_query(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run `fn(con, *args, **kwargs)` on a read connection; show errors as st.error and stop."""
    try:
        with store().reader() as con:
            return fn(con, *args, **kwargs)
    except StoreBusy as exc:
        st.error(f"The data store is busy: {exc}")
    except StoreError as exc:
        st.error(f"The data store cannot be read: {exc}. Check the data dir in Status, "
                 "or rebuild it with `python -m ploomes rebuild`.")
    st.stop()
    raise RuntimeError("unreachable")


def to_local(value: datetime | pd.Series | None, tz: str | None = None):
    """Convert a timestamp (or a column of them) to the display time zone."""
    zone = tz or settings().timezone
    if value is None:
        return None
    if isinstance(value, pd.Series):
        return pd.to_datetime(value, utc=True).dt.tz_convert(zone)
    return pd.Timestamp(value).tz_convert(zone)


def fmt_time(value: datetime | None) -> str:
    """Format a timestamp for display in the configured time zone (dd/mm/yyyy HH:MM:SS)."""
    if value is None or pd.isna(value):
        return "—"
    return to_local(value).strftime("%d/%m/%Y %H:%M:%S")


def fmt_ago(seconds: float | None) -> str:
    """Return '3 min ago' style text for an age in seconds."""
    if seconds is None:
        return "never"
    if seconds < 60:
        return f"{int(seconds)} s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"
