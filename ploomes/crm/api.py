"""Ploomes REST API client: subscriptions (`/Webhooks`), users, custom fields, records.

Every call carries the `User-Key` header and a timeout, retries with backoff on 429
(honouring `Retry-After`) and on 502/503/504 for idempotent methods, pages through
OData collections without trusting a single page, and fails with a named
`PloomesError` that carries Ploomes' own message and the HTTP status. The User-Key is
never written to a log line, an exception, or a repr.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as TransportTimeout
from urllib3.util import Retry

from ploomes.config import mask_secret
from ploomes.i18n import _

__all__ = [
    "DEFAULT_BASE_URL",
    "KNOWN_ACTIONS",
    "LOOKUP_PATHS",
    "MAX_PAGE_SIZE",
    "PloomesAuthError",
    "PloomesClient",
    "PloomesError",
    "PloomesNotFound",
    "PloomesRateLimited",
    "PloomesUnavailable",
    "error_message_from_body",
    "fetch_directory",
    "fetch_lookups",
    "mask_secret",
    "validate_callback_url",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api2.ploomes.com"
# Ploomes silently truncates $top at about 300 [CLAIM]; asking for more only hides
# the truncation, so page sizes are clamped to it.
MAX_PAGE_SIZE = 300
# Used only when GET /Webhooks@Actions answers 404 [PROD ids].
KNOWN_ACTIONS: tuple[dict, ...] = (
    {"Id": 1, "Name": "Create"},
    {"Id": 2, "Name": "Update"},
    {"Id": 3, "Name": "Delete"},
    {"Id": 4, "Name": "Win"},
    {"Id": 5, "Name": "Lose"},
    {"Id": 6, "Name": "Reopen"},
)
# The API's lookups that name the ids built-in fields hold (`ploomes.model.names` kinds):
# the first four are documented, the others answer in integrations; one that answers 404
# (or refuses the query) is left out of a sync.
LOOKUP_PATHS: dict[str, str] = {
    "stage": "Deals@Stages",
    "pipeline": "Deals@Pipelines",
    "deal_status": "Deals@Status",
    "task_type": "Tasks@Types",
    "tag": "Tags",
    "loss_reason": "Deals@LossReasons",
    "order_stage": "Orders@Stages",
    "product_group": "Products@Groups",
    "product_family": "Products@Families",
}
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_MESSAGE_LIMIT = 300
_SNAKE_TO_PLOOMES = {
    "callback_url": "CallbackUrl",
    "validation_key": "ValidationKey",
    "active": "Active",
    "entity_id": "EntityId",
    "action_id": "ActionId",
}


class PloomesError(Exception):
    """A Ploomes API call failed; `message` is Ploomes' own text, `status` the HTTP status."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message, status)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status})" if self.status else self.message


class PloomesAuthError(PloomesError):
    """The User-Key is missing, wrong, or not allowed to do this (401/403)."""


class PloomesNotFound(PloomesError):
    """The resource does not exist (404)."""


class PloomesRateLimited(PloomesError):
    """Ploomes still answered 429 after every retry."""


class PloomesUnavailable(PloomesError):
    """Ploomes could not be reached, timed out, or answered 5xx after every retry."""


class _PloomesRetry(Retry):
    """Retry 429 for every method, other statuses only for the allowed (idempotent) ones."""

    # A Retry-After far in the future would freeze a dashboard page; wait at most this.
    RETRY_AFTER_MAX = 60.0

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        """Return whether this response should be retried."""
        # A 429 is refused before anything is done, so even a POST is safe to resend.
        if status_code == 429:
            return True
        return super().is_retry(method, status_code, has_retry_after)

    def parse_retry_after(self, retry_after: str) -> float:
        """Return the Retry-After delay in seconds, capped at RETRY_AFTER_MAX."""
        return min(super().parse_retry_after(retry_after), self.RETRY_AFTER_MAX)


def validate_callback_url(url: str) -> str:
    """Return the URL stripped if it is https (or http on localhost), else raise ValueError."""
    url = (url or "").strip()
    parts = urlsplit(url)
    try:
        host = parts.hostname
    except ValueError as exc:
        raise ValueError(_("callback URL {url} is not a valid URL: {problem}").format(
            url=repr(url), problem=exc)) from exc
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(_("callback URL {url} must start with https:// and name a host")
                         .format(url=repr(url)))
    if parts.username is not None or parts.password is not None:
        raise ValueError(_("callback URL must not embed a user name or password"))
    if parts.scheme == "http" and host.lower() not in LOCAL_HOSTS:
        # pages show this message, in the interface's language
        raise ValueError(_(
            "callback URL {url} must use https:// (plain http is allowed only for localhost, "
            "127.0.0.1 and ::1): deliveries carry the validation key").format(url=repr(url)))
    return url


def _text_of(value: Any) -> str | None:
    """Return a message found in a str or an OData v3 `{"value": "..."}` message."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, dict):
        return _text_of(value.get("value"))
    return None


def error_message_from_body(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    """Return the error message in a Ploomes error body, or a bounded piece of its text."""
    try:
        body = json.loads(text)
    except (ValueError, TypeError):
        body = None
    if isinstance(body, dict):
        error = body.get("error", body.get("odata.error"))
        candidates = []
        if isinstance(error, dict):
            candidates += [error.get("message"), error.get("Message")]
        candidates += [error, body.get("Message"), body.get("message"),
                       body.get("ExceptionMessage"), body.get("error_description")]
        for candidate in candidates:
            found = _text_of(candidate)
            if found:
                return found[:limit]
    snippet = re.sub(r"<[^>]+>", " ", text or "")  # HTML error pages from a gateway
    snippet = " ".join(snippet.split())
    if len(snippet) > limit:
        snippet = snippet[: limit - 1] + "…"
    return snippet


def _values(body: Any) -> list[dict]:
    """Return the items of an OData envelope (or a bare list, or a bare object)."""
    if isinstance(body, dict) and "value" in body:
        value = body["value"]
        return list(value) if isinstance(value, list) else [value]
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        return [body]
    return []


class PloomesClient:
    """Talk to one Ploomes account through its REST API with one User-Key."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        user_key: str = "",
        timeout: float = 10.0,
        retry_total: int = 5,
        backoff_factor: float = 0.5,
        page_size: int = MAX_PAGE_SIZE,
    ):
        user_key = (user_key or "").strip()
        if not user_key:
            raise PloomesAuthError("no Ploomes User-Key configured (set PLOOMES_USER_KEY)")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.page_size = max(1, min(int(page_size), MAX_PAGE_SIZE))
        self._user_key = user_key
        self._origin = urlsplit(self.base_url)[:2]
        retry = _PloomesRetry(
            total=retry_total,
            backoff_factor=backoff_factor,
            status_forcelist=(429, 502, 503, 504),
            # 502/503/504 and read timeouts are retried only for idempotent methods: a
            # gateway error after a POST may hide a subscription that was created, and a
            # second POST would then fail as a duplicate (or create a second one). PATCH
            # bodies here are absolute values, so resending one is harmless.
            allowed_methods=frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"}),
            respect_retry_after_header=True,
            raise_on_status=False,  # keep the last response to report Ploomes' message
            redirect=0,
        )
        self._session = requests.Session()
        self._session.headers.update({"User-Key": user_key, "Accept": "application/json"})
        adapter = HTTPAdapter(max_retries=retry)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)

    def __repr__(self) -> str:
        masked = mask_secret(self._user_key)
        return f"PloomesClient(base_url={self.base_url!r}, user_key={masked!r})"

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    def __enter__(self) -> PloomesClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """Return text with the User-Key masked, in case a server or library echoes it."""
        return text.replace(self._user_key, mask_secret(self._user_key)) if text else text

    def _url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            # A nextLink elsewhere would receive our User-Key: follow only our own host.
            if urlsplit(path_or_url)[:2] != self._origin:
                raise PloomesError(f"refusing to follow a link to another host: "
                                   f"{urlsplit(path_or_url).netloc}")
            return path_or_url
        return f"{self.base_url}/{path_or_url.lstrip('/')}"

    def _rebase(self, link: str) -> str:
        """Return a nextLink moved onto our own host, so the User-Key goes nowhere else."""
        parts = urlsplit(link)
        if parts[:2] == self._origin:
            return link
        # Ploomes answers on api2 and public-api2 alike; a link naming the other one (or
        # anything else) is replayed against the host we were configured with.
        log.debug("nextLink names %s; following it on %s", parts.netloc, self._origin[1])
        return parts._replace(scheme=self._origin[0], netloc=self._origin[1]).geturl()

    def _request(self, method: str, path: str, *, params: dict | None = None,
                 json_body: Any = None) -> Any:
        """Send one call (retries included) and return its decoded JSON, or None if empty."""
        url = self._url(path)
        shown = urlsplit(url).path
        log.debug("Ploomes %s %s", method, shown)
        try:
            # Redirects are refused: requests would forward the User-Key header to
            # whatever host a redirect names.
            response = self._session.request(method, url, params=params, json=json_body,
                                             timeout=self.timeout, allow_redirects=False)
        except requests.exceptions.RequestException as exc:
            # Timeouts that exhausted the retries arrive wrapped in a ConnectionError
            # (and urllib3 files a refused connection under its timeouts).
            reason = getattr(exc.args[0] if exc.args else None, "reason", None)
            timed_out = (isinstance(reason, TransportTimeout)
                         and not isinstance(reason, NewConnectionError))
            if isinstance(exc, requests.exceptions.Timeout) or timed_out:
                raise PloomesUnavailable(
                    f"Ploomes did not answer {method} {shown} within {self.timeout:g} s"
                ) from exc
            detail = self._scrub(str(exc))[:_MESSAGE_LIMIT]
            raise PloomesUnavailable(
                f"cannot reach Ploomes at {self._origin[1]} ({type(exc).__name__}): {detail}"
            ) from exc
        status = response.status_code
        if status >= 300:
            self._raise_for(method, shown, response)
        if status == 204 or not response.content.strip():
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise PloomesError(
                f"Ploomes answered {method} {shown} with something that is not JSON: "
                f"{self._scrub(error_message_from_body(response.text))}", status) from exc

    def _raise_for(self, method: str, shown: str, response: requests.Response) -> None:
        status = response.status_code
        message = self._scrub(error_message_from_body(response.text))
        message = message or f"{response.reason or 'error'}"
        message = f"{method} {shown}: {message}"
        log.debug("Ploomes %s %s failed with HTTP %s", method, shown, status)
        if status in (401, 403):
            raise PloomesAuthError(message, status)
        if status == 404:
            raise PloomesNotFound(message, status)
        if status == 429:
            raise PloomesRateLimited(message, status)
        if status >= 500:
            raise PloomesUnavailable(message, status)
        raise PloomesError(message, status)

    def _paged(self, path: str, params: dict | None = None,
               order_by: str | None = "Id") -> list[dict]:
        """Return every item of a collection, following nextLink or else advancing $skip."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        if order_by and "$orderby" not in params:
            # $skip paging over an unordered collection can skip or repeat items.
            params["$orderby"] = order_by
        top = self.page_size
        start = int(params.pop("$skip", 0))
        items: list[dict] = []
        fetched = 0  # raw items read, duplicates included: the next $skip
        seen: set = set()
        previous_ids: list | None = None
        next_link: str | None = None
        requests_made = 0
        while True:
            if next_link:
                body = self._request("GET", next_link)
            else:
                query = {**params, "$top": top, "$skip": start + fetched}
                body = self._request("GET", path, params=query)
            requests_made += 1
            page = _values(body)
            ids = [item.get("Id") for item in page if isinstance(item, dict)]
            if page and previous_ids is not None and ids == previous_ids and None not in ids:
                raise PloomesError(f"GET /{path} returned the same page twice; "
                                   "the server ignored $skip")
            previous_ids = ids
            fetched += len(page)
            for item in page:
                key = item.get("Id") if isinstance(item, dict) else None
                if key is not None:
                    # An item can move to the next page while we read: keep it once.
                    if key in seen:
                        continue
                    seen.add(key)
                items.append(item)
            link = body.get("@odata.nextLink") if isinstance(body, dict) else None
            if link:
                next_link = self._rebase(urljoin(self.base_url + "/", link))
                continue
            next_link = None
            if len(page) < top:
                break
        log.debug("Ploomes GET /%s: %d items in %d requests", path, len(items), requests_made)
        return items

    # -- subscriptions -------------------------------------------------------------

    def list_webhooks(self, filter: str | None = None) -> list[dict]:
        """Return every subscription, optionally narrowed by an OData $filter."""
        return self._paged("Webhooks", {"$filter": filter})

    def create_webhook(self, entity_id: int, action_id: int, callback_url: str,
                       validation_key: str) -> dict:
        """Create a subscription and return it as Ploomes stored it."""
        callback_url = validate_callback_url(callback_url)
        payload = {"EntityId": int(entity_id), "ActionId": int(action_id),
                   "CallbackUrl": callback_url, "ValidationKey": validation_key}
        try:
            body = self._request("POST", "Webhooks", json_body=payload)
        except PloomesUnavailable:
            # The POST is not retried on 5xx/timeouts (see __init__); the subscription may
            # exist anyway, so look before reporting a failure.
            found = self._find_webhook(entity_id, action_id, callback_url)
            if found is None:
                raise
            log.info("Ploomes POST /Webhooks failed but the subscription %s exists",
                     found.get("Id"))
            return found
        created = _values(body)
        if created:
            return created[0]
        found = self._find_webhook(entity_id, action_id, callback_url)
        if found is None:
            raise PloomesError("Ploomes accepted the subscription but did not return it")
        return found

    def _find_webhook(self, entity_id: int, action_id: int, callback_url: str) -> dict | None:
        try:
            candidates = self.list_webhooks(
                f"EntityId eq {int(entity_id)} and ActionId eq {int(action_id)}")
        except PloomesError:
            return None
        return next((w for w in candidates if w.get("CallbackUrl") == callback_url), None)

    def update_webhook(self, webhook_id: int, **fields: Any) -> dict | None:
        """Change fields of a subscription (Ploomes names or snake_case); return it if sent back."""
        payload = {_SNAKE_TO_PLOOMES.get(k, k): v for k, v in fields.items()}
        if not payload:
            raise ValueError("update_webhook needs at least one field to change")
        if "CallbackUrl" in payload:
            payload["CallbackUrl"] = validate_callback_url(payload["CallbackUrl"])
        body = self._request("PATCH", f"Webhooks({int(webhook_id)})", json_body=payload)
        updated = _values(body)
        return updated[0] if updated else None

    def delete_webhook(self, webhook_id: int) -> None:
        """Remove a subscription."""
        self._request("DELETE", f"Webhooks({int(webhook_id)})")

    def list_actions(self) -> list[dict]:
        """Return the webhook actions (`Id`, `Name`), or the known table if the endpoint 404s."""
        try:
            return self._paged("Webhooks@Actions", order_by=None)
        except PloomesNotFound:
            log.info("GET /Webhooks@Actions answered 404; using the known action table")
            return [dict(action) for action in KNOWN_ACTIONS]

    # -- directory -----------------------------------------------------------------

    def list_entities(self) -> list[dict]:
        """Return the entities (`Id`, `Name`) that fields and webhooks refer to."""
        return self._paged("Fields@Entities", order_by=None)

    def get_account(self) -> dict | None:
        """Return the account the User-Key belongs to (`Id`, `Name`), or None if the API
        has no such answer."""
        try:
            body = self._request("GET", "Account", params={"$select": "Id,Name"})
        except PloomesNotFound:
            return None
        found = [item for item in _values(body) if isinstance(item, dict)]
        return found[0] if found else None

    def list_lookup(self, path: str) -> list[dict]:
        """Return every row of a lookup such as `Deals@Stages` (`Id`, `Name`, …)."""
        return self._paged(path)

    def list_users(self) -> list[dict]:
        """Return every user of the account (no $select: `Active` does not exist there)."""
        return self._paged("Users")

    def list_fields(self, entity_id: int | None = None) -> list[dict]:
        """Return the custom fields (`Key`, `Name`, `EntityId`, `TypeId`), of one entity or all."""
        condition = "Dynamic eq true"
        if entity_id is not None:
            condition = f"EntityId eq {int(entity_id)} and {condition}"
        return self._paged("Fields", {"$filter": condition})

    def list_records(self, entity: str, filter: str | None = None) -> list[dict]:
        """Return every record of an entity collection such as `Contacts` or `Deals`."""
        if not re.fullmatch(r"[A-Za-z]+", entity or ""):
            raise ValueError(f"not an entity collection name: {entity!r}")
        return self._paged(entity, {"$filter": filter})


_USER_KEYS = ("Id", "Name", "Email", "Suspended", "AvatarUrl", "AccountId")
_FIELD_KEYS = ("Key", "Name", "EntityId", "TypeId")


def _pick(rows: Iterable[dict], keys: tuple[str, ...]) -> list[dict]:
    return [{k: row.get(k) for k in keys} for row in rows]


def fetch_directory(client: PloomesClient) -> tuple[list[dict], list[dict]]:
    """Return (users, custom fields) of the account, trimmed to the columns the store keeps."""
    users = _pick(client.list_users(), _USER_KEYS)
    by_key = {f["Key"]: f for f in _pick(client.list_fields(), _FIELD_KEYS) if f["Key"]}
    return users, list(by_key.values())


def fetch_lookups(client: PloomesClient) -> dict[str, list[dict]]:
    """Return {kind: rows} of the lookups in LOOKUP_PATHS the API answers.

    A lookup the API does not have (404) or refuses to page (400) is left out; a refused
    key or a limit reached is raised, as for any call.
    """
    found: dict[str, list[dict]] = {}
    for kind, path in LOOKUP_PATHS.items():
        try:
            rows = client.list_lookup(path)
        except PloomesNotFound:
            continue
        except PloomesError as exc:
            if exc.status != 400:
                raise
            log.info("GET /%s refused (%s); its names are left out", path, exc.message)
            continue
        found[kind] = [{"Id": row.get("Id"), "Name": row.get("Name"),
                        "PipelineId": row.get("PipelineId")}
                       for row in rows if isinstance(row, dict)]
    return found
