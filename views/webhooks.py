"""Webhooks: the account's Ploomes subscriptions, what the receiver saw of each, and (for
admins) registering, pausing and re-activating, editing, testing and deleting them
through `ploomes.actions`, which checks the role again and records each change in the
audit trail. Every change asks for a confirmation first."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from ploomes.actions import NotAllowed
from ploomes.actions import keys as key_actions
from ploomes.actions import subscriptions as subscription_actions
from ploomes.config import Settings, mask_secret
from ploomes.crm import directory, subscriptions
from ploomes.crm.api import (
    PloomesAuthError,
    PloomesClient,
    PloomesError,
    PloomesNotFound,
    PloomesRateLimited,
    PloomesUnavailable,
)
from ploomes.intake.keys import accepted_keys
from ploomes.queries import status as status_queries
from ploomes.queries.users import user_names
from ploomes.store import StoreError
from views import common
from views.access import Access, current
from views.text import HEADER_LIMIT, code, cut, plain

EVENTS_PAGE = "views/events.py"

SYNC_EVERY_MINUTES = 30  # automatic users/fields sync: at most this often
CATALOG_TTL = 3600  # entity and action names barely ever change
FLASH = "webhooks_flash"
CONFIRM_DELETE = "webhooks_confirm_delete"
CONFIRM_ACTIVE = "webhooks_confirm_active"  # (webhook id, the Active it would get)
CONFIRM_EDIT = "webhooks_confirm_edit"  # (webhook id, {change: value})
KEEP_KEY, RECEIVER_KEY, NEW_KEY = "keep", "receiver", "new"
CHOSEN_KEY = "webhooks_validation_key"
TEST_ANSWER = "webhooks_test_answer"
AUTO_SYNC_TRIED = "webhooks_auto_sync_tried"

NO_KEY_HELP = """
This page talks to the Ploomes API, which needs the integration's **User-Key**
(Ploomes → Administração → Integração). Set it in the environment as `PLOOMES_USER_KEY`,
or in `.streamlit/secrets.toml` beside `dashboard.py`:
"""
SECRETS_EXAMPLE = 'PLOOMES_USER_KEY = "your-user-key"'
SANDBOX_HELP = "To try everything offline, start the local Ploomes sandbox and point the " \
               "dashboard at it:"
SANDBOX_COMMANDS = (
    "python -m ploomes sandbox --port 8765\n"
    "PLOOMES_API_URL=http://127.0.0.1:8765 PLOOMES_USER_KEY=sandbox-key "
    "streamlit run dashboard.py"
)


# -- helpers --------------------------------------------------------------------------

def _scrub(text: str, cfg: Settings) -> str:
    """Return text with the User-Key masked, whatever produced it."""
    if cfg.user_key and text:
        return text.replace(cfg.user_key, mask_secret(cfg.user_key))
    return text


def _show_api_error(exc: PloomesError, doing: str, cfg: Settings) -> None:
    """Show a Ploomes failure as st.error: what failed, Ploomes' words, what to do."""
    if isinstance(exc, PloomesAuthError):
        hint = ("Ploomes refused the User-Key: check `PLOOMES_USER_KEY` (or "
                "`.streamlit/secrets.toml`) and that the integration user may manage webhooks.")
    elif isinstance(exc, PloomesRateLimited):
        hint = "Ploomes limits calls to about 120 a minute per key: wait a minute and retry."
    elif isinstance(exc, PloomesUnavailable):
        hint = (f"Check that {code(cfg.api_url)} is reachable (`PLOOMES_API_URL`) and retry "
                "in a moment.")
    elif isinstance(exc, PloomesNotFound):
        hint = "It may have been removed meanwhile: reload the page."
    else:
        hint = "Check the values and try again."
    st.error(f"Could not {plain(doing)}. Ploomes answered: “{plain(_scrub(exc.message, cfg))}”"
             f"{f' (HTTP {exc.status})' if exc.status else ''}. {hint}")


def _flash(kind: str, text: str, table: list[dict] | None = None) -> None:
    """Keep a message to show after the next rerun."""
    st.session_state.setdefault(FLASH, []).append((kind, text, table))


def _show_flash() -> None:
    for kind, text, table in st.session_state.pop(FLASH, []):
        getattr(st, kind)(text)
        if table:
            st.dataframe(pd.DataFrame(table), hide_index=True)


def _show_instructions() -> None:
    st.warning("No Ploomes User-Key is configured, so subscriptions cannot be listed.")
    st.markdown(NO_KEY_HELP)
    st.code(SECRETS_EXAMPLE, language="toml")
    st.markdown(SANDBOX_HELP)
    st.code(SANDBOX_COMMANDS, language="bash")


@st.cache_data(ttl=CATALOG_TTL, show_spinner=False)
def _catalog(api_url: str, account: str, _client: PloomesClient) -> subscriptions.Catalog:
    # api_url and account (a hash of the key, never the key) are the cache key
    return subscriptions.load_catalog(_client)


def _named(catalog: subscriptions.Catalog) -> subscriptions.Catalog:
    """The catalog with Ploomes' own names for the entities and actions it knows."""
    entity_ids = set(catalog.entities) | set(subscriptions.KNOWN_ENTITIES)
    return subscriptions.Catalog(
        {i: common.entity_name(catalog.entity(i)) for i in entity_ids},
        {i: common.action_name(catalog.action(i)) for i in catalog.actions})


def _fmt_local(value: datetime | None, tz: str) -> str:
    if value is None or pd.isna(value):
        return "—"
    return pd.Timestamp(value).tz_convert(tz).strftime("%d/%m/%Y %H:%M")


def _receiver_key(cfg: Settings) -> str | None:
    """Return the key new subscriptions get: one generated here, else the receiver's first."""
    chosen = st.session_state.get(CHOSEN_KEY)
    keys = accepted_keys(cfg)
    if chosen and chosen in keys:
        return chosen
    return keys[0] if keys else None


# -- sections ---------------------------------------------------------------------------

def _refused(exc: NotAllowed | StoreError, doing: str) -> None:
    """Say why an action was not done: not an admin, or the audit trail cannot be written."""
    st.error(f"Could not {plain(doing)}: {plain(exc)}.")


def _sync(client: PloomesClient, cfg: Settings, access: Access | None) -> None:
    """Sync users and fields: automatically (access None), or an admin's audited request."""
    try:
        with st.spinner("Syncing users and custom fields from Ploomes…"):
            if access is None:
                result = directory.sync_directory(client, common.store())
            else:
                result = subscription_actions.sync_directory(access.actor, cfg,
                                                             common.store(), client)
    except PloomesError as exc:
        if access is None:
            st.warning(f"Automatic sync of users and fields failed: "
                       f"{plain(_scrub(exc.message, cfg))}. Names may be missing; an admin "
                       "can retry with the button.")
        else:
            _show_api_error(exc, "sync users and fields", cfg)
        return
    except NotAllowed as exc:
        _refused(exc, "sync users and fields")
        return
    except StoreError as exc:
        st.warning(f"Users and fields could not be saved: {plain(exc)}")
        return
    if access is not None:
        account = (f" of account {plain(result.account_name, HEADER_LIMIT)} "
                   f"({result.account_id})" if result.account_name else
                   f" of account {result.account_id}" if result.account_id is not None
                   else " (Ploomes did not say which account: kept as “unknown account”)")
        st.success(f"Synced {result.users} users, {result.fields} custom fields and "
                   f"{result.lookups} names of stages, pipelines, tags…{account}.")


def _sync_section(client: PloomesClient, cfg: Settings, access: Access) -> None:
    left, right = st.columns([3, 1])
    last = common.run_query(status_queries.last_synced_at)
    pressed = access.is_admin and right.button(
        "Sync users and fields", key="sync_directory",
        help="Fetch user names and custom-field labels from Ploomes so every page shows "
             "names.")
    if pressed:
        _sync(client, cfg, access)
        last = common.run_query(status_queries.last_synced_at)
    else:
        # Names are kept fresh for everyone; a failing automatic sync is retried at most
        # once per interval per session.
        tried = st.session_state.get(AUTO_SYNC_TRIED)
        if directory.sync_due(last, SYNC_EVERY_MINUTES) and (
                tried is None or time.monotonic() - tried > SYNC_EVERY_MINUTES * 60):
            st.session_state[AUTO_SYNC_TRIED] = time.monotonic()
            _sync(client, cfg, None)
            last = common.run_query(status_queries.last_synced_at)
    with left:
        st.caption(f"Ploomes API: {code(cfg.api_url)} · users and fields synced "
                   f"{common.fmt_time(last) if last else 'never'} "
                   f"(automatically every {SYNC_EVERY_MINUTES} min)")


def _subscriptions_section(webhooks: list[dict], catalog: subscriptions.Catalog,
                           cfg: Settings) -> None:
    st.subheader("Subscriptions")
    if not webhooks:
        st.info("This account has no webhook subscriptions yet.")
        return
    now = datetime.now(UTC)
    stats = common.run_query(status_queries.webhook_stats, now=now)
    # subscriptions are the User-Key's account's: its users name their creators
    users = common.run_query(user_names, common.run_query(status_queries.synced_account))
    created = {int(w["Id"]): subscriptions.parse_ploomes_time(w.get("CreateDate"), cfg.timezone)
               for w in webhooks if w.get("Id") is not None}
    # An inactive subscription is silent on purpose.
    active = [i for i in created if _is_active(webhooks, i)]
    warnings = subscriptions.silence_warnings(active, stats, now, created=created)
    frame = subscriptions.subscriptions_frame(webhooks, catalog, users, stats, warnings,
                                          cfg.timezone, accepted_keys(cfg))
    frame["Created"] = [_fmt_local(v, cfg.timezone) for v in frame["Created"]]
    frame["Last delivery"] = [
        "never" if v is None or pd.isna(v) else
        f"{_fmt_local(v, cfg.timezone)} ({common.fmt_ago((now - v).total_seconds())})"
        for v in frame["Last delivery"]]
    st.dataframe(frame, hide_index=True, key="subscriptions_table", column_config={
        "Id": st.column_config.NumberColumn("Id", format="%d"),
        "Key accepted here": st.column_config.TextColumn(
            "Key accepted here", help="Whether this receiver accepts the subscription's "
                                      "validation key (unknown when Ploomes hides it)"),
    })
    st.caption(f"Times in {cfg.timezone}. Deliveries counted from what this receiver stored "
               "(demo data and test deliveries excluded).")
    for webhook_id, why in warnings.items():
        hook = next(w for w in webhooks if int(w["Id"]) == webhook_id)
        st.warning(f"Subscription {webhook_id} ({plain(catalog.entity(hook.get('EntityId')))} "
                   f"{plain(catalog.action(hook.get('ActionId')))}) looks silent: "
                   f"{plain(why)}. Check that it is active in Ploomes and that its callback URL "
                   "reaches this receiver.")
    refused = frame[(frame["Key accepted here"] == "no") & frame["Callback URL"].map(
        lambda u: subscriptions.same_callback(u, _callback_default(cfg)))]
    if len(refused):
        st.warning(f"{len(refused)} subscription(s) for this receiver carry a validation key "
                   "it does not accept, so their deliveries are refused: "
                   f"{', '.join(str(i) for i in refused['Id'])}.")


def _is_active(webhooks: list[dict], webhook_id: int) -> bool:
    """Return whether the subscription with this id is active."""
    return any(int(w["Id"]) == webhook_id and w.get("Active", True) is not False
               for w in webhooks if w.get("Id") is not None)


def _callback_default(cfg: Settings) -> str:
    return subscriptions.default_callback_url(cfg.callback_url, cfg.receiver_url)


def _coverage_section(webhooks: list[dict], catalog: subscriptions.Catalog,
                      cfg: Settings) -> None:
    url = common.callback_url()
    st.subheader("Coverage")
    if url:
        st.caption(f"Which entity × action pairs are subscribed for {code(url)} (✓ active, "
                   "“paused” inactive).")
    else:
        st.caption("Which entity × action pairs are subscribed, for any callback URL "
                   "(✓ active, “paused” inactive): PLOOMES_CALLBACK_URL is not set.")
    st.dataframe(subscriptions.coverage_grid(webhooks, url, catalog), key="coverage_grid")


def _generate_key(access: Access, cfg: Settings) -> None:
    try:
        key = key_actions.generate(access.actor, cfg, common.store())
    except (NotAllowed, StoreError) as exc:
        _refused(exc, "generate a validation key")
    except (OSError, ValueError) as exc:
        st.error(f"The new key could not be stored in the data dir: {plain(exc)}")
    else:
        st.session_state[CHOSEN_KEY] = key
        st.success(f"New validation key {plain(mask_secret(key))} stored: the receiver "
                   "accepts it from now on.")


def _register_section(client: PloomesClient, webhooks: list[dict],
                      catalog: subscriptions.Catalog, cfg: Settings, access: Access) -> None:
    st.subheader("Register a subscription")
    configured = common.callback_url()
    if not configured:
        st.warning(common.CALLBACK_MISSING, icon=":material/link_off:")
    if st.button("Generate a new validation key", key="generate_key",
                 help="Create a strong key, store it so this receiver accepts it, and use "
                      "it for the subscriptions registered below."):
        _generate_key(access, cfg)
    key = _receiver_key(cfg)
    entity_ids = sorted(catalog.entities) or sorted(subscriptions.KNOWN_ENTITIES)
    action_ids = sorted(catalog.actions)
    with st.form("register_form"):
        entity_id = st.selectbox(
            "Entity", entity_ids, format_func=catalog.entity, key="register_entity",
            index=entity_ids.index(2) if 2 in entity_ids else 0)
        chosen = st.multiselect("Actions (one subscription each)", action_ids,
                                format_func=catalog.action, key="register_actions")
        url = st.text_input("Callback URL", value=configured or "",
                            key="register_callback_url",
                            placeholder="https://hooks.empresa.com.br/ploomes/webhook",
                            help="The receiver's public HTTPS address, from "
                                 "PLOOMES_CALLBACK_URL (plain http only for localhost).")
        st.markdown(f"Validation key: `{mask_secret(key)}`"
                    + ("" if key else " — none yet: one is generated and stored on submit"))
        submitted = st.form_submit_button("Register", key="register_submit")
    if not submitted:
        return
    try:
        created, key = subscription_actions.register(
            access.actor, cfg, common.store(), client, webhooks, entity_id, chosen, url, key,
            catalog)
    except (NotAllowed, StoreError) as exc:
        _refused(exc, "register the subscription")
        return
    except ValueError as exc:  # DuplicateSubscription too: a bad URL, no action, a duplicate
        st.error(f"Refused: {plain(exc)}.")
        return
    except OSError as exc:
        st.error(f"A validation key could not be stored in the data dir: {plain(exc)}")
        return
    except PloomesError as exc:
        _show_api_error(exc, "register the subscription", cfg)
        return
    st.session_state[CHOSEN_KEY] = key
    _flash("success", f"Created {len(created)} subscription(s) for {code(url)}.", [
        {"Id": c.get("Id"), "Entity": catalog.entity(c.get("EntityId")),
         "Action": catalog.action(c.get("ActionId")), "Callback URL": c.get("CallbackUrl"),
         "Validation key": mask_secret(c.get("ValidationKey")), "Active": c.get("Active")}
        for c in created])
    st.rerun()


def _manage_section(client: PloomesClient, webhooks: list[dict],
                    catalog: subscriptions.Catalog, cfg: Settings, access: Access) -> None:
    if not webhooks:
        return
    st.subheader("Test, pause, change or delete a subscription")
    by_id = {int(w["Id"]): w for w in webhooks if w.get("Id") is not None}

    def label(webhook_id: int) -> str:
        hook = by_id[webhook_id]
        state = "" if hook.get("Active", True) is not False else " (paused)"
        return (f"{webhook_id} · {catalog.entity(hook.get('EntityId'))} "
                f"{catalog.action(hook.get('ActionId'))}{state} → {hook.get('CallbackUrl')}")

    # selectbox options show text as it is: cut, not escaped
    webhook_id = st.selectbox("Subscription", sorted(by_id),
                              format_func=lambda i: cut(label(i), HEADER_LIMIT),
                              key="manage_subscription")
    hook = by_id[webhook_id]
    active = hook.get("Active", True) is not False
    test_col, pause_col, delete_col = st.columns(3)
    if test_col.button("Send a test delivery", key="test_delivery",
                       help="POST an example delivery with this subscription's WebhookId "
                            "and key to its callback URL, as Ploomes would. The receiver "
                            "stores it as a test: left out of histories, counts and health."):
        _send_test(hook, cfg, access)
    if pause_col.button("Pause…" if active else "Re-activate…", key="active_start",
                        help="Ploomes stops delivering while a subscription is paused; it "
                             "keeps its settings." if active else
                             "Ploomes delivers this subscription's changes again."):
        st.session_state[CONFIRM_ACTIVE] = (webhook_id, not active)
    if delete_col.button("Delete…", key="delete_start"):
        st.session_state[CONFIRM_DELETE] = webhook_id
    _test_answer(webhook_id)
    _edit_form(hook, cfg)
    _confirm_active(client, by_id, label, cfg, access)
    _confirm_edit(client, by_id, label, cfg, access)
    _confirm_delete(client, by_id, label, cfg, access)


def _test_answer(webhook_id: int) -> None:
    answer = st.session_state.get(TEST_ANSWER)
    if not answer or answer[0] != webhook_id:
        return
    _, status, body = answer
    (st.success if 200 <= status < 300 else st.error)(
        f"The receiver answered HTTP {status} to the test delivery for {webhook_id}.")
    if isinstance(body, dict | list):
        st.json(body)
    else:
        st.code(str(body))
    delivery_id = body.get("delivery_id") if isinstance(body, dict) else None
    if isinstance(delivery_id, int) and common.page_available(EVENTS_PAGE):
        st.page_link(EVENTS_PAGE, label="Open the test delivery (marked “test”)",
                     icon=":material/science:",
                     query_params={"event": str(delivery_id), "tests": "1"})


def _confirm_active(client: PloomesClient, by_id: dict[int, dict], label, cfg: Settings,
                    access: Access) -> None:
    pending = st.session_state.get(CONFIRM_ACTIVE)
    if pending is None:
        return
    webhook_id, active = pending
    if webhook_id not in by_id:
        st.session_state.pop(CONFIRM_ACTIVE, None)
        return
    if active:
        st.info(f"Re-activate subscription {plain(label(webhook_id))}? Ploomes delivers its "
                "changes again from now on (what happened while it was paused is not sent).")
    else:
        st.warning(f"Pause subscription {plain(label(webhook_id))}? Ploomes stops delivering "
                   "these changes until it is re-activated; changes made meanwhile are never "
                   "delivered.")
    yes, no = st.columns(2)
    doing = f"{'re-activate' if active else 'pause'} subscription {webhook_id}"
    if yes.button("Yes, re-activate it" if active else "Yes, pause it",
                  key="active_confirm", type="primary"):
        try:
            subscription_actions.set_active(access.actor, cfg, common.store(), client,
                                            by_id[webhook_id], active)
        except (NotAllowed, StoreError) as exc:
            _refused(exc, doing)
            return
        except PloomesError as exc:
            _show_api_error(exc, doing, cfg)
            return
        st.session_state.pop(CONFIRM_ACTIVE, None)
        _flash("success", f"{'Re-activated' if active else 'Paused'} subscription "
                          f"{plain(label(webhook_id))}.")
        st.rerun()
    if no.button("Cancel", key="active_cancel"):
        st.session_state.pop(CONFIRM_ACTIVE, None)
        st.rerun()


def _confirm_delete(client: PloomesClient, by_id: dict[int, dict], label, cfg: Settings,
                    access: Access) -> None:
    pending = st.session_state.get(CONFIRM_DELETE)
    if pending is None:
        return
    if pending not in by_id:
        st.session_state.pop(CONFIRM_DELETE, None)
        return
    st.warning(f"Delete subscription {plain(label(pending))}? Ploomes stops delivering these "
               "changes at once; events already stored stay.")
    yes, no = st.columns(2)
    if yes.button("Yes, delete it", key="delete_confirm", type="primary"):
        try:
            subscription_actions.delete(access.actor, cfg, common.store(), client,
                                        by_id[pending])
        except (NotAllowed, StoreError) as exc:
            _refused(exc, f"delete subscription {pending}")
            return
        except PloomesError as exc:
            _show_api_error(exc, f"delete subscription {pending}", cfg)
            return
        st.session_state.pop(CONFIRM_DELETE, None)
        _flash("success", f"Deleted subscription {plain(label(pending))}.")
        st.rerun()
    if no.button("Cancel", key="delete_cancel"):
        st.session_state.pop(CONFIRM_DELETE, None)
        st.rerun()


def _edit_form(hook: dict, cfg: Settings) -> None:
    """Ask for a subscription's new callback URL or validation key; confirmed below."""
    webhook_id = int(hook["Id"])
    key = _receiver_key(cfg)
    choices = [KEEP_KEY, RECEIVER_KEY, NEW_KEY] if key else [KEEP_KEY, NEW_KEY]
    shown = {KEEP_KEY: "Keep its key",
             RECEIVER_KEY: f"This receiver's key ({mask_secret(key)})",
             NEW_KEY: "A new key, generated and stored here"}
    with st.expander(f"Change subscription {webhook_id}"):
        with st.form(f"edit_form_{webhook_id}"):
            url = st.text_input("Callback URL", value=hook.get("CallbackUrl") or "",
                                key=f"edit_callback_url_{webhook_id}",
                                help="The receiver's public HTTPS address (plain http only "
                                     "for localhost).")
            # radio options are Markdown: the masked key is escaped
            rekey = st.radio("Validation key", choices, key=f"edit_key_{webhook_id}",
                             format_func=lambda c: plain(shown[c]), horizontal=True)
            saved = st.form_submit_button("Save changes…", key=f"edit_submit_{webhook_id}")
    if not saved:
        return
    changes: dict = {}
    if url.strip() != (hook.get("CallbackUrl") or ""):
        changes["callback_url"] = url.strip()
    if rekey == RECEIVER_KEY and key and hook.get("ValidationKey") != key:
        changes["validation_key"] = key  # Ploomes may hide the current one: None
    elif rekey == NEW_KEY:
        changes["validation_key"] = NEW_KEY
    if not changes:
        st.info("Nothing was changed.")
        return
    st.session_state[CONFIRM_EDIT] = (webhook_id, changes)


def _confirm_edit(client: PloomesClient, by_id: dict[int, dict], label, cfg: Settings,
                  access: Access) -> None:
    pending = st.session_state.get(CONFIRM_EDIT)
    if pending is None:
        return
    webhook_id, changes = pending
    if webhook_id not in by_id:
        st.session_state.pop(CONFIRM_EDIT, None)
        return
    said = []
    if "callback_url" in changes:
        said.append(f"callback URL → {code(changes['callback_url'])}")
    if changes.get("validation_key") == NEW_KEY:
        said.append("validation key → a new one, generated and stored here")
    elif "validation_key" in changes:
        said.append(f"validation key → {plain(mask_secret(changes['validation_key']))}")
    st.warning(f"Change subscription {plain(label(webhook_id))}: {'; '.join(said)}? "
               "Ploomes uses the new values for its next deliveries.")
    yes, no = st.columns(2)
    doing = f"change subscription {webhook_id}"
    if yes.button("Yes, change it", key="edit_confirm", type="primary"):
        if changes.get("validation_key") == NEW_KEY:
            try:
                changes = {**changes, "validation_key": key_actions.generate(
                    access.actor, cfg, common.store())}
            except (NotAllowed, StoreError) as exc:
                _refused(exc, "generate a validation key")
                return
            except (OSError, ValueError) as exc:
                st.error(f"The new key could not be stored in the data dir: {plain(exc)}")
                return
            st.session_state[CHOSEN_KEY] = changes["validation_key"]
        try:
            subscription_actions.edit(access.actor, cfg, common.store(), client,
                                      by_id[webhook_id], changes)
        except (NotAllowed, StoreError) as exc:
            _refused(exc, doing)
            return
        except ValueError as exc:
            st.error(f"Refused: {plain(exc)}.")
            return
        except PloomesError as exc:
            _show_api_error(exc, doing, cfg)
            return
        st.session_state.pop(CONFIRM_EDIT, None)
        _flash("success", f"Changed subscription {webhook_id}: "
                          f"{plain(', '.join(sorted(changes)))}.")
        st.rerun()
    if no.button("Cancel", key="edit_cancel"):
        st.session_state.pop(CONFIRM_EDIT, None)
        st.rerun()


def _send_test(hook: dict, cfg: Settings, access: Access) -> None:
    key = hook.get("ValidationKey")
    if not key:
        key = _receiver_key(cfg)
        st.info("Ploomes does not show this subscription's validation key; the test "
                "delivery carries this receiver's key instead.")
    account = common.run_query(status_queries.synced_account)
    try:
        answer = subscription_actions.send_test(access.actor, cfg, common.store(), hook, key,
                                                account)
    except (NotAllowed, StoreError) as exc:
        _refused(exc, "send a test delivery")
        return
    except (ValueError, subscriptions.CallbackUnreachable) as exc:
        st.error(f"The test delivery could not be sent: {plain(exc)}. Check that the "
                 "receiver is running and that the callback URL reaches it.")
        return
    st.session_state[TEST_ANSWER] = (int(hook["Id"]), answer.status, answer.body)


# -- page -------------------------------------------------------------------------------

def main() -> None:
    """Render the Webhooks page."""
    cfg = common.settings()
    access = current()
    st.title("Webhooks")
    _show_flash()
    if not cfg.user_key:
        _show_instructions()
        return
    try:
        client = PloomesClient(cfg.api_url, cfg.user_key, timeout=10.0, retry_total=2,
                               backoff_factor=0.3)
    except PloomesError as exc:
        _show_api_error(exc, "use the Ploomes API", cfg)
        return
    try:
        account = hashlib.sha256(cfg.user_key.encode("utf-8")).hexdigest()[:16]
        try:
            catalog = _named(_catalog(cfg.api_url, account, client))
            webhooks = client.list_webhooks()
        except PloomesError as exc:
            _show_api_error(exc, "list the subscriptions", cfg)
            return
        _sync_section(client, cfg, access)
        _subscriptions_section(webhooks, catalog, cfg)
        _coverage_section(webhooks, catalog, cfg)
        if not access.is_admin:
            st.info("You can see everything here; registering, changing, testing and "
                    "deleting subscriptions is for admins (PLOOMES_DASHBOARD_ADMINS).")
            return
        _register_section(client, webhooks, catalog, cfg, access)
        _manage_section(client, webhooks, catalog, cfg, access)
    finally:
        client.close()


main()
