"""A local stand-in for the parts of the Ploomes API this project uses.

It answers `/Account`, `/Users`, `/Fields`, `/Fields@Entities`, `/Webhooks@Actions`,
`/Webhooks` (create, list, update — `Active` pauses and re-activates —, delete), the
lookups (`Deals@Stages`, `Deals@Pipelines`, `Deals@Status`, `Deals@LossReasons`,
`Tasks@Types`, `Tags`) and the record collections (`/Contacts`, `/Deals`, …) of
a simulated account in OData envelopes, checks the `User-Key`, caps `$top`, rate-limits
with 429 + `Retry-After`, and answers errors with Ploomes-like bodies. Activity (made
by `ploomes.demo.generator.Simulation`) is delivered to every matching active subscription
exactly as Ploomes would, from a background sender thread, optionally duplicated or
dropped so downstream duplicate and missed-change detection has something to find.

Built on `http.server` so the core package stays free of Flask.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import queue
import random
import re
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlencode, urlsplit
from zoneinfo import ZoneInfo

import requests

from ploomes.config import mask_secret
from ploomes.demo import generator
from ploomes.model.vocabulary import ACTION_IDS, ENTITY_IDS, VALIDATION_HEADER

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765
DEFAULT_USER_KEY = "sandbox-key"
PAGE_CAP = 300
KEPT_REQUESTS = 10_000
KEPT_DELIVERIES = 10_000  # a long --activity-rate run must not grow without bound
# WebhookIds start here, after the account's leading digits (sandbox account → 31045101)
FIRST_WEBHOOK_OFFSET = 5101
# Entities listed by Fields@Entities besides the ones the simulation produces [DOC].
EXTRA_ENTITIES = {3: "Leads", 5: "OrderSections", 7: "Quotes", 8: "QuoteSections",
                  14: "QuoteProducts", 20: "OrderProducts", 36: "InteractionRecords"}
# Non-custom fields, so that `Dynamic eq true` has something to leave out.
SYSTEM_FIELDS = (
    {"Key": "contact_name", "Name": "Nome", "EntityId": 1, "TypeId": 1},
    {"Key": "contact_email", "Name": "E-mail", "EntityId": 1, "TypeId": 1},
    {"Key": "deal_title", "Name": "Título", "EntityId": 2, "TypeId": 1},
    {"Key": "deal_amount", "Name": "Valor", "EntityId": 2, "TypeId": 4},
    {"Key": "task_title", "Name": "Assunto", "EntityId": 12, "TypeId": 1},
)
SIMULATED_ENTITIES = generator.SIMULATED_ENTITIES
DEAL_STATUSES = ((1, "Em aberto"), (2, "Ganho"), (3, "Perdido"))
WEBHOOK_FIELDS = ("EntityId", "ActionId", "CallbackUrl", "ValidationKey", "Active")
WEBHOOK_PROPERTIES = {"Id", *WEBHOOK_FIELDS, "CreatorId", "CreateDate"}


def _account_now() -> str:
    """Return now as Ploomes writes dates: Brazil local time without an offset."""
    return (datetime.now(ZoneInfo("America/Sao_Paulo")).replace(tzinfo=None)
            .isoformat(timespec="milliseconds"))
# Subscriptions made by `--subscribe`: every action the simulation can fire for them.
DEFAULT_SUBSCRIPTIONS = (
    ("Contacts", "Create"), ("Contacts", "Update"), ("Contacts", "Delete"),
    ("Deals", "Create"), ("Deals", "Update"), ("Deals", "Delete"),
    ("Deals", "Win"), ("Deals", "Lose"), ("Deals", "Reopen"),
    ("Tasks", "Create"), ("Tasks", "Update"), ("Tasks", "Delete"),
)


class ApiError(Exception):
    """An error answered to the API caller with a Ploomes-like body."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or {400: "BadRequest", 401: "Unauthorized", 404: "NotFound",
                             405: "MethodNotAllowed", 409: "Conflict",
                             429: "TooManyRequests"}.get(status, "Error")
        self.headers = headers or {}

    def body(self) -> dict:
        """Return the OData error body."""
        return {"error": {"code": self.code, "message": self.message}}


# -- OData query options ---------------------------------------------------------------

_COND = re.compile(
    r"\s*(?P<field>[A-Za-z_]\w*)\s+(?P<op>eq|ne)\s+"
    r"(?P<value>'(?:[^']|'')*'|-?\d+(?:\.\d+)?|true|false|null)\s*",
    re.IGNORECASE,
)
_AND = re.compile(r"and\b", re.IGNORECASE)


def parse_filter(text: str) -> list[tuple[str, str, Any]]:
    """Return the (field, op, value) conditions of a `A eq 1 and B ne 'x'` filter."""
    conditions = []
    pos = 0
    while True:
        match = _COND.match(text, pos)
        if not match:
            raise ApiError(400, "The query specified in the URI is not valid. "
                                f"Syntax error in $filter at position {pos}: {text!r}")
        raw = match["value"]
        if raw.startswith("'"):
            value: Any = raw[1:-1].replace("''", "'")
        elif raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        elif raw.lower() == "null":
            value = None
        else:
            value = float(raw) if "." in raw else int(raw)
        conditions.append((match["field"], match["op"].lower(), value))
        pos = match.end()
        if pos == len(text):
            return conditions
        joined = _AND.match(text, pos)
        if not joined:
            raise ApiError(400, "The query specified in the URI is not valid. Only 'eq'/'ne' "
                                f"conditions joined by 'and' are supported: {text!r}")
        pos = joined.end()


def _check_property(name: str, known: set[str], type_name: str) -> None:
    if known and name not in known:
        raise ApiError(400, f"Could not find a property named '{name}' on type "
                            f"'Ploomes.API.{type_name}'.")


def odata_collection(rows: list[dict], query: dict[str, str], *, name: str, base: str,
                     path: str, page_cap: int = PAGE_CAP, next_links: bool = True,
                     properties: set[str] | None = None) -> dict:
    """Apply $filter, $orderby, $skip, $top (capped) and $select; return the envelope."""
    known = set(properties or ()) | {key for row in rows for key in row}
    type_name = name.rstrip("s") or name
    if query.get("$filter"):
        conditions = parse_filter(query["$filter"])
        for prop, _op, _value in conditions:
            _check_property(prop, known, type_name)
        rows = [r for r in rows
                if all((r.get(f) == v) == (op == "eq") for f, op, v in conditions)]
    if query.get("$orderby"):
        parts = query["$orderby"].split()
        prop = parts[0]
        _check_property(prop, known, type_name)
        descending = len(parts) > 1 and parts[1].lower() == "desc"
        rows = sorted(rows, key=lambda r: (r.get(prop) is None, r.get(prop)), reverse=descending)
    try:
        skip = max(0, int(query.get("$skip") or 0))
        top = max(0, int(query.get("$top") or page_cap))
    except ValueError as exc:
        raise ApiError(400, f"The query specified in the URI is not valid: {exc}") from exc
    top = min(top, page_cap)  # silently, as Ploomes does
    page = rows[skip: skip + top]
    if query.get("$select"):
        selected = [p.strip() for p in query["$select"].split(",") if p.strip()]
        for prop in selected:
            _check_property(prop, known, type_name)
        page = [{p: r.get(p) for p in selected} for r in page]
    envelope: dict[str, Any] = {"@odata.context": f"{base}/$metadata#{name}", "value": page}
    if next_links and len(page) == top and skip + top < len(rows):
        following = {**query, "$skip": str(skip + top), "$top": str(top)}
        envelope["@odata.nextLink"] = f"{base}{path}?{urlencode(following)}"
    return envelope


def _rest_record(record: dict) -> dict:
    """Return a record as the REST API shows it: custom fields as a list, not an object."""
    out = dict(record)
    other = out.get("OtherProperties")
    if isinstance(other, dict):
        listed = []
        for key, value in other.items():
            kind = ("BoolValue" if isinstance(value, bool) else
                    "IntegerValue" if isinstance(value, int) else
                    "DecimalValue" if isinstance(value, float) else
                    "StringValue" if isinstance(value, str) or value is None else
                    "ObjectValueName")
            listed.append({"FieldKey": key, kind: value if kind != "ObjectValueName"
                           else json.dumps(value, ensure_ascii=False)})
        out["OtherProperties"] = listed
    return out


# -- deliveries ------------------------------------------------------------------------

@dataclass
class Delivery:
    """One POST of a delivery body to a subscription's CallbackUrl, and what came of it."""

    seq: int
    webhook_id: int
    callback_url: str
    validation_key: str | None
    entity: str
    action: str
    record_id: int | None
    body: dict
    duplicate: bool = False
    state: str = "queued"  # queued → sent | failed | dropped | cancelled (by stop)
    status: int | None = None
    error: str | None = None
    sent_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    def outcome(self) -> dict:
        """Return what happened to this delivery, JSON-ready."""
        return {"seq": self.seq, "webhook_id": self.webhook_id,
                "callback_url": self.callback_url, "entity": self.entity,
                "action": self.action, "record_id": self.record_id,
                "duplicate": self.duplicate, "state": self.state, "status": self.status,
                "error": self.error, "body": self.body}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Keep-alive connections of API clients would otherwise make server_close() wait.
    block_on_close = False


class _Server6(_Server):
    address_family = socket.AF_INET6


class Sandbox:
    """A simulated Ploomes account served over HTTP on a loopback port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        user_key: str = DEFAULT_USER_KEY,
        seed: int = 0,
        rate_limit: int = 120,
        rate_window: float = 60.0,
        page_cap: int = PAGE_CAP,
        next_links: bool = True,
        actions_endpoint: bool = True,
        duplicate_rate: float = 0.0,
        drop_rate: float = 0.0,
        short_new_rate: float = 0.0,
        delivery_timeout: float = 5.0,
        simulation: generator.Simulation | None = None,
    ):
        if not user_key:
            raise ValueError("the sandbox needs a User-Key to check")
        for name, rate in (("duplicate_rate", duplicate_rate), ("drop_rate", drop_rate),
                           ("short_new_rate", short_new_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {rate}")
        self.user_key = user_key
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.page_cap = page_cap
        self.next_links = next_links
        self.actions_endpoint = actions_endpoint
        self.duplicate_rate = duplicate_rate
        self.drop_rate = drop_rate
        self.short_new_rate = short_new_rate
        self.delivery_timeout = delivery_timeout
        # an account of its own: not the demo data's (generator.DEMO_ACCOUNT_ID)
        self.sim = simulation if simulation is not None else generator.Simulation(
            seed=seed, account_id=generator.SANDBOX_ACCOUNT_ID,
            user_names=generator.SANDBOX_USER_NAMES,
            integration_user=generator.SANDBOX_INTEGRATION_USER)
        self._rng = random.Random(seed + 1)  # its own stream: options don't shift the sim
        self._lock = threading.RLock()  # guards the simulation, subscriptions and counters
        self._webhooks: dict[int, dict] = {}
        self._next_webhook_id = (self.sim.account_id // 1000) * 10000 + FIRST_WEBHOOK_OFFSET
        self._calls: deque[float] = deque()
        self._faults: list[dict] = []
        # (method, path, query) of recent API calls, for tests and curiosity; bounded.
        self.request_log: deque[tuple[str, str, dict]] = deque(maxlen=KEPT_REQUESTS)
        self.rate_limited = 0
        self._deliveries: list[Delivery] = []
        self._forgotten = 0  # outcomes cleared or beyond KEPT_DELIVERIES; seq keeps counting
        self._deliveries_lock = threading.Lock()
        self._outbox: queue.Queue[Delivery | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, port), _handler_for(self))

    # -- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Return the base URL of the API, e.g. http://127.0.0.1:8765."""
        # after bind it is getsockname()'s (str, int, ...); typeshed also allows bytes hosts
        host, port = cast(tuple[str, int], self._server.server_address[:2])
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def start(self, activity_rate: float = 0.0) -> Sandbox:
        """Serve in background threads (plus random activity if activity_rate > 0)."""
        # A short poll keeps stop() quick (shutdown waits for one poll).
        self._spawn(lambda: self._server.serve_forever(poll_interval=0.05), "sandbox-http")
        self._spawn(self._send_loop, "sandbox-sender")
        if activity_rate > 0:
            self._spawn(lambda: self._activity_loop(activity_rate), "sandbox-activity")
        return self

    def stop(self) -> None:
        """Stop serving, sending and simulating."""
        self._stop.set()
        self._outbox.put(None)
        if self._threads:  # shutdown() would wait forever for a loop that never ran
            self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=self.delivery_timeout + 1)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[[], object], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- account data ----------------------------------------------------------------

    def fields(self) -> list[dict]:
        """Return the account's fields as GET /Fields shows them (custom ones: Dynamic)."""
        fields = [{**f, "Dynamic": False} for f in SYSTEM_FIELDS]
        fields = [{"Id": 31040001 + i, **f} for i, f in enumerate(fields)]
        fields += [{**f, "Dynamic": True} for f in self.sim.fields]
        return fields

    def users(self) -> list[dict]:
        """Return the account's users as GET /Users shows them."""
        return [{"AvatarUrl": None, "AccountId": self.sim.account_id, **u}
                for u in self.sim.users]

    def account(self) -> dict:
        """Return the account as GET /Account shows it."""
        return {"Id": self.sim.account_id, "Name": f"{self.sim.company} Ltda."}

    def entities(self) -> list[dict]:
        """Return the entities as GET /Fields@Entities shows them."""
        named = {**EXTRA_ENTITIES, **{i: n for n, i in ENTITY_IDS.items()}}
        return [{"Id": i, "Name": named[i]} for i in sorted(named)]

    def actions(self) -> list[dict]:
        """Return the actions as GET /Webhooks@Actions shows them."""
        return [{"Id": i, "Name": n} for n, i in sorted(ACTION_IDS.items(),
                                                         key=lambda item: item[1])]

    def webhooks(self) -> list[dict]:
        """Return a copy of the subscriptions."""
        with self._lock:
            return [dict(w) for w in self._webhooks.values()]

    @property
    def creator_id(self) -> int:
        """Return the id of the user who owns the sandbox User-Key."""
        return int(self.sim.users[0]["Id"])

    def create_webhook(self, payload: Any) -> dict:
        """Validate and store a subscription like POST /Webhooks does."""
        if not isinstance(payload, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        unknown = set(payload) - set(WEBHOOK_FIELDS)
        if unknown:
            raise ApiError(400, f"Unknown field(s) for Webhook: {', '.join(sorted(unknown))}.")
        for required in ("EntityId", "ActionId", "CallbackUrl"):
            if payload.get(required) in (None, ""):
                raise ApiError(400, f"The {required} field is required.")
        webhook = {"Active": True, "ValidationKey": None, **payload}
        with self._lock:
            self._check_webhook(webhook, exclude=None)
            webhook = {"Id": self._next_webhook_id, **webhook, "CreatorId": self.creator_id,
                       "CreateDate": _account_now()}
            self._next_webhook_id += 1
            self._webhooks[webhook["Id"]] = webhook
            return dict(webhook)

    def update_webhook(self, webhook_id: int, payload: Any) -> dict:
        """Apply a partial update like PATCH /Webhooks(<id>) does."""
        if not isinstance(payload, dict) or not payload:
            raise ApiError(400, "The request body must be a non-empty JSON object.")
        unknown = set(payload) - set(WEBHOOK_FIELDS)
        if unknown:
            raise ApiError(400, f"Field(s) cannot be changed: {', '.join(sorted(unknown))}.")
        with self._lock:
            current = self._webhooks.get(webhook_id)
            if current is None:
                raise ApiError(404, f"Webhook {webhook_id} was not found.")
            updated = {**current, **payload}
            self._check_webhook(updated, exclude=webhook_id)
            self._webhooks[webhook_id] = updated
            return dict(updated)

    def delete_webhook(self, webhook_id: int) -> None:
        """Remove a subscription like DELETE /Webhooks(<id>) does."""
        with self._lock:
            if self._webhooks.pop(webhook_id, None) is None:
                raise ApiError(404, f"Webhook {webhook_id} was not found.")

    def _check_webhook(self, webhook: dict, exclude: int | None) -> None:
        entity_ids = {e["Id"] for e in self.entities()}
        action_ids = {a["Id"] for a in self.actions()}
        for prop, allowed in (("EntityId", entity_ids), ("ActionId", action_ids)):
            value = webhook.get(prop)
            if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
                raise ApiError(400, f"The {prop} {value!r} is not valid.")
        url = webhook.get("CallbackUrl")
        if not isinstance(url, str) or not re.match(r"https?://[^/\s]+", url):
            raise ApiError(400, "The CallbackUrl field must be an absolute http(s) URL.")
        if webhook.get("ValidationKey") is not None and not isinstance(
                webhook["ValidationKey"], str):
            raise ApiError(400, "The ValidationKey field must be a string.")
        if not isinstance(webhook.get("Active"), bool):
            raise ApiError(400, "The Active field must be true or false.")
        same = (webhook["EntityId"], webhook["ActionId"], url)
        for other in self._webhooks.values():
            if other["Id"] != exclude and (
                    other["EntityId"], other["ActionId"], other["CallbackUrl"]) == same:
                raise ApiError(409, f"A webhook for EntityId {same[0]}, ActionId {same[1]} "
                                    f"and this CallbackUrl already exists (Id {other['Id']}).")

    def subscribe_all(self, callback_url: str, validation_key: str | None,
                      pairs: Iterable[tuple[str, str]] = DEFAULT_SUBSCRIPTIONS) -> list[dict]:
        """Subscribe callback_url to each (entity, action) pair; return the subscriptions."""
        made = []
        for entity, action in pairs:
            made.append(self.create_webhook({
                "EntityId": ENTITY_IDS[entity], "ActionId": ACTION_IDS[action],
                "CallbackUrl": callback_url, "ValidationKey": validation_key}))
        return made

    # -- faults and rate limit -------------------------------------------------------

    def inject_fault(self, status: int, count: int = 1, method: str | None = None,
                     path: str | None = None, after: bool = False) -> None:
        """Answer the next `count` matching API calls with `status` (after: do the work first)."""
        # after=True imitates a gateway that times out while the backend finishes the work.
        with self._lock:
            self._faults.append({"status": int(status), "count": int(count),
                                 "method": method.upper() if method else None,
                                 "path": path, "after": bool(after)})

    def _take_fault(self, method: str, path: str) -> dict | None:
        with self._lock:
            for fault in self._faults:
                if ((fault["method"] in (None, method))
                        and (fault["path"] is None or path.startswith(fault["path"]))):
                    fault["count"] -= 1
                    if fault["count"] <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _check_rate(self) -> None:
        if self.rate_limit <= 0:  # 0 turns the limit off
            return
        now = time.monotonic()
        with self._lock:
            while self._calls and self._calls[0] <= now - self.rate_window:
                self._calls.popleft()
            if len(self._calls) >= self.rate_limit:
                self.rate_limited += 1
                wait = max(1, math.ceil(self._calls[0] + self.rate_window - now))
                raise ApiError(429, f"Rate limit of {self.rate_limit} requests per "
                                    f"{self.rate_window:g} s exceeded; retry in {wait} s.",
                               headers={"Retry-After": str(wait)})
            self._calls.append(now)

    # -- activity and deliveries -------------------------------------------------------

    def run_activity(self, count: int = 1, entity: str | None = None,
                     action: str | None = None, wait: bool = True,
                     timeout: float | None = None) -> dict:
        """Make `count` changes, deliver them to matching subscriptions; report what happened."""
        if entity is not None and entity not in ENTITY_IDS:
            raise ApiError(400, f"Unknown entity {entity!r}; one of "
                                f"{', '.join(ENTITY_IDS)}.")
        if action is not None and action not in ACTION_IDS:
            raise ApiError(400, f"Unknown action {action!r}; one of "
                                f"{', '.join(ACTION_IDS)}.")
        changes, queued = [], []
        failure: ApiError | None = None
        with self._lock:
            for _ in range(max(0, int(count))):
                try:
                    change = self.sim.step(entity=entity, action=action)
                except (ValueError, LookupError) as exc:
                    failure = ApiError(400, f"Cannot simulate {action or 'a change'} on "
                                            f"{entity or 'a record'}: {exc}")
                    break
                changes.append({"entity": change.entity, "action": change.action,
                                "record_id": change.record_id,
                                "action_user_id": change.action_user_id,
                                "at": change.at.isoformat()})
                queued += self._deliveries_for(change)
        # Changes already made are delivered even if a later step failed.
        for delivery in queued:
            if delivery.state == "dropped":
                delivery.done.set()
            else:
                self._outbox.put(delivery)
        if failure is not None:
            raise failure
        if wait:
            deadline = time.monotonic() + (timeout if timeout is not None
                                           else self.delivery_timeout * (len(queued) + 1))
            for delivery in queued:
                delivery.done.wait(max(0.0, deadline - time.monotonic()))
        return {"changes": changes, "deliveries": [d.outcome() for d in queued]}

    def _deliveries_for(self, change: generator.Change) -> list[Delivery]:
        entity_id = ENTITY_IDS.get(change.entity)
        action_id = ACTION_IDS.get(change.action)
        out = []
        for webhook in sorted(self._webhooks.values(), key=lambda w: w["Id"]):
            if not (webhook["Active"] and webhook["EntityId"] == entity_id
                    and webhook["ActionId"] == action_id):
                continue
            body = generator.delivery_body(
                change, account_id=self.sim.account_id, webhook_id=webhook["Id"],
                webhook_creator_id=webhook["CreatorId"],
                short_new=self._rng.random() < self.short_new_rate)
            copies = 2 if self._rng.random() < self.duplicate_rate else 1
            dropped = self._rng.random() < self.drop_rate
            for copy in range(copies):
                out.append(self._record(Delivery(
                    seq=0, webhook_id=webhook["Id"], callback_url=webhook["CallbackUrl"],
                    validation_key=webhook["ValidationKey"], entity=change.entity,
                    action=change.action, record_id=change.record_id, body=body,
                    duplicate=copy > 0, state="dropped" if dropped else "queued")))
        return out

    def _record(self, delivery: Delivery) -> Delivery:
        with self._deliveries_lock:
            delivery.seq = self._forgotten + len(self._deliveries) + 1
            self._deliveries.append(delivery)
            if len(self._deliveries) > KEPT_DELIVERIES:
                excess = len(self._deliveries) - KEPT_DELIVERIES
                del self._deliveries[:excess]
                self._forgotten += excess
        return delivery

    def deliveries(self, since: int = 0) -> list[dict]:
        """Return the outcome of every delivery with seq > since."""
        with self._deliveries_lock:
            return [d.outcome() for d in self._deliveries if d.seq > since]

    def clear_deliveries(self) -> None:
        """Forget past delivery outcomes (sequence numbers keep counting)."""
        with self._deliveries_lock:
            self._forgotten += len(self._deliveries)
            self._deliveries = []

    def _send_loop(self) -> None:
        session = requests.Session()
        session.trust_env = False  # deliveries go straight to the callback, never a proxy
        while True:
            delivery = self._outbox.get()
            if delivery is None:
                break
            if self._stop.is_set():  # don't hold stop() up with a backlog
                delivery.state = "cancelled"
                delivery.done.set()
                continue
            headers = {"Content-Type": "application/json; charset=utf-8",
                       "User-Agent": "Ploomes-Sandbox/1"}
            if delivery.validation_key is not None:
                headers[VALIDATION_HEADER] = delivery.validation_key
            data = json.dumps(delivery.body, ensure_ascii=False).encode("utf-8")
            try:
                response = session.post(delivery.callback_url, data=data, headers=headers,
                                        timeout=self.delivery_timeout, allow_redirects=False)
                delivery.status = response.status_code
                delivery.state = "sent"
            except requests.RequestException as exc:
                delivery.error = f"{type(exc).__name__}: {exc}"[:300]
                delivery.state = "failed"
            delivery.sent_at = time.time()
            delivery.done.set()
            log.debug("delivery %s (%s %s) to webhook %s: %s", delivery.seq, delivery.entity,
                      delivery.action, delivery.webhook_id, delivery.status or delivery.error)
        session.close()

    def _activity_loop(self, rate: float) -> None:
        interval = 1.0 / rate
        while not self._stop.wait(interval):
            try:
                self.run_activity(1, wait=False)
            except ApiError as exc:
                log.debug("skipped a simulated change: %s", exc.message)
            except Exception:  # one bad step must not end the activity for good
                log.exception("simulated change failed")

    # -- HTTP ------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Message, body: bytes, host: str
               ) -> tuple[int, Any, dict]:
        """Answer one HTTP request: (status, JSON body or None, extra headers)."""
        parts = urlsplit(target)
        path = unquote(parts.path).rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            if path.startswith("/_sandbox/"):
                return self._control(method, path, query, body)
            if headers.get("User-Key") != self.user_key:
                # Never echo what was sent: it may be someone's real key.
                raise ApiError(401, "Invalid or missing User-Key.")
            self._check_rate()
            with self._lock:
                self.request_log.append((method, path, query))
            fault = self._take_fault(method, path)
            if fault and not fault["after"]:
                raise ApiError(fault["status"], f"Injected fault {fault['status']}.")
            result = self._api(method, path, query, body, f"http://{host}")
            if fault:
                raise ApiError(fault["status"], f"Injected fault {fault['status']} "
                                                "(after the work was done).")
            return result
        except ApiError as exc:
            return exc.status, exc.body(), exc.headers

    def _api(self, method: str, path: str, query: dict, body: bytes, base: str
             ) -> tuple[int, Any, dict]:
        one = re.fullmatch(r"/Webhooks\((\d+)\)", path)
        if one:
            webhook_id = int(one[1])
            if method == "PATCH":
                updated = self.update_webhook(webhook_id, _json(body))
                return 200, {"@odata.context": f"{base}/$metadata#Webhooks",
                             "value": [updated]}, {}
            if method == "DELETE":
                self.delete_webhook(webhook_id)
                return 204, None, {}
            if method == "GET":
                found = [w for w in self.webhooks() if w["Id"] == webhook_id]
                if not found:
                    raise ApiError(404, f"Webhook {webhook_id} was not found.")
                return 200, {"@odata.context": f"{base}/$metadata#Webhooks",
                             "value": found}, {}
            raise ApiError(405, f"The requested resource does not support {method}.")
        if path == "/Webhooks" and method == "POST":
            created = self.create_webhook(_json(body))
            return 200, {"@odata.context": f"{base}/$metadata#Webhooks",
                         "value": [created]}, {}
        collection = self._collection(path)
        if collection is None:
            raise ApiError(404, "No HTTP resource was found that matches the request URI "
                                f"'{base}{path}'.")
        if method != "GET":
            raise ApiError(405, f"The requested resource does not support {method}.")
        name, rows = collection
        envelope = odata_collection(
            rows, query, name=name, base=base, path=path, page_cap=self.page_cap,
            next_links=self.next_links,
            properties=WEBHOOK_PROPERTIES if name == "Webhooks" else None)
        return 200, envelope, {}

    def _collection(self, path: str) -> tuple[str, list[dict]] | None:
        name = path.lstrip("/")
        with self._lock:
            if name == "Users":
                return name, self.users()
            if name == "Fields":
                return name, self.fields()
            if name == "Fields@Entities":
                return name, self.entities()
            if name == "Webhooks@Actions":
                return (name, self.actions()) if self.actions_endpoint else None
            if name == "Webhooks":
                return name, sorted(self.webhooks(), key=lambda w: w["Id"])
            if name in SIMULATED_ENTITIES:
                return name, [_rest_record(r) for r in self.sim.records(name)]
            if name == "Account":
                return name, [self.account()]
            if name == "Deals@Status":
                return name, [{"Id": i, "Name": n} for i, n in DEAL_STATUSES]
            lookups = {"Tags": "tags", "Deals@Pipelines": "pipelines", "Deals@Stages": "stages",
                       "Deals@LossReasons": "loss_reasons", "Tasks@Types": "task_types"}
            if name in lookups:
                rows = getattr(self.sim, lookups[name], None)
                if isinstance(rows, list) and all(isinstance(r, dict) for r in rows):
                    return name, [dict(r) for r in rows]
        return None

    def _control(self, method: str, path: str, query: dict, body: bytes
                 ) -> tuple[int, Any, dict]:
        if path == "/_sandbox/activity" and method == "POST":
            spec = _json(body) if body.strip() else {}
            if not isinstance(spec, dict):
                raise ApiError(400, "Expected a JSON object like {\"count\": 5}.")
            try:
                count = int(spec.get("count", 1))
            except (TypeError, ValueError) as exc:
                raise ApiError(400, "count must be an integer.") from exc
            if not 0 <= count <= 10_000:
                raise ApiError(400, "count must be between 0 and 10000.")
            return 200, self.run_activity(count, spec.get("entity"), spec.get("action"),
                                          wait=bool(spec.get("wait", True))), {}
        if path == "/_sandbox/deliveries" and method == "GET":
            try:
                since = int(query.get("since") or 0)
            except ValueError as exc:
                raise ApiError(400, "since must be an integer.") from exc
            return 200, {"value": self.deliveries(since)}, {}
        if path == "/_sandbox/deliveries" and method == "DELETE":
            self.clear_deliveries()
            return 204, None, {}
        if path == "/_sandbox/faults" and method == "POST":
            spec = _json(body)
            if not isinstance(spec, dict) or not isinstance(spec.get("status"), int):
                raise ApiError(400, "Expected {\"status\": 503, \"count\"?: 1, "
                                    "\"method\"?: \"GET\", \"path\"?: \"/Users\", "
                                    "\"after\"?: false}.")
            self.inject_fault(spec["status"], spec.get("count", 1), spec.get("method"),
                              spec.get("path"), spec.get("after", False))
            return 204, None, {}
        raise ApiError(404, f"No sandbox control endpoint {method} {path}.")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}") from exc


def _handler_for(sandbox: Sandbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "PloomesSandbox/1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            host = self.headers.get("Host") or sandbox.url.split("//", 1)[1]
            try:
                status, payload, extra = sandbox.handle(
                    self.command, self.path, self.headers, body, host)
            except Exception:  # the sandbox must answer, not drop the connection
                log.exception("sandbox failed on %s %s", self.command, urlsplit(self.path).path)
                status, payload, extra = 500, ApiError(500, "Internal sandbox error.").body(), {}
            data = b"" if payload is None else json.dumps(payload, ensure_ascii=False).encode()
            self.send_response(status)
            if payload is not None:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            # The request line holds no header, so no User-Key reaches the log.
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


# -- command line ------------------------------------------------------------------------

def add_sandbox_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
                       ) -> argparse.ArgumentParser:
    """Add the `sandbox` command to the `python -m ploomes` dispatcher."""
    parser = subparsers.add_parser(
        "sandbox", help="serve a local stand-in for the Ploomes API",
        description="Serve a simulated Ploomes account (API + webhook deliveries) on "
                    "a local port, so the whole loop runs offline.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default: %(default)s")
    parser.add_argument("--user-key", default=DEFAULT_USER_KEY,
                        help="the User-Key the sandbox accepts (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (default: 0)")
    parser.add_argument("--activity-rate", type=float, default=0.0, metavar="N",
                        help="simulated changes per second (default: 0, only on request)")
    parser.add_argument("--duplicate-rate", type=float, default=0.0, metavar="P",
                        help="share of deliveries sent twice (0–1)")
    parser.add_argument("--drop-rate", type=float, default=0.0, metavar="P",
                        help="share of deliveries never sent (0–1)")
    parser.add_argument("--short-new-rate", type=float, default=0.0, metavar="P",
                        help="share of deliveries whose New holds only the changed fields")
    parser.add_argument("--rate-limit", type=int, default=120, metavar="N",
                        help="API calls allowed per minute before 429 (default: 120; 0: no limit)")
    parser.add_argument("--subscribe", metavar="CALLBACK_URL",
                        help="create subscriptions for the common (entity, action) pairs")
    parser.add_argument("--validation-key", default=None,
                        help="ValidationKey of the --subscribe subscriptions")
    parser.set_defaults(handler=run_sandbox_command)
    return parser


def run_sandbox_command(args: argparse.Namespace) -> int:
    """Run the sandbox in the foreground until interrupted."""
    try:
        sandbox = Sandbox(host=args.host, port=args.port, user_key=args.user_key,
                          seed=args.seed, rate_limit=args.rate_limit,
                          duplicate_rate=args.duplicate_rate, drop_rate=args.drop_rate,
                          short_new_rate=args.short_new_rate)
        if args.subscribe:
            sandbox.subscribe_all(args.subscribe, args.validation_key)
    except (OSError, ValueError) as exc:
        print(f"sandbox: {exc}")
        return 2
    except ApiError as exc:
        print(f"sandbox: {exc.message}")
        sandbox.stop()
        return 2
    shown_key = args.user_key if args.user_key == DEFAULT_USER_KEY else mask_secret(args.user_key)
    print(f"Ploomes sandbox on {sandbox.url} (User-Key {shown_key}); "
          f"{len(sandbox.webhooks())} subscription(s); "
          f"{args.activity_rate:g} change(s)/s. Ctrl-C to stop.", flush=True)
    sandbox.start(activity_rate=args.activity_rate)
    # Stop cleanly on SIGTERM (a supervisor or a test) as on Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    return 0
