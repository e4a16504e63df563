"""Baseline for bench/receiver_load.py: the same Flask app shell and server, storing nothing.

It runs on `receiver.serve` (gevent's WSGI server, same settings) and answers like the
receiver (key check, body read, JSON answer) without validating or keeping anything.
"""

from __future__ import annotations

import argparse
import hmac
import sys
from pathlib import Path

from flask import Flask, jsonify, request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from receiver import serve  # noqa: E402


def create_app(key: str) -> Flask:
    """Answer like the receiver (key check, body read) without keeping anything."""
    app = Flask(__name__)

    @app.post("/ploomes/webhook")
    def webhook():
        given = request.headers.get("X-Ploomes-Validation-Key", "")
        if not hmac.compare_digest(given.encode(), key.encode()):
            return jsonify({"status": "refused"}), 401
        request.stream.read(1024 * 1024 + 1)
        return jsonify({"status": "accepted", "delivery_id": 0})

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    try:
        serve(create_app(args.key), "127.0.0.1", args.port)
    except KeyboardInterrupt:
        pass
