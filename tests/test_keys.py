"""KeyRing: stored keys are re-read when their file changes, at most once a second."""

from __future__ import annotations

from conftest import TEST_KEY, make_settings

from ploomes.intake import keys
from ploomes.intake.keys import KeyRing, add_key

NEW_KEY = "rotated-key-0123456789abcdef0123456789"


def test_a_stored_key_is_seen_once_the_file_is_looked_at_again(tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(keys.time, "monotonic", lambda: now[0])
    settings = make_settings(tmp_path / "data")
    ring = KeyRing(settings)
    stats = []
    real_key_file = keys.key_file
    monkeypatch.setattr(keys, "key_file", lambda s: stats.append(1) or real_key_file(s))
    assert ring.matches(TEST_KEY)
    add_key(settings, NEW_KEY)
    stats.clear()  # add_key looks the file up itself
    now[0] += 0.5
    assert not ring.matches(NEW_KEY)  # within CHECK_EVERY: the file is not looked at
    assert stats == []
    now[0] += KeyRing.CHECK_EVERY
    assert ring.matches(NEW_KEY)  # looked at again: the new key is accepted
    assert ring.matches(TEST_KEY) and not ring.matches("wrong-key")
    assert stats  # and only now was the file looked at
