"""The dashboard's view of a running receiver: its `/healthz`, over HTTP."""

from __future__ import annotations

import requests


def receiver_health(receiver_url: str, timeout: float = 1.5) -> dict:
    """GET the receiver's /healthz; return its body plus `reachable` and `error`.

    Never raises: an unreachable receiver is an answer (`reachable=False`), not an error.
    """
    url = receiver_url.rstrip("/") + "/healthz"
    try:
        response = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        return {"reachable": False, "url": url, "error": type(exc).__name__}
    try:
        body = response.json()
    except ValueError:
        return {"reachable": False, "url": url,
                "error": f"answered {response.status_code} without a health report"}
    if not isinstance(body, dict):
        body = {}
    return {**body, "reachable": True, "url": url, "http_status": response.status_code,
            "error": None}
