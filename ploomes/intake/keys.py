"""Validation keys: the ones from the environment plus the ones kept in the data dir.

Keys are secrets: they are compared in constant time, never logged, and shown only
masked (`ploomes.config.mask_secret`).
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from pathlib import Path

from ploomes.config import Settings, mask_secret

KEY_FILE = Path("keys") / "validation-keys.txt"


def generate_key() -> str:
    """Return a new strong validation key (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def key_file(settings: Settings) -> Path:
    """Return the file that holds the data dir's validation keys."""
    return settings.data_dir / KEY_FILE


def stored_keys(settings: Settings) -> list[str]:
    """Return the keys stored in the data dir, oldest first."""
    try:
        text = key_file(settings).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def accepted_keys(settings: Settings) -> list[str]:
    """Return every key the receiver accepts: environment keys, then stored keys."""
    keys = list(settings.validation_keys)
    keys += [k for k in stored_keys(settings) if k not in keys]
    return keys


def add_key(settings: Settings, key: str) -> None:
    """Store a key in the data dir (file mode 0600) so the receiver accepts it."""
    key = key.strip()
    if len(key) < 16 or any(c.isspace() or c == "," for c in key):
        raise ValueError("a validation key needs at least 16 characters, no spaces or commas")
    path = key_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if key in stored_keys(settings):
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (key + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_key(settings: Settings) -> tuple[str | None, bool]:
    """Make sure at least one key exists; return (newly generated key or None, created)."""
    if accepted_keys(settings):
        return None, False
    key = generate_key()
    add_key(settings, key)
    return key, True


def key_matches(candidate: str | None, keys: list[str]) -> bool:
    """Compare a presented key with every accepted key in constant time."""
    if not candidate:
        return False
    given = candidate.encode("utf-8", "surrogatepass")
    ok = False
    for key in keys:  # no early exit: the time does not depend on which key matched
        ok |= hmac.compare_digest(given, key.encode("utf-8"))
    return ok


class KeyRing:
    """The receiver's accepted keys, re-read when the key file changes.

    The file is looked at no more than every `CHECK_EVERY` seconds: a `stat` per request
    is a system call on the single thread that serves every request.
    """

    CHECK_EVERY = 1.0

    def __init__(self, settings: Settings):
        self._settings = settings
        self._stamp: tuple | None = None
        self._keys: list[str] = []
        self._checked = 0.0
        self.refresh()

    def refresh(self, force: bool = True) -> None:
        """Re-read the stored keys if their file changed since the last read."""
        now = time.monotonic()
        if not force and now - self._checked < self.CHECK_EVERY and self._keys:
            return
        self._checked = now
        try:
            st = key_file(self._settings).stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp or not self._keys:
            self._keys = accepted_keys(self._settings)
            self._stamp = stamp

    def matches(self, candidate: str | None) -> bool:
        """Return whether a presented key is accepted."""
        self.refresh(force=False)
        return key_matches(candidate, self._keys)

    def redact(self, text: str) -> str:
        """Return text with every accepted key in it masked (for log lines)."""
        for key in self._keys:
            if key in text:
                text = text.replace(key, mask_secret(key))
        return text

    def __len__(self) -> int:
        return len(self._keys)
