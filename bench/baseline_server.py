"""Baseline for bench/receiver_load.py: a Flask app that stores nothing, on waitress.

Answers like the receiver (key check, body read, JSON answer) without validating or
keeping anything, served by waitress with 8 threads: the plain way to serve Flask that a
home-made webhook script would use. The receiver must do at least 0.8x its answers.
"""

from __future__ import annotations

import argparse
import hmac

from flask import Flask, jsonify, request
from waitress import serve


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
    serve(create_app(args.key), host="127.0.0.1", port=args.port, threads=8,
          _quiet=True)
