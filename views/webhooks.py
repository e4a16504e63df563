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

from ploomes import i18n
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
from ploomes.i18n import N_, _, ngettext
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

NO_KEY_HELP = N_("""
This page talks to the Ploomes API, which needs the integration's **User-Key**
(Ploomes → Administração → Integração). Set it in the environment as `PLOOMES_USER_KEY`,
or in `.streamlit/secrets.toml` beside `dashboard.py`:
""")
SECRETS_EXAMPLE = 'PLOOMES_USER_KEY = "your-user-key"'
SANDBOX_HELP = N_("To try everything offline, start the local Ploomes sandbox and point the "
                 "dashboard at it:")
# the subscriptions table: the crm module's columns, as the page names them
FRAME_COLUMNS = {"Entity": N_("Entity"), "Action": N_("Action"), "Callback URL": N_("Callback URL"),
                 "Active": N_("Active"), "Validation key": N_("Validation key"),
                 "Key accepted here": N_("Key accepted here"), "Creator": N_("Creator"),
                 "Created": N_("Created"), "Last delivery": N_("Last delivery"),
                 "Warning": N_("Warning"), "Deliveries 24 h": N_("Deliveries 24 h")}
KEY_MATCHES = {"yes": N_("yes"), "no": N_("no"), "unknown": N_("unknown")}
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
        hint = _("Ploomes refused the User-Key: check `PLOOMES_USER_KEY` (or "
                 "`.streamlit/secrets.toml`) and that the integration user may manage "
                 "webhooks.")
    elif isinstance(exc, PloomesRateLimited):
        hint = _("Ploomes limits calls to about 120 a minute per key: wait a minute and retry.")
    elif isinstance(exc, PloomesUnavailable):
        hint = _("Check that {url} is reachable (`PLOOMES_API_URL`) and retry in a moment.")\
            .format(url=code(cfg.api_url))
    elif isinstance(exc, PloomesNotFound):
        hint = _("It may have been removed meanwhile: reload the page.")
    else:
        hint = _("Check the values and try again.")
    status = f" (HTTP {exc.status})" if exc.status else ""
    st.error(_("Could not {doing}. Ploomes answered: “{answer}”{status}. {hint}").format(
        doing=plain(doing), answer=plain(_scrub(exc.message, cfg)), status=status, hint=hint))


def _flash(kind: str, text: str, table: list[dict] | None = None) -> None:
    """Keep a message to show after the next rerun."""
    st.session_state.setdefault(FLASH, []).append((kind, text, table))


def _show_flash() -> None:
    for kind, text, table in st.session_state.pop(FLASH, []):
        getattr(st, kind)(text)
        if table:
            st.dataframe(pd.DataFrame(table), hide_index=True)


def _show_instructions() -> None:
    st.warning(_("No Ploomes User-Key is configured, so subscriptions cannot be listed."))
    st.markdown(_(NO_KEY_HELP))
    st.code(SECRETS_EXAMPLE, language="toml")
    st.markdown(_(SANDBOX_HELP))
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
    return i18n.format_datetime(pd.Timestamp(value).to_pydatetime(), tz)


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
    st.error(_("Could not {doing}: {problem}.").format(doing=plain(doing), problem=plain(exc)))


def _sync(client: PloomesClient, cfg: Settings, access: Access | None) -> None:
    """Sync users and fields: automatically (access None), or an admin's audited request."""
    try:
        with st.spinner(_("Syncing users and custom fields from Ploomes…")):
            if access is None:
                result = directory.sync_directory(client, common.store())
            else:
                result = subscription_actions.sync_directory(access.actor, cfg,
                                                             common.store(), client)
    except PloomesError as exc:
        if access is None:
            st.warning(_("Automatic sync of users and fields failed: {problem}. Names may be "
                         "missing; an admin can retry with the button.").format(
                             problem=plain(_scrub(exc.message, cfg))))
        else:
            _show_api_error(exc, _("sync users and fields"), cfg)
        return
    except NotAllowed as exc:
        _refused(exc, _("sync users and fields"))
        return
    except StoreError as exc:
        st.warning(_("Users and fields could not be saved: {problem}").format(
            problem=plain(exc)))
        return
    if access is not None:
        account = (_(" of account {name} ({id})").format(
                       name=plain(result.account_name, HEADER_LIMIT), id=result.account_id)
                   if result.account_name else
                   _(" of account {id}").format(id=result.account_id)
                   if result.account_id is not None
                   else _(" (Ploomes did not say which account: kept as “unknown account”)"))
        st.success(_("Synced {users} users, {fields} custom fields and {lookups} names of "
                     "stages, pipelines, tags…{account}.").format(
                         users=result.users, fields=result.fields, lookups=result.lookups,
                         account=account))


def _sync_section(client: PloomesClient, cfg: Settings, access: Access) -> None:
    left, right = st.columns([3, 1])
    last = common.run_query(status_queries.last_synced_at)
    pressed = access.is_admin and right.button(
        _("Sync users and fields"), key="sync_directory",
        help=_("Fetch user names and custom-field labels from Ploomes so every page shows "
               "names."))
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
        st.caption(_("Ploomes API: {url} · users and fields synced {when} (automatically "
                     "every {minutes} min)").format(
                         url=code(cfg.api_url),
                         when=common.fmt_time(last) if last else _("never"),
                         minutes=SYNC_EVERY_MINUTES))


def _subscriptions_section(webhooks: list[dict], catalog: subscriptions.Catalog,
                           cfg: Settings) -> None:
    st.subheader(_("Subscriptions"))
    if not webhooks:
        st.info(_("This account has no webhook subscriptions yet."))
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
        _("never") if v is None or pd.isna(v) else
        f"{_fmt_local(v, cfg.timezone)} ({common.fmt_ago((now - v).total_seconds())})"
        for v in frame["Last delivery"]]
    refused = frame[(frame["Key accepted here"] == "no") & frame["Callback URL"].map(
        lambda u: subscriptions.same_callback(u, _callback_default(cfg)))]
    shown = frame.assign(**{"Key accepted here": frame["Key accepted here"].map(
        lambda v: _(KEY_MATCHES[v]) if v in KEY_MATCHES else v)})
    st.dataframe(shown, hide_index=True, key="subscriptions_table", column_config={
        "Id": st.column_config.NumberColumn("Id", format="%d"),
        **{name: st.column_config.Column(_(label)) for name, label in FRAME_COLUMNS.items()},
        "Key accepted here": st.column_config.TextColumn(
            _("Key accepted here"), help=_("Whether this receiver accepts the subscription's "
                                           "validation key (unknown when Ploomes hides it)")),
    })
    st.caption(_("Times in {zone}. Deliveries counted from what this receiver stored (demo "
                 "data and test deliveries excluded).").format(zone=cfg.timezone))
    for webhook_id, why in warnings.items():
        hook = next(w for w in webhooks if int(w["Id"]) == webhook_id)
        st.warning(_("Subscription {id} ({entity} {action}) looks silent: {why}. Check that it "
                     "is active in Ploomes and that its callback URL reaches this receiver.")
                   .format(id=webhook_id, entity=plain(catalog.entity(hook.get("EntityId"))),
                           action=plain(catalog.action(hook.get("ActionId"))),
                           why=plain(why)))
    if len(refused):
        st.warning(ngettext(
            "{count} subscription for this receiver carries a validation key it does not "
            "accept, so its deliveries are refused: {ids}.",
            "{count} subscriptions for this receiver carry a validation key it does not "
            "accept, so their deliveries are refused: {ids}.", len(refused)).format(
                count=len(refused), ids=", ".join(str(i) for i in refused["Id"])))


def _is_active(webhooks: list[dict], webhook_id: int) -> bool:
    """Return whether the subscription with this id is active."""
    return any(int(w["Id"]) == webhook_id and w.get("Active", True) is not False
               for w in webhooks if w.get("Id") is not None)


def _callback_default(cfg: Settings) -> str:
    return subscriptions.default_callback_url(cfg.callback_url, cfg.receiver_url)


def _coverage_section(webhooks: list[dict], catalog: subscriptions.Catalog,
                      cfg: Settings) -> None:
    url = common.callback_url()
    st.subheader(_("Coverage"))
    if url:
        st.caption(_("Which entity × action pairs are subscribed for {url} (✓ active, "
                     "“paused” inactive).").format(url=code(url)))
    else:
        st.caption(_("Which entity × action pairs are subscribed, for any callback URL "
                     "(✓ active, “paused” inactive): PLOOMES_CALLBACK_URL is not set."))
    grid = subscriptions.coverage_grid(webhooks, url, catalog).replace("paused", _("paused"))
    grid.index.name = _("Entity")
    st.dataframe(grid, key="coverage_grid")


def _generate_key(access: Access, cfg: Settings) -> None:
    try:
        key = key_actions.generate(access.actor, cfg, common.store())
    except (NotAllowed, StoreError) as exc:
        _refused(exc, _("generate a validation key"))
    except (OSError, ValueError) as exc:
        st.error(_("The new key could not be stored in the data dir: {problem}").format(
            problem=plain(exc)))
    else:
        st.session_state[CHOSEN_KEY] = key
        st.success(_("New validation key {key} stored: the receiver accepts it from now on.")
                   .format(key=plain(mask_secret(key))))


def _register_section(client: PloomesClient, webhooks: list[dict],
                      catalog: subscriptions.Catalog, cfg: Settings, access: Access) -> None:
    st.subheader(_("Register a subscription"))
    configured = common.callback_url()
    if not configured:
        st.warning(_(common.CALLBACK_MISSING), icon=":material/link_off:")
    if st.button(_("Generate a new validation key"), key="generate_key",
                 help=_("Create a strong key, store it so this receiver accepts it, and use "
                        "it for the subscriptions registered below.")):
        _generate_key(access, cfg)
    key = _receiver_key(cfg)
    entity_ids = sorted(catalog.entities) or sorted(subscriptions.KNOWN_ENTITIES)
    action_ids = sorted(catalog.actions)
    with st.form("register_form"):
        entity_id = st.selectbox(
            _("Entity"), entity_ids, format_func=catalog.entity, key="register_entity",
            index=entity_ids.index(2) if 2 in entity_ids else 0)
        chosen = st.multiselect(_("Actions (one subscription each)"), action_ids,
                                format_func=catalog.action, key="register_actions")
        url = st.text_input(_("Callback URL"), value=configured or "",
                            key="register_callback_url",
                            placeholder="https://hooks.empresa.com.br/ploomes/webhook",
                            help=_("The receiver's public HTTPS address, from "
                                   "PLOOMES_CALLBACK_URL (plain http only for localhost)."))
        st.markdown(_("Validation key: {key}").format(key=code(mask_secret(key)))
                    + ("" if key else _(" — none yet: one is generated and stored on submit")))
        submitted = st.form_submit_button(_("Register"), key="register_submit")
    if not submitted:
        return
    try:
        created, key = subscription_actions.register(
            access.actor, cfg, common.store(), client, webhooks, entity_id, chosen, url, key,
            catalog)
    except (NotAllowed, StoreError) as exc:
        _refused(exc, _("register the subscription"))
        return
    except ValueError as exc:  # DuplicateSubscription too: a bad URL, no action, a duplicate
        st.error(_("Refused: {problem}.").format(problem=plain(exc)))
        return
    except OSError as exc:
        st.error(_("A validation key could not be stored in the data dir: {problem}").format(
            problem=plain(exc)))
        return
    except PloomesError as exc:
        _show_api_error(exc, _("register the subscription"), cfg)
        return
    st.session_state[CHOSEN_KEY] = key
    _flash("success", ngettext("Created {count} subscription for {url}.",
                               "Created {count} subscriptions for {url}.", len(created))
           .format(count=len(created), url=code(url)), [
        {"Id": c.get("Id"), _("Entity"): catalog.entity(c.get("EntityId")),
         _("Action"): catalog.action(c.get("ActionId")), _("Callback URL"): c.get("CallbackUrl"),
         _("Validation key"): mask_secret(c.get("ValidationKey")),
         _("Active"): c.get("Active")}
        for c in created])
    st.rerun()


def _manage_section(client: PloomesClient, webhooks: list[dict],
                    catalog: subscriptions.Catalog, cfg: Settings, access: Access) -> None:
    if not webhooks:
        return
    st.subheader(_("Test, pause, change or delete a subscription"))
    by_id = {int(w["Id"]): w for w in webhooks if w.get("Id") is not None}

    def label(webhook_id: int) -> str:
        hook = by_id[webhook_id]
        state = "" if hook.get("Active", True) is not False else _(" (paused)")
        return (f"{webhook_id} · {catalog.entity(hook.get('EntityId'))} "
                f"{catalog.action(hook.get('ActionId'))}{state} → {hook.get('CallbackUrl')}")

    # selectbox options show text as it is: cut, not escaped
    webhook_id = st.selectbox(_("Subscription"), sorted(by_id),
                              format_func=lambda i: cut(label(i), HEADER_LIMIT),
                              key="manage_subscription")
    hook = by_id[webhook_id]
    active = hook.get("Active", True) is not False
    test_col, pause_col, delete_col = st.columns(3)
    if test_col.button(_("Send a test delivery"), key="test_delivery",
                       help=_("POST an example delivery with this subscription's WebhookId "
                              "and key to its callback URL, as Ploomes would. The receiver "
                              "stores it as a test: left out of histories, counts and "
                              "health.")):
        _send_test(hook, cfg, access)
    if pause_col.button(_("Pause…") if active else _("Re-activate…"), key="active_start",
                        help=_("Ploomes stops delivering while a subscription is paused; it "
                               "keeps its settings.") if active else
                        _("Ploomes delivers this subscription's changes again.")):
        st.session_state[CONFIRM_ACTIVE] = (webhook_id, not active)
    if delete_col.button(_("Delete…"), key="delete_start"):
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
    status, body = answer[1], answer[2]
    (st.success if 200 <= status < 300 else st.error)(
        _("The receiver answered HTTP {status} to the test delivery for {id}.").format(
            status=status, id=webhook_id))
    if isinstance(body, dict | list):
        st.json(body)
    else:
        st.code(str(body))
    delivery_id = body.get("delivery_id") if isinstance(body, dict) else None
    if isinstance(delivery_id, int) and common.page_available(EVENTS_PAGE):
        st.page_link(EVENTS_PAGE, label=_("Open the test delivery (marked “test”)"),
                     icon=":material/science:",
                     query_params={"event": str(delivery_id), "tests": "1"})


def _pending(key: str, by_id: dict[int, dict]):
    """The confirmation waiting under `key` (its webhook id first, or alone), or None;
    one whose subscription is gone is dropped."""
    pending = st.session_state.get(key)
    if pending is None:
        return None
    webhook_id = pending[0] if isinstance(pending, tuple | list) else pending
    if webhook_id not in by_id:
        st.session_state.pop(key, None)
        return None
    return pending


def _confirm_active(client: PloomesClient, by_id: dict[int, dict], label, cfg: Settings,
                    access: Access) -> None:
    pending = _pending(CONFIRM_ACTIVE, by_id)
    if pending is None:
        return
    webhook_id, active = pending
    if active:
        st.info(_("Re-activate subscription {name}? Ploomes delivers its changes again from "
                  "now on (what happened while it was paused is not sent).").format(
                      name=plain(label(webhook_id))))
    else:
        st.warning(_("Pause subscription {name}? Ploomes stops delivering these changes until "
                     "it is re-activated; changes made meanwhile are never delivered.").format(
                         name=plain(label(webhook_id))))
    yes, no = st.columns(2)
    doing = (_("re-activate subscription {id}") if active
             else _("pause subscription {id}")).format(id=webhook_id)
    if yes.button(_("Yes, re-activate it") if active else _("Yes, pause it"),
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
        _flash("success", (_("Re-activated subscription {name}.") if active
                           else _("Paused subscription {name}.")).format(
                               name=plain(label(webhook_id))))
        st.rerun()
    if no.button(_("Cancel"), key="active_cancel"):
        st.session_state.pop(CONFIRM_ACTIVE, None)
        st.rerun()


def _confirm_delete(client: PloomesClient, by_id: dict[int, dict], label, cfg: Settings,
                    access: Access) -> None:
    pending = _pending(CONFIRM_DELETE, by_id)
    if pending is None:
        return
    st.warning(_("Delete subscription {name}? Ploomes stops delivering these changes at "
                 "once; events already stored stay.").format(name=plain(label(pending))))
    yes, no = st.columns(2)
    doing = _("delete subscription {id}").format(id=pending)
    if yes.button(_("Yes, delete it"), key="delete_confirm", type="primary"):
        try:
            subscription_actions.delete(access.actor, cfg, common.store(), client,
                                        by_id[pending])
        except (NotAllowed, StoreError) as exc:
            _refused(exc, doing)
            return
        except PloomesError as exc:
            _show_api_error(exc, doing, cfg)
            return
        st.session_state.pop(CONFIRM_DELETE, None)
        _flash("success", _("Deleted subscription {name}.").format(name=plain(label(pending))))
        st.rerun()
    if no.button(_("Cancel"), key="delete_cancel"):
        st.session_state.pop(CONFIRM_DELETE, None)
        st.rerun()


def _edit_form(hook: dict, cfg: Settings) -> None:
    """Ask for a subscription's new callback URL or validation key; confirmed below."""
    webhook_id = int(hook["Id"])
    key = _receiver_key(cfg)
    choices = [KEEP_KEY, RECEIVER_KEY, NEW_KEY] if key else [KEEP_KEY, NEW_KEY]
    shown = {KEEP_KEY: _("Keep its key"),
             RECEIVER_KEY: _("This receiver's key ({key})").format(key=mask_secret(key)),
             NEW_KEY: _("A new key, generated and stored here")}
    with st.expander(_("Change subscription {id}").format(id=webhook_id)):
        with st.form(f"edit_form_{webhook_id}"):
            url = st.text_input(_("Callback URL"), value=hook.get("CallbackUrl") or "",
                                key=f"edit_callback_url_{webhook_id}",
                                help=_("The receiver's public HTTPS address (plain http only "
                                       "for localhost)."))
            # radio options are Markdown: the masked key is escaped
            rekey = st.radio(_("Validation key"), choices, key=f"edit_key_{webhook_id}",
                             format_func=lambda c: plain(shown[c]), horizontal=True)
            saved = st.form_submit_button(_("Save changes…"),
                                          key=f"edit_submit_{webhook_id}")
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
        st.info(_("Nothing was changed."))
        return
    st.session_state[CONFIRM_EDIT] = (webhook_id, changes)


def _confirm_edit(client: PloomesClient, by_id: dict[int, dict], label, cfg: Settings,
                  access: Access) -> None:
    pending = _pending(CONFIRM_EDIT, by_id)
    if pending is None:
        return
    webhook_id, changes = pending
    said = []
    if "callback_url" in changes:
        said.append(_("callback URL → {url}").format(url=code(changes["callback_url"])))
    if changes.get("validation_key") == NEW_KEY:
        said.append(_("validation key → a new one, generated and stored here"))
    elif "validation_key" in changes:
        said.append(_("validation key → {key}").format(
            key=plain(mask_secret(changes["validation_key"]))))
    st.warning(_("Change subscription {name}: {changes}? Ploomes uses the new values for its "
                 "next deliveries.").format(name=plain(label(webhook_id)),
                                            changes="; ".join(said)))
    yes, no = st.columns(2)
    doing = _("change subscription {id}").format(id=webhook_id)
    if yes.button(_("Yes, change it"), key="edit_confirm", type="primary"):
        if changes.get("validation_key") == NEW_KEY:
            try:
                changes = {**changes, "validation_key": key_actions.generate(
                    access.actor, cfg, common.store())}
            except (NotAllowed, StoreError) as exc:
                _refused(exc, _("generate a validation key"))
                return
            except (OSError, ValueError) as exc:
                st.error(_("The new key could not be stored in the data dir: {problem}")
                         .format(problem=plain(exc)))
                return
            st.session_state[CHOSEN_KEY] = changes["validation_key"]
        try:
            subscription_actions.edit(access.actor, cfg, common.store(), client,
                                      by_id[webhook_id], changes)
        except (NotAllowed, StoreError) as exc:
            _refused(exc, doing)
            return
        except ValueError as exc:
            st.error(_("Refused: {problem}.").format(problem=plain(exc)))
            return
        except PloomesError as exc:
            _show_api_error(exc, doing, cfg)
            return
        st.session_state.pop(CONFIRM_EDIT, None)
        names = {"callback_url": _("callback URL"), "validation_key": _("validation key")}
        _flash("success", _("Changed subscription {id}: {changes}.").format(
            id=webhook_id, changes=plain(", ".join(sorted(names.get(c, c) for c in changes)))))
        st.rerun()
    if no.button(_("Cancel"), key="edit_cancel"):
        st.session_state.pop(CONFIRM_EDIT, None)
        st.rerun()


def _send_test(hook: dict, cfg: Settings, access: Access) -> None:
    key = hook.get("ValidationKey")
    if not key:
        key = _receiver_key(cfg)
        st.info(_("Ploomes does not show this subscription's validation key; the test "
                  "delivery carries this receiver's key instead."))
    account = common.run_query(status_queries.synced_account)
    try:
        answer = subscription_actions.send_test(access.actor, cfg, common.store(), hook, key,
                                                account)
    except (NotAllowed, StoreError) as exc:
        _refused(exc, _("send a test delivery"))
        return
    except (ValueError, subscriptions.CallbackUnreachable) as exc:
        st.error(_("The test delivery could not be sent: {problem}. Check that the receiver is "
                   "running and that the callback URL reaches it.").format(problem=plain(exc)))
        return
    st.session_state[TEST_ANSWER] = (int(hook["Id"]), answer.status, answer.body)


# -- page -------------------------------------------------------------------------------

def main() -> None:
    """Render the Webhooks page."""
    cfg = common.settings()
    access = current()
    st.title(_("Webhooks"))
    _show_flash()
    if not cfg.user_key:
        _show_instructions()
        return
    try:
        client = PloomesClient(cfg.api_url, cfg.user_key, timeout=10.0, retry_total=2,
                               backoff_factor=0.3)
    except PloomesError as exc:
        _show_api_error(exc, _("use the Ploomes API"), cfg)
        return
    try:
        account = hashlib.sha256(cfg.user_key.encode("utf-8")).hexdigest()[:16]
        try:
            catalog = _named(_catalog(cfg.api_url, account, client))
            webhooks = client.list_webhooks()
        except PloomesError as exc:
            _show_api_error(exc, _("list the subscriptions"), cfg)
            return
        _sync_section(client, cfg, access)
        _subscriptions_section(webhooks, catalog, cfg)
        _coverage_section(webhooks, catalog, cfg)
        if not access.is_admin:
            st.info(_("You can see everything here; registering, changing, testing and "
                      "deleting subscriptions is for admins (PLOOMES_DASHBOARD_ADMINS)."))
            return
        _register_section(client, webhooks, catalog, cfg, access)
        _manage_section(client, webhooks, catalog, cfg, access)
    finally:
        client.close()


main()
