"""ploomes.intake.probe: what the Status page learns from the receiver's /healthz."""

from __future__ import annotations

from conftest import free_port

from ploomes.intake import probe


def test_receiver_health_unreachable():
    health = probe.receiver_health(f"http://127.0.0.1:{free_port()}", timeout=0.5)
    assert health["reachable"] is False
    assert health["error"] == "ConnectionError"


def test_receiver_health_of_a_real_receiver(receiver):
    health = probe.receiver_health(receiver.url + "/")
    assert health["reachable"] is True
    assert health["status"] == "ok"
    assert health["http_status"] == 200
    assert health["backlog"] == 0
    assert health["url"] == receiver.url + "/healthz"
