"""Shared fixtures: real data dirs in tmp_path, a real receiver on a loopback port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from hypothesis import settings

from ploomes.config import load_settings
from ploomes.model.delivery import InvalidDelivery
from ploomes.store import Store

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / "tests" / "data"  # copies of ../shared/ploomes examples
TEST_KEY = "test-validation-key-0123456789abcdef"

# The same examples on every run: a property that breaks is found by a developer
# exploring (HYPOTHESIS_PROFILE=explore), not by chance in the run that lands a change.
settings.register_profile("default", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Keep a developer's own PLOOMES_* settings out of the tests."""
    for name in list(os.environ):
        if name.startswith("PLOOMES_"):
            monkeypatch.delenv(name)


def make_settings(data_dir: Path, **overrides):
    """Build settings for a test data dir, ignoring the environment and secrets.toml."""
    overrides.setdefault("validation_keys", (TEST_KEY,))
    return load_settings(env={}, secrets_path=data_dir / "no-secrets.toml", data_dir=data_dir,
                         **overrides)


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path / "data")


def example_payloads() -> dict[str, bytes]:
    """Return the shared example delivery bodies by file name."""
    folder = SHARED / "payloads"
    if not folder.is_dir():
        pytest.skip(f"shared examples not found at {folder}")
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.json"))}


def real_deliveries() -> list[dict]:
    """Return the 51 real Win deliveries."""
    path = SHARED / "real" / "deals-win.jsonl"
    if not path.exists():
        pytest.skip(f"real deliveries not found at {path}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refusal(check, raw: bytes) -> str | None:
    """Return the reason check(raw) refuses raw with (InvalidDelivery), or None."""
    try:
        check(raw)
    except InvalidDelivery as exc:
        return str(exc)
    return None


def run_script(code: str, *args: str, timeout: float = 120) -> str:
    """Run Python `code` in a fresh interpreter from the project root; return its stdout.

    The script must exit 0. A scenario that deadlocks fails at `timeout` instead of
    hanging the suite.
    """
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Poll until predicate() is truthy and return its value, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen | None, grace: float = 15) -> None:
    """Terminate a child process, killing it if it does not stop within `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def process_running(pid: int) -> bool:
    """Return whether process pid exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


class ReceiverProcess:
    """The real receiver (`python receiver.py`) on a loopback port."""

    def __init__(self, data_dir: Path, key: str | None = TEST_KEY, extra_env: dict | None = None,
                 max_file_bytes: int | None = None):
        self.data_dir = data_dir
        self.key = key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.webhook_url = self.url + "/ploomes/webhook"
        self.extra_env = extra_env or {}
        self.max_file_bytes = max_file_bytes  # RLIMIT_FSIZE: a real "disk full" for its writes
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"receiver-{self.port}.log"
        self.session = requests.Session()

    def start(self, status: str = "ok") -> ReceiverProcess:
        """Start the receiver and wait until /healthz says `status`."""
        self._wanted = status
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLOOMES_")}
        if self.key:
            env["PLOOMES_VALIDATION_KEYS"] = self.key
        # 1 MiB segments (the default is 16 MiB); a test may ask for smaller ones
        env.setdefault("PLOOMES_JOURNAL_SEGMENT_BYTES", str(1024 * 1024))
        env.update(self.extra_env)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "receiver.py"), "--host", "127.0.0.1",
             "--port", str(self.port), "--data-dir", str(self.data_dir)],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=self._limit_files if self.max_file_bytes else None)
        try:
            wait_for(self._healthy, timeout=30)
        except BaseException:
            self.stop()  # a receiver that never became healthy must not outlive the test
            raise
        return self

    def _limit_files(self) -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes then fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_file_bytes, self.max_file_bytes))

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"receiver exited:\n{self.log_text()}")
        try:  # "ok" once the ingest process has started too
            answer = self.session.get(self.url + "/healthz", timeout=1).json()
            return answer["status"] == self._wanted
        except (requests.RequestException, ValueError):
            return False

    def post(self, body, key: str | None = "default", **kwargs) -> requests.Response:
        key = self.key if key == "default" else key
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["X-Ploomes-Validation-Key"] = key
        data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        return self.session.post(self.webhook_url, data=data, headers=headers, timeout=30,
                                 **kwargs)

    def health(self) -> dict:
        return self.session.get(self.url + "/healthz", timeout=5).json()

    def wait_ingested(self, timeout: float = 10.0) -> dict:
        """Wait until every delivery is stored and derived; return the health body."""
        return wait_for(lambda: (h := self.health())["backlog"] == 0
                        and h["derive_backlog"] == 0 and h, timeout)

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        stop_process(self.proc)
        self.session.close()


@pytest.fixture
def receiver(tmp_path):
    proc = ReceiverProcess(tmp_path / "data").start()
    yield proc
    proc.stop()


def query(data_dir: Path, sql: str, params=None):
    """Run one query through the store's read path."""
    store = Store(make_settings(data_dir))
    with store.reader() as con:
        return con.execute(sql, params or []).fetchall()
