"""What every dashboard page shares: settings, the store, time formatting, error display."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

import pandas as pd
import streamlit as st

from ploomes import i18n
from ploomes.actions import NotAllowed
from ploomes.actions import demo_data as demo_actions
from ploomes.config import PROJECT_ROOT, ConfigError, Settings, load_settings
from ploomes.i18n import N_, _, ngettext
from ploomes.ingest.upgrade import UPGRADES
from ploomes.intake.probe import receiver_health as fetch_receiver_health
from ploomes.model.names import action_label, entity_label
from ploomes.queries.names import ALL_ACCOUNTS, AccountScope
from ploomes.queries.status import accounts_seen, demo_count
from ploomes.store import Store, StoreBusy, StoreError
from views.text import HEADER_LIMIT, cut, plain

if TYPE_CHECKING:  # views.access imports this module
    from views.access import Access

T = TypeVar("T")
QUERY_TTL = 5  # seconds: data on screen is at most this old
LIVE_TTL = 1  # seconds: what a live list (Events, a record's history) shows
LIVE_SECONDS = 2  # how often a live list refreshes: a new delivery shows within ~4 s
ACCOUNT_KEY = "account"  # the account choice (sidebar), and its query parameter


def settings() -> Settings:
    """Return the project settings (environment, secrets.toml); stops the page on error."""
    try:
        config = load_settings()
    except ConfigError as exc:
        st.error(_("Configuration problem: {problem}. Fix the setting and reload the page.")
                 .format(problem=plain(exc)))
        st.stop()
        raise  # unreachable: st.stop() ends the script run
    i18n.activate(config.language)  # PLOOMES_LANGUAGE: pages speak it from here on
    return config


@st.cache_resource(show_spinner=False)
def _store(data_dir: str) -> Store:
    # one Store per data dir and process; the queries of a page share one open of the
    # file (kept 0.5 s, closed at once when the ingest waits): opening it is the slow part
    return Store(load_settings(data_dir=data_dir), busy_timeout=10.0, memory_limit="256MB",
                 upgrades=UPGRADES, keep_reader=0.5)


def store() -> Store:
    """Return the store of the configured data dir."""
    return _store(str(settings().data_dir))


def _stop_on_store_error(exc: StoreError) -> None:
    if isinstance(exc, StoreBusy):
        st.error(_("The data store is busy: {problem}").format(problem=plain(exc)))
    else:
        st.error(_("The data store cannot be read: {problem}. Check the data dir in Status, "
                   "or rebuild it with `python -m ploomes rebuild`.").format(problem=plain(exc)))
    st.stop()


def run_query(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run `fn(con, *args, **kwargs)` on a read connection; show errors as st.error and stop."""
    try:
        with store().reader() as con:
            return fn(con, *args, **kwargs)
    except StoreError as exc:
        _stop_on_store_error(exc)
    raise RuntimeError("unreachable")


@st.cache_data(ttl=QUERY_TTL, show_spinner=False, max_entries=500)
def _cached_query(data_dir: str, name: str, _fn: Callable, args: tuple, kwargs: dict):
    # `name` stands in for the unhashed function; `data_dir` keeps data dirs apart
    with _store(data_dir).reader() as con:
        return _fn(con, *args, **kwargs)


def cached_query(fn: Callable[..., T], *args, **kwargs) -> T:
    """Like run_query, but answers from a cache at most QUERY_TTL seconds old.

    Arguments must be hashable by Streamlit (numbers, strings, datetimes, dataclasses).
    """
    data_dir = str(settings().data_dir)
    try:
        return _cached_query(data_dir, f"{fn.__module__}.{fn.__qualname__}", fn, args, kwargs)
    except StoreError as exc:
        _stop_on_store_error(exc)
    raise RuntimeError("unreachable")


@st.cache_data(ttl=QUERY_TTL, show_spinner=False, max_entries=20)
def _cached_health(receiver_url: str) -> dict:
    return fetch_receiver_health(receiver_url, timeout=1.5)


@st.cache_data(ttl=LIVE_TTL, show_spinner=False, max_entries=200)
def _cached_live(data_dir: str, name: str, _fn: Callable, args: tuple, kwargs: dict):
    with _store(data_dir).reader() as con:
        return _fn(con, *args, **kwargs)


def live_query(fn: Callable[..., T], *args, **kwargs) -> T:
    """Like cached_query, for what a live list shows: at most LIVE_TTL seconds old."""
    data_dir = str(settings().data_dir)
    try:
        return _cached_live(data_dir, f"{fn.__module__}.{fn.__qualname__}", fn, args, kwargs)
    except StoreError as exc:
        _stop_on_store_error(exc)
    raise RuntimeError("unreachable")


def receiver_health() -> dict:
    """Return the receiver's /healthz body plus `reachable`; cached for QUERY_TTL seconds."""
    return _cached_health(settings().receiver_url)


def clear_query_cache() -> None:
    """Forget cached query results, e.g. after loading or removing demo data."""
    _cached_query.clear()
    _cached_live.clear()
    _cached_health.clear()


def page_available(path: str) -> bool:
    """Return whether a page file (relative to the project root) can be linked to: it
    exists and the dashboard's navigation runs (a page run on its own has no other page)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    routed = ctx is None or ctx.main_script_path == str(PROJECT_ROOT / "dashboard.py")
    return routed and (PROJECT_ROOT / path).is_file()


def demo_banner(access: Access) -> None:
    """Say that demo data is shown, with a button that removes it for admins (no-op
    without demo)."""
    count = cached_query(demo_count)
    if not count:
        return
    text, action = st.columns([5, 1], vertical_alignment="center")
    text.warning(ngettext(
        "**Demo data is shown — remove it** when you are done exploring: {count} invented "
        "event is mixed with any real ones and marked as demo.",
        "**Demo data is shown — remove it** when you are done exploring: {count} invented "
        "events are mixed with any real ones and marked as demo.", count)
        .format(count=i18n.format_number(count)), icon=":material/science:")
    if not access.is_admin:
        return
    if action.button(_("Remove demo data"), key="remove_demo", type="primary"):
        with st.spinner(_("Removing demo data…")):
            try:
                demo_actions.remove(access.actor, settings(), store())
            except NotAllowed as exc:
                st.error(_("Demo data was not removed: {problem}.").format(problem=plain(exc)))
                st.stop()
            except StoreError as exc:
                st.error(_("Demo data could not be removed: {problem}. Try again in a "
                           "moment.").format(problem=plain(exc)))
                st.stop()
        clear_query_cache()
        st.rerun()


def to_local(value: datetime | pd.Series | None, tz: str | None = None):
    """Convert a timestamp (or a column of them) to the display time zone."""
    zone = tz or settings().timezone
    if value is None:
        return None
    if isinstance(value, pd.Series):
        return pd.to_datetime(value, utc=True).dt.tz_convert(zone)
    return pd.Timestamp(value).tz_convert(zone)


def fmt_time(value: datetime | None) -> str:
    """Format a timestamp for display in the configured time zone (07/12/2026 19:17:05)."""
    if value is None or pd.isna(value):
        return "—"
    return i18n.format_datetime(pd.Timestamp(value).to_pydatetime(), settings().timezone,
                                seconds=True)


def time_column(values: pd.Series, tz: str, seconds: bool = True) -> pd.Series:
    """Return a column of timestamps as text in the language's format and time zone `tz`."""
    return to_local(values, tz).dt.strftime(i18n.date_pattern(seconds))


def fmt_ago(seconds: float | None) -> str:
    """Return 'há 3 minutos' style text for an age in seconds."""
    if seconds is None:
        return _("never")
    return i18n.format_ago(seconds)


def format_bytes(size: float) -> str:
    """Return a size such as '12,3 MB'."""
    if size < 1024:
        return f"{i18n.format_number(int(size))} B"
    exponent = min(int(math.log(size, 1024)), 4)
    return (f"{i18n.format_number(size / 1024 ** exponent, 1)} "
            f"{('B', 'KB', 'MB', 'GB', 'TB')[exponent]}")


# -- Ploomes' names -------------------------------------------------------------------

def entity_name(entity: object) -> str:
    """Return an entity as Ploomes names it (Negócios for Deals); plain text."""
    return entity_label(None if entity is None else str(entity), _ploomes_language())


def action_name(action: object) -> str:
    """Return an action as Ploomes names it (Ganho for Win); plain text."""
    return action_label(None if action is None else str(action), _ploomes_language())


def _ploomes_language() -> str:
    # Ploomes' own names come in pairs (ploomes.model.names): its Portuguese, or English
    return "en" if i18n.is_english() else "pt"


# -- accounts -------------------------------------------------------------------------

@dataclass(frozen=True)
class AccountChoice:
    """The Ploomes account the pages show.

    `scope` narrows queries: ALL_ACCOUNTS while the store holds one account (or none),
    the chosen AccountId once it holds several. `account_id` is the account whose names
    label what is shown (None: deliveries without an AccountId, or no data yet).
    """

    scope: AccountScope
    account_id: int | None
    accounts: int


def _account_text(account_id: int | None, name: str | None) -> str:
    if account_id is None:
        return _("No AccountId")
    return (f"{cut(name, HEADER_LIMIT)} ({account_id})" if name
            else _("Account {id}").format(id=account_id))


def account_choice() -> AccountChoice:
    """Offer the accounts seen when there are several (sidebar); return the one shown.

    The choice is kept for the session and in the link (`?account=<id>`, `none` for
    deliveries without an AccountId).
    """
    seen = cached_query(accounts_seen)
    ids = [None if v is None or v != v else int(v) for v in seen["account_id"]]
    if len(ids) <= 1:
        return AccountChoice(ALL_ACCOUNTS, ids[0] if ids else None, len(ids))
    names = {i: n for i, n in zip(ids, seen["name"], strict=True)}
    if ACCOUNT_KEY not in st.session_state:
        wanted = (st.query_params.get(ACCOUNT_KEY) or "").strip().lower()
        for account_id in ids:
            if wanted == str(account_id).lower():
                st.session_state[ACCOUNT_KEY] = account_id
                break
    if st.session_state.get(ACCOUNT_KEY, ids[0]) not in ids:
        st.session_state.pop(ACCOUNT_KEY, None)  # an account no longer in the store
    # selectbox options show text as it is: account names are cut, never escaped
    chosen = st.sidebar.selectbox(
        _("Ploomes account"), ids, key=ACCOUNT_KEY,
        format_func=lambda i: _account_text(i, names.get(i)),
        help=_("This store holds deliveries from several Ploomes accounts; the pages show "
               "one account at a time, named with that account's own users and fields."))
    st.query_params[ACCOUNT_KEY] = "none" if chosen is None else str(chosen)
    return AccountChoice(chosen, chosen, len(ids))


# -- the callback URL -----------------------------------------------------------------

CALLBACK_MISSING = N_(
    "PLOOMES_CALLBACK_URL is not set. Ploomes posts every delivery to this receiver from "
    "the internet, so it needs the receiver's public HTTPS address, for example "
    "https://hooks.empresa.com.br/ploomes/webhook: a reverse proxy or tunnel in front of "
    "the receiver (see README, “Expose it safely”). Set PLOOMES_CALLBACK_URL to that "
    "address and restart the dashboard.")


def callback_url() -> str | None:
    """Return the callback URL to give Ploomes (PLOOMES_CALLBACK_URL), or None if unset."""
    return settings().callback_url or None


def show_callback_url() -> str | None:
    """Show the callback URL to give Ploomes, or why there is none yet; return it."""
    url = callback_url()
    if url:
        st.code(url, language=None)
    else:
        st.warning(_(CALLBACK_MISSING), icon=":material/link_off:")
    return url
