"""Refused requests, visible (issue 18): what the real receiver refused is listed with its
time, source, status, reason, size and body, and counted the same on the Status page and
by `python -m ploomes status`, which both say what each count includes."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, ReceiverProcess, make_settings, wait_for
from streamlit.testing.v1 import AppTest

from ploomes.queries import status as qstatus
from ploomes.store import Store

NOT_JSON = b"<b>not json</b> **bold** [link](https://evil.example)"


def cli_status(data_dir) -> dict:
    done = subprocess.run([sys.executable, "-m", "ploomes", "status", "--data-dir",
                           str(data_dir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(done.stdout)


def test_refused_requests_are_listed_and_counted_alike(tmp_path, monkeypatch):
    receiver = ReceiverProcess(tmp_path / "data").start()
    try:
        assert receiver.post(NOT_JSON).status_code == 400
        assert receiver.post({"Action": "Update"}).status_code == 400  # not a Ploomes body
        assert receiver.post({"x": 1}, key="wrong-key-0123456789").status_code == 401
        assert receiver.post({"x": 1}, key=None).status_code == 401
        store = Store(make_settings(receiver.data_dir))

        def all_stored() -> bool:
            with store.reader() as con:
                return qstatus.refused_counts(con) == {"refused_deliveries": 2,
                                                       "failed_key_attempts": 2}
        wait_for(all_stored, timeout=20)
    finally:
        receiver.stop()
    with store.reader() as con:
        rows = qstatus.refused_requests(con)
    assert list(rows["kind"]) .count("delivery") == 2 and list(rows["kind"]).count("key") == 2
    assert set(rows["source"]) == {"127.0.0.1"}
    assert sorted(rows["status"]) == [400, 400, 401, 401]
    bad = rows[rows["raw_size"] == len(NOT_JSON)].iloc[0]
    assert bytes(bad["raw"]) == NOT_JSON and bad["status"] == 400 and bad["reason"]
    keys = rows[rows["kind"] == "key"]
    assert keys["raw"].isna().all() and keys["raw_size"].isna().all()

    status = cli_status(receiver.data_dir)
    assert (status["refused_deliveries"], status["failed_key_attempts"]) == (2, 2)
    assert status["counts_include"][1:] == [qstatus.REFUSED_DELIVERIES_MEANING,
                                            qstatus.KEY_ATTEMPTS_MEANING]

    monkeypatch.setenv("PLOOMES_DATA_DIR", str(receiver.data_dir))
    at = AppTest.from_file(str(ROOT / "views" / "status.py"), default_timeout=30)
    at.run(timeout=30)
    assert not at.exception, at.exception
    assert [m.value for m in at.metric][-2:] == ["2", "2"]  # the same numbers
    [table] = [t.value for t in at.dataframe if "status" in t.value.columns]
    assert sorted(table["status"]) == [400, 400, 401, 401]
    assert set(table["source"]) == {"127.0.0.1"}
    assert sorted(table.iloc[:, -1].dropna().astype(int)) == sorted(
        rows["raw_size"].dropna().astype(int))
    explained = " ".join(c.value for c in at.caption)
    assert "python -m ploomes status" in explained
    assert "400" in explained and "401" in explained  # what each count includes
