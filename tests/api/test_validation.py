"""Bad input in every filter, path and body: 400 naming each bad field, never a trace, never a query run with it."""

import json
import socket

import requests
import sqlalchemy as sa

from tests.api.conftest import BASE, seed
from tests.support import add_integration, rows

INJECTION = "x' OR '1'='1' --"
LIST = f"{BASE}/deliveries"
STATS = f"{BASE}/stats"

BAD_QUERIES = [
    (LIST, {"page": "0"}, ["page"]),
    (LIST, {"page": "-1"}, ["page"]),
    (LIST, {"page": "abc"}, ["page"]),
    (LIST, {"page": "1.5"}, ["page"]),
    (LIST, {"page": "99999999999999999999999"}, ["page"]),
    (LIST, {"limit": "0"}, ["limit"]),
    (LIST, {"limit": "101"}, ["limit"]),
    (LIST, {"limit": "1; DROP TABLE impact_deliveries"}, ["limit"]),
    (LIST, {"provider": "salesforce"}, ["provider"]),
    (LIST, {"provider": INJECTION}, ["provider"]),
    (LIST, {"status": "delivered"}, ["status"]),
    (LIST, {"status": INJECTION}, ["status"]),
    (LIST, {"companyId": INJECTION}, ["companyId"]),
    (LIST, {"companyId": "a" * 129}, ["companyId"]),
    (LIST, {"companyId": "acme|goodera"}, ["companyId"]),
    (LIST, {"startDate": "yesterday"}, ["startDate"]),
    (LIST, {"startDate": "2025-13-01"}, ["startDate"]),
    (LIST, {"endDate": INJECTION}, ["endDate"]),
    (LIST, {"endDate": "2025-11-01" + "0" * 100}, ["endDate"]),
    (LIST, {"company_id": "acme"}, ["company_id"]),  # a typo is an error, not a silently ignored filter
    (LIST, {"page": "0", "limit": "500", "provider": "x"}, ["page", "limit", "provider"]),
    (STATS, {"companyId": INJECTION}, ["companyId"]),
    (STATS, {"startDate": "not-a-date"}, ["startDate"]),
    (STATS, {"endDate": "2025-02-30"}, ["endDate"]),
    (STATS, {"provider": "benevity"}, ["provider"]),  # not a /stats filter in the spec
]


def answered(response, fields):
    """None if the response is a 400 naming exactly these fields (in details and in the message), else why not."""
    if response.status_code != 400:
        return f"{response.status_code}: {response.text[:300]}"
    body = response.json()
    named = sorted(d["field"] for d in body.get("details", []))
    if body.get("error") != "Validation error" or named != sorted(fields):
        return f"named {named}: {response.text[:300]}"
    missing = [f for f in fields if f not in body["message"]]
    return f"message lacks {missing}" if missing else None


def test_bad_query_is_400_naming_each_field(api):
    problems = {f"{path} {params}": answered(api.get(path, **params), fields) for path, params, fields in BAD_QUERIES}
    assert {k: v for k, v in problems.items() if v} == {}


def test_injection_strings_never_reach_sql_and_tables_survive(api):
    seed(api.engine, "acme", 2)
    union = "acme' UNION SELECT key_hash FROM impact_api_keys--"
    for value in (INJECTION, "'; DROP TABLE impact_deliveries; --", union):
        for name in ("companyId", "provider", "status", "startDate", "endDate", "page", "limit"):
            assert api.get(LIST, **{name: value}).status_code == 400
        assert api.get(f"{BASE}/deliveries/{value}").status_code in (400, 404)
    assert api.get(LIST).json()["pagination"]["total"] == 2


def test_repeated_parameter_is_400(api):
    response = api.call("GET", LIST + "?provider=benevity&provider=goodera")
    assert response.status_code == 400
    assert response.json()["details"][0]["field"] == "provider"


def test_oversized_query_string_is_400(api):
    response = api.get(LIST, companyId="a" * 5000)
    assert response.status_code == 400
    assert response.json()["details"][0]["field"] == "query"


def test_malformed_delivery_id_is_400(api):
    for ident in ("abc", "123", "6f1d3a52-9c1e-5b7e-8f43-1f0e2c9a7d1", "x" * 200):
        for method, path in (("GET", f"{BASE}/deliveries/{ident}"), ("POST", f"{BASE}/deliveries/{ident}/replay")):
            assert answered(api.call(method, path), ["id"]) is None, (method, ident)


def test_unknown_routes_and_methods_answer_json(api):
    assert api.get(f"{BASE}/nothing-here").status_code == 404
    assert api.get(f"{BASE}/nothing-here").json()["error"] == "Not found"
    wrong_method = api.call("DELETE", f"{BASE}/deliveries")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "Method not allowed"


def test_a_trailing_slash_is_a_json_404_naming_the_route_not_an_empty_redirect(api):
    for method, path in (("GET", f"{BASE}/deliveries/"), ("POST", f"{BASE}/deliveries/bulk-replay/")):
        response = api.call(method, path, allow_redirects=False)
        assert response.status_code == 404, (path, response.status_code, response.headers)
        assert response.headers["content-type"] == "application/json" and "location" not in response.headers
        assert response.json() == {
            "error": "Not found",
            "message": f"no such route; without the trailing slash it is {path.rstrip('/')}",
        }
    assert api.call("GET", f"{BASE}/nothing-here/", allow_redirects=False).json()["message"] == "no such route"


def test_a_request_the_server_cannot_parse_is_answered_in_json(api):
    host, port = api.url.removeprefix("http://").split(":")
    for raw in (
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /v1/impact-in/deliveries HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n",
        b"GET /v1/impact-in/deliveries HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    ):
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(raw)
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), answer
        assert b"content-type: application/json" in head.lower(), answer
        assert json.loads(payload) == {
            "error": "Bad request",
            "message": "the request is not valid HTTP/1.1 and could not be read",
        }


BULK = f"{BASE}/deliveries/bulk-replay"
RETRY_ALL = f"{BASE}/deliveries/retry-all-failed"
DELIVER = f"{BASE}/deliver"
UUID = "6f1d3a52-9c1e-5b7e-8f43-1f0e2c9a7d10"

BAD_BODIES = [
    (BULK, {}, ["ids"]),
    (BULK, {"ids": []}, ["ids"]),
    (BULK, {"ids": "6f1d3a52-9c1e-5b7e-8f43-1f0e2c9a7d10"}, ["ids"]),
    (BULK, {"ids": [UUID] * 101}, ["ids"]),
    (BULK, {"ids": [UUID, INJECTION, 7]}, ["ids.1", "ids.2"]),
    (BULK, {"ids": [UUID], "dryRun": True}, ["dryRun"]),
    (RETRY_ALL, {}, ["companyId"]),
    (RETRY_ALL, {"companyId": INJECTION}, ["companyId"]),
    (RETRY_ALL, {"companyId": "acme", "provider": "salesforce"}, ["provider"]),
    (RETRY_ALL, {"companyId": ["acme"]}, ["companyId"]),
]


def test_bad_body_is_400_naming_each_field(api):
    problems = {f"{path} {str(body)[:60]}": answered(api.post(path, body), fields) for path, body, fields in BAD_BODIES}
    assert {k: v for k, v in problems.items() if v} == {}


UNREADABLE = [
    (b"", "a JSON object is required"),
    (b"{not json", "is not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"ids": [NaN]}', "NaN is not allowed"),
    (b"[" * 150_000 + b"]" * 150_000, "larger than"),
    (b'{"a": ' * 5000 + b"1" + b"}" * 5000, "nested too deeply"),
]


def test_unreadable_body_is_400_on_body(api):
    for path in (BULK, RETRY_ALL, DELIVER):
        for raw, reason in UNREADABLE:
            response = api.call("POST", path, data=raw, headers={"Content-Type": "application/json"})
            assert answered(response, ["body"]) is None, (path, raw[:20])
            assert reason in response.json()["details"][0]["message"], (path, raw[:20], response.text)


def test_oversized_body_is_refused_with_or_without_content_length(api):
    big = json.dumps({"ids": ["x" * 300_000]}).encode()
    declared = api.call("POST", BULK, data=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 400 and "larger than" in declared.json()["message"]

    def chunks():
        for _ in range(300):
            yield b"x" * 1024

    streamed = requests.post(
        api.url + BULK, data=chunks(), headers={"Authorization": f"Bearer {api.keys['admin']}"}, timeout=30
    )
    assert streamed.status_code == 400 and "larger than" in streamed.json()["message"]


def spec_event(**overrides):
    event = {
        "eventId": "evt_api_1",
        "userId": "user_456",
        "eventType": "volunteer_hours",
        "timestamp": "2025-11-14T10:00:00Z",
        "value": 5.0,
        "unit": "hours",
        "outcomeScores": {"community_engagement": 0.85},
        "metadata": {"program": "buddy_mentoring"},
    }
    return {k: v for k, v in {**event, **overrides}.items() if v is not ...}


BAD_EVENTS = [
    ({"companyId": INJECTION}, ["companyId"]),
    ({"provider": "salesforce"}, ["provider"]),
    ({"event": None}, ["event"]),
    ({"event": spec_event(eventId=...)}, ["event.eventId"]),
    ({"event": spec_event(eventId="")}, ["event.eventId"]),
    ({"event": spec_event(eventId="e" * 257)}, ["event.eventId"]),
    ({"event": spec_event(userId=12)}, ["event.userId"]),
    ({"event": spec_event(userId="bad\x00id")}, ["event.userId"]),
    ({"event": spec_event(timestamp="2025-11-14T10:00:00")}, ["event.timestamp"]),
    ({"event": spec_event(timestamp="last tuesday")}, ["event.timestamp"]),
    ({"event": spec_event(value="5")}, ["event.value"]),
    ({"event": spec_event(value=True)}, ["event.value"]),
    ({"event": spec_event(value=-1)}, ["event.value"]),
    ({"event": spec_event(outcomeScores=[1, 2])}, ["event.outcomeScores"]),
    (
        {"provider": "goodera", "event": spec_event(outcomeScores={"community_engagement": 7.5})},
        ["event.outcomeScores.community_engagement"],
    ),
    ({"event": spec_event(metadata="program")}, ["event.metadata"]),
    ({"event": spec_event(metadata={"blob": "x" * 70_000})}, ["event.metadata"]),
    ({"event": spec_event(extra="field")}, ["event.extra"]),
    ({"event": spec_event(eventId=..., userId=..., value="x")}, ["event.eventId", "event.userId", "event.value"]),
]


def test_bad_deliver_body_is_400_naming_each_field_and_stores_nothing(api):
    add_integration(api.engine, "acme", "benevity")
    add_integration(api.engine, "acme", "goodera")
    problems = {}
    for change, fields in BAD_EVENTS:
        body = {"companyId": "acme", "provider": "benevity", "event": spec_event(), **change}
        problems[str(change)[:80]] = answered(api.post(DELIVER, body, key="acme"), fields)
    assert {k: v for k, v in problems.items() if v} == {}
    with api.engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from impact_events")).scalar_one() == 0
    assert rows(api.engine) == [] and api.sent() == []


def test_non_finite_value_is_400(api):
    add_integration(api.engine, "acme", "benevity")
    body = json.dumps({"companyId": "acme", "provider": "benevity", "event": spec_event(value=0)})
    for literal, field, reason in (("1e400", "event.value", "finite"), ("Infinity", "body", "Infinity is not allowed")):
        raw = body.replace('"value": 0', '"value": ' + literal).encode()
        response = api.call("POST", DELIVER, data=raw, headers={"Content-Type": "application/json"})
        assert answered(response, [field]) is None and reason in response.json()["message"], response.text
    assert rows(api.engine) == [] and api.sent() == []


def test_sql_text_in_an_event_is_just_text(api):
    """Values are bound parameters: an event id that looks like SQL is stored verbatim and harms nothing."""
    add_integration(api.engine, "acme", "benevity")
    sneaky = "evt'); DROP TABLE impact_events; --"
    response = api.post(DELIVER, {"companyId": "acme", "provider": "benevity", "event": spec_event(eventId=sneaky)})
    assert response.status_code == 201, response.text
    with api.engine.connect() as conn:
        assert conn.execute(sa.text("select event_id from impact_events")).scalars().all() == [sneaky]
    assert rows(api.engine)[0]["event_id"] == sneaky


def test_a_well_formed_date_outside_the_calendar_is_out_of_range_not_malformed(api):
    """9999-12-31 as an end date would end at a midnight that does not exist: the answer says that."""
    for params, name in (
        ({"endDate": "9999-12-31"}, "endDate"),
        ({"startDate": "0001-01-01T00:00:00+01:00"}, "startDate"),
        ({"endDate": "9999-12-31T23:30:00-01:00"}, "endDate"),
    ):
        response = api.get(LIST, **params)
        assert answered(response, [name]) is None, response.text
        [detail] = response.json()["details"]
        assert detail["message"].startswith("is out of range") and "not a date" not in detail["message"], detail
    assert "latest is 9999-12-30" in api.get(LIST, endDate="9999-12-31").json()["message"]
    for params in ({"endDate": "9999-12-30"}, {"startDate": "9999-12-31"}, {"endDate": "9999-12-31T23:59:59Z"}):
        assert api.get(LIST, **params).status_code == 200, params


LONE = "\\ud800"  # as JSON spells it: a surrogate without its pair, which no UTF-8 text can hold


def test_a_lone_surrogate_in_any_string_is_400_naming_the_field(api):
    add_integration(api.engine, "acme", "benevity")
    event = json.dumps(spec_event(metadata={"program": "p"}, outcomeScores={"community_engagement": 0.5}))
    cases = [
        (DELIVER, '"eventId": "evt_api_1"', f'"eventId": "evt{LONE}"', "event.eventId"),
        (DELIVER, '"userId": "user_456"', f'"userId": "{LONE}x"', "event.userId"),
        (DELIVER, '"program": "p"', f'"program": "p{LONE}"', "event.metadata.program"),
        (DELIVER, '"program": "p"', f'"pro{LONE}": "p"', f"event.metadata.pro{LONE}"),
        (DELIVER, '"community_engagement"', f'"{LONE}"', f"event.outcomeScores.{LONE}"),
    ]
    for path, old, new, field in cases:
        raw = '{"companyId": "acme", "provider": "benevity", "event": ' + event.replace(old, new) + "}"
        response = api.call("POST", path, data=raw.encode(), headers={"Content-Type": "application/json"}, key="acme")
        assert answered(response, [field]) is None, (new, response.status_code, response.text)
        assert "lone surrogate" in response.json()["message"]
    for path, raw, field in (
        (BULK, f'{{"ids": ["{UUID}", "{LONE}"]}}', "ids.1"),
        (RETRY_ALL, f'{{"companyId": "{LONE}"}}', "companyId"),
        (DELIVER, f'"{LONE}"', "body"),
    ):
        response = api.call("POST", path, data=raw.encode(), headers={"Content-Type": "application/json"})
        assert answered(response, [field]) is None, (raw, response.status_code, response.text)
    # in a query string, a surrogate's UTF-8 bytes are no UTF-8: the filter is refused, not a crash
    assert answered(api.call("GET", LIST + "?companyId=%ED%A0%80"), ["companyId"]) is None
    assert rows(api.engine) == [] and api.sent() == []

    paired = event.replace('"program": "p"', '"program": "\\ud83c\\udf31 garden"')  # a real pair is fine
    raw = '{"companyId": "acme", "provider": "benevity", "event": ' + paired + "}"
    response = api.call("POST", DELIVER, data=raw.encode(), headers={"Content-Type": "application/json"}, key="acme")
    assert response.status_code == 201, response.text
    assert response.json()["data"]["payload"]["event"]["impact"]["metadata"]["program"] == "\U0001f331 garden"


def test_a_key_repeated_anywhere_in_a_body_is_400_naming_it_and_nothing_is_stored(api):
    add_integration(api.engine, "acme", "benevity")
    event = json.dumps(spec_event(metadata={"program": "p"}, outcomeScores={"community_engagement": 0.5}))
    cases = [
        ('"program": "p"', '"program": "p", "program": "q"', "program"),
        (
            '"community_engagement": 0.5',
            '"community_engagement": 0.5, "community_engagement": 0.9',
            "community_engagement",
        ),
        ('"eventId": "evt_api_1"', '"eventId": "evt_api_1", "eventId": "evt_api_2"', "eventId"),
    ]
    for old, new, key in cases:
        raw = '{"companyId": "acme", "provider": "benevity", "event": ' + event.replace(old, new) + "}"
        response = api.call(
            "POST", DELIVER, data=raw.encode(), headers={"Content-Type": "application/json"}, key="acme"
        )
        assert answered(response, ["body"]) is None, (new, response.status_code, response.text)
        assert f"names the key '{key}' twice" in response.json()["message"]
    raw = '{"companyId": "acme", "companyId": "beta", "provider": "benevity", "event": ' + event + "}"
    response = api.call("POST", DELIVER, data=raw.encode(), headers={"Content-Type": "application/json"}, key="acme")
    assert answered(response, ["body"]) is None
    assert rows(api.engine) == [] and api.sent() == []
