"""The first-run screen: shown by Overview while the store holds no events.

It says how to start the receiver, what to give Ploomes (callback URL and validation key),
and offers demo data to explore the dashboard before real deliveries arrive.
"""

from __future__ import annotations

import streamlit as st

from ploomes.actions import NotAllowed
from ploomes.actions import demo_data as demo_actions
from ploomes.actions import keys as key_actions
from ploomes.config import DEFAULT_DATA_DIR, Settings, mask_secret
from ploomes.i18n import _
from ploomes.intake.keys import accepted_keys, key_file
from ploomes.queries.status import event_count
from ploomes.store import StoreError
from views.access import Access, current
from views.common import (
    cached_query,
    clear_query_cache,
    page_available,
    receiver_health,
    settings,
    show_callback_url,
    store,
)
from views.text import code, plain

WAIT_SECONDS = 5  # how often the screen checks whether the first delivery arrived


def receiver_command(config: Settings) -> str:
    """Return the command that starts the receiver on this dashboard's data dir."""
    command = "python receiver.py"
    if config.data_dir != DEFAULT_DATA_DIR:
        command += f' --data-dir "{config.data_dir}"'
    return command


def _receiver_step(config: Settings) -> None:
    st.subheader(_("1. Start the receiver"))
    st.write(_("It accepts Ploomes' deliveries and stores them in the data dir {path}. Leave "
               "it running:").format(path=code(config.data_dir)))
    st.code(receiver_command(config), language="bash")
    health = receiver_health()
    if health["reachable"]:
        st.success(_("The receiver is running at {url} (status: {status}).").format(
                       url=code(config.receiver_url),
                       status=plain(health.get("status", "unknown"))),
                   icon=":material/check_circle:")
    else:
        st.warning(_("Receiver not reachable at {url}. Start it with the command above (or "
                     "set PLOOMES_RECEIVER_URL if it runs elsewhere).").format(
                         url=code(config.receiver_url)),
                   icon=":material/power_off:")


def _key_step(config: Settings, access: Access) -> None:
    st.subheader(_("2. Give Ploomes the callback URL and the key"))
    st.write(_("Callback URL (`PLOOMES_CALLBACK_URL`: the receiver's public HTTPS address, "
               "which Ploomes reaches from the internet):"))
    show_callback_url()
    keys = accepted_keys(config)
    if keys:
        source = ("PLOOMES_VALIDATION_KEYS" if keys[0] in config.validation_keys
                  else f"`{key_file(config)}`")
        st.write(_("Validation key (from {source}): **{key}**").format(
            source=source, key=mask_secret(keys[0])))
        if st.toggle(_("Show the key"), key="first_run_reveal"):
            st.code(keys[0], language=None)
    else:
        st.write(_("No validation key exists yet. Ploomes sends it with every delivery so "
                   "the receiver can refuse anyone else."))
        if not access.is_admin:
            st.caption(_("An admin can generate one here."))
        elif st.button(_("Generate a key"), key="first_run_generate_key"):
            try:
                key_actions.generate(access.actor, config, store())
            except (NotAllowed, StoreError) as exc:
                st.error(_("No key was generated: {problem}.").format(problem=plain(exc)))
                st.stop()
            except OSError as exc:
                st.error(_("The key could not be stored in {path}: {problem}. Check that the "
                           "data dir is writable.").format(path=plain(key_file(config)),
                                                           problem=plain(exc)))
                st.stop()
            st.rerun()
    if page_available("views/webhooks.py"):
        st.page_link("views/webhooks.py", label=_("Register the subscriptions on Webhooks"),
                     icon=":material/webhook:")
    else:
        st.caption(_("Register a subscription per entity and action in Ploomes "
                     "(POST /Webhooks) with this callback URL and key."))


def _demo_step(config: Settings, access: Access) -> None:
    st.subheader(_("Or explore with demo data"))
    st.write(_("A realistic month of invented deliveries (contacts, deals, tasks), stored "
               "through the real ingest path, labelled as demo everywhere and removable "
               "with one click."))
    if not access.is_admin:
        st.caption(_("An admin can load it here."))
        return
    if st.button(_("Load demo data"), key="load_demo", type="primary",
                 icon=":material/science:"):
        with st.spinner(_("Loading a month of demo deliveries…")):
            try:
                demo_actions.load(access.actor, config, store())
            except (NotAllowed, StoreError) as exc:
                st.error(_("Demo data could not be loaded: {problem}").format(
                    problem=plain(exc)))
                st.stop()
        clear_query_cache()
        st.rerun()


@st.fragment(run_every=WAIT_SECONDS)
def _wait_for_first_delivery() -> None:
    if cached_query(event_count) > 0:
        st.rerun()  # the whole page: Overview replaces this screen
    st.caption(_("Waiting for the first delivery… this page switches to the Overview by "
                 "itself when it arrives."))


def render_first_run() -> None:
    """Show the first-run screen."""
    config = settings()
    access = current()
    st.title(_("Welcome to the Ploomes webhook monitor"))
    st.write(_("No delivery has been stored yet. Connect Ploomes in two steps, or load demo "
               "data to look around first."))
    left, right = st.columns([3, 2], gap="large")
    with left:
        _receiver_step(config)
        _key_step(config, access)
    with right:
        _demo_step(config, access)
    _wait_for_first_delivery()
