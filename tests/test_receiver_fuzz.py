"""Generated bodies against the real receiver: no body gives a 5xx or stops it serving."""

from __future__ import annotations

import json

from conftest import query
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
ids = st.one_of(st.none(), st.integers(-(2**64), 2**64), st.text(max_size=5), st.booleans())
records = st.one_of(st.none(), json_values,
                    st.fixed_dictionaries({"Id": ids}, optional={"Name": st.text(max_size=40),
                                                                 "Tags": json_values,
                                                                 "OtherProperties": json_values}))
deliveries = st.fixed_dictionaries(
    {},
    optional={"Action": st.one_of(st.sampled_from(["Create", "Update", "Delete", "Win"]),
                                  json_values),
              "Entity": st.one_of(st.sampled_from(["Contacts", "Deals"]), json_values),
              "ActionUserId": ids, "AccountId": ids, "WebhookId": ids,
              "Old": records, "New": records, "Extra": json_values},
)
# well-formed deliveries with generated contents: without them a run may hold none at
# all (the strategies above make one in ~150), and the accepted path would go untested
int64_ids = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))
valid_deliveries = st.fixed_dictionaries(
    {"Action": st.sampled_from(["Create", "Update", "Delete", "Win", "Lose"]),
     "Entity": st.sampled_from(["Contacts", "Deals", "Quotes"])},
    optional={"ActionUserId": int64_ids, "AccountId": int64_ids, "WebhookId": int64_ids,
              "New": st.fixed_dictionaries({"Id": int64_ids},
                                           optional={"Name": st.text(max_size=40),
                                                     "OtherProperties": json_values}),
              "Old": st.none() | st.fixed_dictionaries({"Id": int64_ids}),
              "Extra": json_values},
)
raw_bodies = st.one_of(
    st.binary(max_size=200),
    valid_deliveries.map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8",
                                                                            "surrogatepass")),
    deliveries.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    deliveries.map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")),
)


def test_generated_bodies_never_get_a_5xx(receiver):
    answers = []

    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(raw_bodies)
    def check(raw):
        response = receiver.post(raw)
        assert response.status_code in (200, 400), (response.status_code, response.text, raw)
        assert response.headers["Content-Type"].startswith("application/json")
        answers.append(response.status_code)

    check()
    assert 200 in answers and 400 in answers
    health = receiver.wait_ingested(timeout=30)
    assert health["status"] == "ok", health
    accepted = answers.count(200)
    # every accepted body is an event; nothing was turned away during ingestion
    assert query(receiver.data_dir, "SELECT count(*) FROM events")[0][0] == accepted
    assert query(receiver.data_dir,
                 "SELECT count(*) FROM rejected_deliveries WHERE status = 200")[0][0] == 0
    assert "Traceback" not in receiver.log_text()
