"""The Ploomes webhook receiver: `python receiver.py [--host H] [--port P] [--data-dir D]`.

A thin Flask shell over `ploomes.service.DeliveryService`, served by waitress.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from ploomes.config import ConfigError, Settings, load_settings
from ploomes.demo import DEMO_PATH
from ploomes.journal import JournalBusy
from ploomes.keys import ensure_key, key_file, mask_secret
from ploomes.service import DeliveryService

WEBHOOK_PATH = "/ploomes/webhook"
KEY_HEADER = "X-Ploomes-Validation-Key"


def create_app(settings: Settings | None = None, start_worker: bool = True) -> Flask:
    """Create the receiver app for one data dir."""
    settings = settings or load_settings()
    service = DeliveryService(settings, start_worker=start_worker)
    app = Flask(__name__)
    app.extensions["ploomes"] = service
    # Flask must not buffer more than the limit; the handler reads at most limit + 1.
    app.config["MAX_CONTENT_LENGTH"] = None

    def answer(outcome) -> Response:
        response = jsonify(outcome.body)
        response.status_code = outcome.status
        return response

    @app.post(WEBHOOK_PATH)
    def webhook() -> Response:
        started = time.perf_counter()
        source = request.remote_addr
        key = request.headers.get(KEY_HEADER) or request.args.get("validation_key")
        if not key:
            return answer(service.unauthorized(source, "missing key"))
        if not service.authenticated(key):
            return answer(service.unauthorized(source, "wrong key"))
        limit = settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return answer(service.reject_authenticated(
                "too_large", 413, f"body is larger than {limit} bytes",
                request.stream.read(min(limit, 64 * 1024)), source))
        raw = request.stream.read(limit + 1)
        if len(raw) > limit:
            return answer(service.reject_authenticated(
                "too_large", 413, f"body is larger than {limit} bytes", raw, source))
        return answer(service.accept(raw, source, started))

    @app.post(DEMO_PATH)
    def demo() -> Response:
        # Only the project's own dashboard uses this; it holds the same keys.
        key = request.headers.get(KEY_HEADER)
        if not service.authenticated(key):
            return answer(service.unauthorized(request.remote_addr, "wrong key (demo)"))
        return answer(service.accept_demo(request.get_json(silent=True)))

    @app.get("/healthz")
    def healthz() -> Response:
        status, body = service.health()
        response = jsonify(body)
        response.status_code = status
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(service.registry),
                        mimetype=CONTENT_TYPE_LATEST)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if exc.code == 405:
            service.deliveries.labels(outcome="method_not_allowed").inc()
        response = jsonify({"status": "refused", "reason": exc.description or exc.name})
        response.status_code = exc.code or 500
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        app.logger.exception("unexpected error on %s", request.path)  # path only: no query
        response = jsonify({"status": "error", "reason": "internal error; retry later"})
        response.status_code = 503
        return response

    return app


def main(argv: list[str] | None = None) -> int:
    """Start the receiver with waitress until interrupted."""
    parser = argparse.ArgumentParser(description="Receive Ploomes webhook deliveries.")
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 - Ploomes must reach it
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data-dir", help="data folder (default: PLOOMES_DATA_DIR or data/)")
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("ploomes.receiver")
    try:
        settings = load_settings(data_dir=args.data_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key, created = ensure_key(settings)
    if created:
        log.warning("No validation key was configured: generated one (%s) and stored it in %s "
                    "(readable by you only). Give its content to Ploomes as the ValidationKey.",
                    mask_secret(key), key_file(settings))
    try:
        app = create_app(settings)
    except JournalBusy:
        print(f"error: another receiver is already running on {settings.data_dir}",
              file=sys.stderr)
        return 1
    from waitress import create_server

    server = create_server(app, host=args.host, port=args.port, threads=args.threads,
                           ident="ploomes-receiver",
                           # waitress buffers a body before the app sees it: cap that too
                           max_request_body_size=settings.max_body_bytes * 2)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    log.info("Receiver listening on http://%s:%s%s (data dir %s)", args.host,
             server.effective_port, WEBHOOK_PATH, settings.data_dir)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        app.extensions["ploomes"].close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
