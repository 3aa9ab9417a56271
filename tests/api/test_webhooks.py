"""Provider webhooks end to end: the sandbox fakes accept a delivery, then sign and send a callback to the API over
loopback; the API verifies it and records it on the delivery. Every refusal (unsigned, mis-signed, stale, replayed)
is a 401 that changes nothing; repeats change nothing; callbacks nobody matches are kept."""

import json
import re
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from impactin_pipelines.domain.events import format_timestamp
from impactin_pipelines.security.crypto import load_keyring
from impactin_pipelines.security.webhooks import SIGNATURE_HEADER, sign
from impactin_pipelines.services import replay
from impactin_pipelines.services.stats import StatsFilter, delivery_stats
from impactin_pipelines.store.schema import impact_deliveries as d
from impactin_pipelines.store.schema import impact_delivery_callbacks as cb
from tests.api.conftest import BASE, seed
from tests.api.test_delivery_filters import _cli
from tests.support import add_integration, deliver, rows

HOOK = f"{BASE}/webhooks"


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def callbacks(engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(cb).order_by(cb.c.received_at, cb.c.id)).all()]


def hook(api, provider: str = "benevity", **knobs: Any) -> None:
    api.sandbox.providers[provider].configure({"callbacks": {"url": f"{api.url}{HOOK}/{provider}", **knobs}})


def signed_post(api, body: dict[str, Any], *, provider="benevity", secret=None, timestamp=None, header=None):
    raw = json.dumps(body).encode()
    secret = secret or api.sandbox.providers[provider].webhook_secret
    value = header if header is not None else sign(raw, secret, int(timestamp or time.time()))
    headers = {"Content-Type": "application/json", **({SIGNATURE_HEADER: value} if value else {})}
    return api.call("POST", f"{HOOK}/{provider}", key=None, data=raw, headers=headers), raw, value


def delivered_row(api, n: int = 1, provider: str = "benevity") -> list[dict[str, Any]]:
    add_integration(api.engine, "acme", provider)
    seed(api.engine, "acme", n, provider=provider)
    deliver(api.engine, api.factory, provider, ["acme"])
    return rows(api.engine, provider=provider)


def test_a_confirmation_from_the_fake_is_recorded_on_the_delivery(api):
    hook(api)
    [row] = delivered_row(api)
    confirmed = wait_for(lambda: [r for r in rows(api.engine) if r["confirmation"] == "confirmed"])
    assert confirmed[0]["delivery_id"] == row["delivery_id"] and confirmed[0]["confirmed_at"] is not None
    assert confirmed[0]["status"] == "success"
    [stored] = callbacks(api.engine)
    assert (stored["kind"], stored["effect"], stored["delivery_id"]) == ("confirmed", "confirmed", row["delivery_id"])
    # The fake logs a callback once the API's answer reaches it, which can be after the API committed the row.
    [sent] = wait_for(lambda: api.sandbox.providers["benevity"].snapshot()["callbacks"])
    assert sent["status"] == 200


def test_a_rejection_after_the_2xx_turns_the_row_failed_rejected_for_stats_and_replays(api):
    hook(api, reject_events=["evt_acme_benevity_001"], reason="duplicate volunteer record")
    delivered_row(api, 2)
    failed = wait_for(lambda: [r for r in rows(api.engine) if r["status"] == "failed"])
    assert [r["event_id"] for r in failed] == ["evt_acme_benevity_001"]
    assert failed[0]["error_kind"] == "rejected" and failed[0]["confirmation"] == "rejected"
    assert "duplicate volunteer record" in failed[0]["last_error"]
    assert delivery_stats(api.engine, StatsFilter())["overall"]["failed"] == 1
    # The fake calls back for each accepted row on its own time: the other row's confirmation can come after the
    # rejection. Both are in before callbacks stop, so none of the sends before the replay calls back after it.
    wait_for(lambda: len(callbacks(api.engine)) == 2)
    api.sandbox.providers["benevity"].configure({"callbacks": None})  # the replay's acceptance sends no callback
    results = replay.replay_all_failed(api.engine, api.factory, company_id="acme", provider="benevity", run_id="t")
    assert [(r.success, r.new_status) for r in results] == [(True, "success")]
    [again] = [r for r in rows(api.engine) if r["event_id"] == "evt_acme_benevity_001"]
    assert again["status"] == "success" and again["confirmation"] is None  # the old verdict was about the old send
    assert again["confirmed_at"] is None and len(callbacks(api.engine)) == 2  # the audit rows stay


def test_a_rejection_that_beats_our_own_settlement_still_fails_the_row(api):
    add_integration(api.engine, "acme", "benevity")
    seed(api.engine, "acme", 1)
    [row] = rows(api.engine)
    body = {"id": "cb_early", "type": "delivery.rejected", "idempotencyKey": row["delivery_id"], "reason": "no"}
    response, _, _ = signed_post(api, body)
    assert response.status_code == 200 and response.json()["effect"] == "rejected_unsettled"
    deliver(api.engine, api.factory, "benevity", ["acme"])
    [settled] = rows(api.engine)
    assert (settled["status"], settled["error_kind"]) == ("failed", "rejected")
    assert "no" in settled["last_error"]


def test_unsigned_mis_signed_stale_and_replayed_callbacks_are_401_and_change_nothing(api):
    [row] = delivered_row(api)
    body = {"id": "cb_1", "type": "delivery.rejected", "idempotencyKey": row["delivery_id"], "reason": "x"}
    before = rows(api.engine)
    refused = [
        signed_post(api, body, header="")[0],  # unsigned
        signed_post(api, body, secret="not-the-secret")[0],
        signed_post(api, body, timestamp=time.time() - 301)[0],  # stale: outside the default 5 minutes
        signed_post(api, body, timestamp=time.time() + 301)[0],  # from the future, as far
        signed_post(api, body, header="t=abc,v1=00")[0],  # malformed
    ]
    assert [r.status_code for r in refused] == [401] * 5
    assert all("not-the-secret" not in r.text and "sandbox-benevity" not in r.text for r in refused)
    assert rows(api.engine) == before and callbacks(api.engine) == []

    ok, raw, header = signed_post(api, body)
    assert ok.status_code == 200 and ok.json()["effect"] == "rejected"
    replayed = api.call(
        "POST",
        f"{HOOK}/benevity",
        key=None,
        data=raw,
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: header},
    )
    assert replayed.status_code == 401 and "replay" in replayed.json()["message"]
    assert len(callbacks(api.engine)) == 1


def test_repeated_callbacks_are_deduplicated_and_the_fakes_knobs_are_refused(api):
    hook(api, duplicates=2, replay=True)
    [row] = delivered_row(api)
    sent = wait_for(lambda: len(log := api.sandbox.providers["benevity"].snapshot()["callbacks"]) == 4 and log)
    assert [c["status"] for c in sent] == [200, 200, 200, 401]  # first, two fresh repeats, one byte-exact replay
    [stored] = callbacks(api.engine)
    assert stored["delivery_id"] == row["delivery_id"]
    for knobs in ({"bad_signature": True}, {"unsigned": True}, {"stale_s": 600}):
        api.sandbox.providers["benevity"].reset()
        hook(api, **knobs)
        record = {"event_id": row["event_id"], "idempotency_key": row["delivery_id"], "id": "bnv_x"}
        assert api.sandbox.providers["benevity"].send_callback(record, "rejected") == [401], knobs
    assert rows(api.engine, delivery_id=row["delivery_id"])[0]["status"] == "success"


def test_a_callback_for_no_delivery_of_ours_is_kept_and_reported(api):
    body = {"id": "cb_ghost", "type": "delivery.confirmed", "eventId": "evt_nobody_sent"}
    response, _, _ = signed_post(api, body)
    assert response.status_code == 200 and response.json() == {
        "received": True,
        "effect": "unmatched",
        "deliveryId": None,
    }
    [kept] = callbacks(api.engine)
    assert (kept["effect"], kept["event_id"], kept["delivery_id"]) == ("unmatched", "evt_nobody_sent", None)


def test_bad_bodies_and_unknown_providers(api):
    assert api.post(f"{HOOK}/nobody", {"id": "x"}, key=None).status_code == 404
    response, _, _ = signed_post(api, {"id": "cb_2", "type": "delivery.lost", "eventId": "e"})
    assert response.status_code == 400 and "type must be one of" in response.json()["message"]
    response, _, _ = signed_post(api, {"id": "cb_3", "type": "delivery.confirmed"})
    assert response.status_code == 400 and "idempotencyKey or eventId" in response.json()["message"]
    assert callbacks(api.engine) == []


def test_a_companys_own_encrypted_secret_replaces_the_providers(api):
    own = "acme-own-webhook-secret"
    add_integration(
        api.engine, "acme", "goodera", settings={"webhook_secret": {"encrypted": load_keyring().encrypt(own)}}
    )
    seed(api.engine, "acme", 1, provider="goodera")
    deliver(api.engine, api.factory, "goodera", ["acme"])
    [row] = rows(api.engine)
    body = {"id": "cb_g", "type": "delivery.deleted", "idempotencyKey": row["delivery_id"], "reason": "erasure"}
    assert signed_post(api, body, provider="goodera")[0].status_code == 401  # the provider-wide secret no longer
    response, _, _ = signed_post(api, body, provider="goodera", secret=own)
    assert response.status_code == 200 and response.json()["effect"] == "deleted"
    with api.engine.connect() as conn:
        confirmation = conn.execute(sa.select(d.c.confirmation).where(d.c.id == row["id"])).scalar_one()
    assert confirmation == "deleted"
    assert own not in json.dumps([str(c) for c in callbacks(api.engine)])


def test_the_webhook_is_in_the_openapi_document_without_bearer_auth(api):
    doc = api.get("/openapi.json").json()
    operation = doc["paths"]["/v1/impact-in/webhooks/{provider}"]["post"]
    assert operation["security"] == [] and {"200", "400", "401", "404"} <= set(operation["responses"])


def test_confirmations_show_in_the_api_and_the_cli(api):
    """GET /deliveries, /deliveries/{id}, `impactin deliveries list --json` and `show` carry what the provider said:
    `confirmation` and `confirmedAt` (null until a callback arrives)."""
    hook(api, reject_events=["evt_acme_benevity_002"], reason="duplicate volunteer record")
    delivered_row(api, 3)
    wait_for(lambda: sum(r["confirmation"] is not None for r in rows(api.engine)) == 3)
    by_event = {r["event_id"]: r for r in rows(api.engine)}
    listed = {i["id"]: i for i in api.get(f"{BASE}/deliveries", limit=10).json()["data"]}
    for event_id, verdict in (("evt_acme_benevity_001", "confirmed"), ("evt_acme_benevity_002", "rejected")):
        row = by_event[event_id]
        detail = api.get(f"{BASE}/deliveries/{row['id']}").json()["data"]
        for shape in (listed[row["id"]], detail):
            assert shape["confirmation"] == verdict
            assert shape["confirmedAt"] == format_timestamp(row["confirmed_at"]) and shape["confirmedAt"].endswith("Z")
    [later] = delivered_row(api, 1, provider="goodera")  # no callbacks configured for goodera: nothing said yet
    assert api.get(f"{BASE}/deliveries/{later['id']}").json()["data"]["confirmation"] is None

    url = api.engine.url.render_as_string(hide_password=False)
    confirmed = by_event["evt_acme_benevity_001"]
    shown = _cli(["deliveries", "show", "--json", confirmed["id"]], url)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["confirmation"] == "confirmed"
    assert json.loads(shown.stdout)["confirmed_at"] is not None
    text = _cli(["deliveries", "show", confirmed["id"]], url)
    assert text.returncode == 0 and re.search(r"^\s*confirmation: confirmed$", text.stdout, re.M), text.stdout
    as_json = _cli(["deliveries", "list", "--json", "--provider", "benevity"], url)
    assert as_json.returncode == 0, as_json.stderr
    verdicts = {r["event_id"]: r["confirmation"] for r in json.loads(as_json.stdout)["data"]}
    assert verdicts == {f"evt_acme_benevity_00{i}": v for i, v in ((0, "confirmed"), (1, "confirmed"), (2, "rejected"))}


def test_the_openapi_document_lists_the_confirmation(api):
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    for name in ("DeliverySummary", "DeliveryDetail"):
        assert {"confirmation", "confirmedAt"} <= set(schemas[name]["required"])
        assert schemas[name]["properties"]["confirmation"]["enum"] == ["confirmed", "rejected", "deleted", None]
