"""The logging contract: deliveryId, provider, eventId, status, attemptCount on every line about a delivery, as
structured fields; one JSON object per line with IMPACTIN_LOG_FORMAT=json (CLI and code location); the same
lines in the Dagster run's event log."""

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.defs.planning import covering_range, run_request
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.observability import (
    DELIVERY_FIELDS,
    JsonLineFormatter,
    install_json_logging,
    log_delivery,
    log_format,
)
from impactin_pipelines.providers.benevity.fake import API_KEY, SIGNATURE_SECRET
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.services.deliver import DeliveryRun
from impactin_pipelines.services.extract import extract
from impactin_pipelines.services.replay import ReplayRefused, replay_many, replay_one
from impactin_pipelines.settings import DeliverySettings, RetrySettings
from tests.support import add_events, add_integration, event, events, rows

FAST = DeliverySettings(concurrency=2, lease_s=30, retry=RetrySettings(max_attempts=2, initial_delay_s=0.01))
IMPACTIN = str(Path(sys.executable).parent / "impactin")


def _record(message: str = "attempt succeed", **more: object) -> logging.LogRecord:
    logger = logging.getLogger("impactin.test.format")
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    handler = Keep()
    logger.addHandler(handler)
    try:
        log_delivery(
            logger,
            logging.WARNING,
            message,
            delivery_id="d-1",
            provider="benevity",
            event_id="evt-1",
            status="retrying",
            attempt_count=2,
            **more,
        )
    finally:
        logger.removeHandler(handler)
    return captured[0]


def test_a_json_line_has_the_contract_fields_at_top_level() -> None:
    line = JsonLineFormatter().format(_record(httpStatus=503, companyId="acme"))
    assert "\n" not in line
    doc = json.loads(line)
    assert {k: doc[k] for k in DELIVERY_FIELDS} == {
        "deliveryId": "d-1",
        "provider": "benevity",
        "eventId": "evt-1",
        "status": "retrying",
        "attemptCount": 2,
    }
    assert doc["message"] == "attempt succeed" and doc["level"] == "WARNING" and doc["httpStatus"] == 503
    assert doc["logger"] == "impactin.test.format" and doc["time"].endswith("+00:00")


def test_text_lines_carry_the_fields_in_the_message_too() -> None:
    record = _record()
    assert record.getMessage() == (
        "attempt succeed deliveryId=d-1 provider=benevity eventId=evt-1 status=retrying attemptCount=2"
    )
    assert (record.deliveryId, record.attemptCount) == ("d-1", 2)  # type: ignore[attr-defined]


def test_plain_lines_and_exceptions_are_json_too() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        record = logging.LogRecord("impactin.x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    doc = json.loads(JsonLineFormatter().format(record))
    assert doc["message"] == "failed here" and "RuntimeError: boom" in doc["exception"]
    assert "deliveryId" not in doc


def test_log_format_is_validated() -> None:
    assert log_format({}) == "text" and log_format({"IMPACTIN_LOG_FORMAT": " JSON "}) == "json"
    with pytest.raises(ValueError, match="IMPACTIN_LOG_FORMAT='xml' must be one of text, json"):
        log_format({"IMPACTIN_LOG_FORMAT": "xml"})


def test_code_location_installs_json_lines_once() -> None:
    logger = logging.getLogger("impactin.test.install")
    stream = io.StringIO()
    try:
        assert not install_json_logging("impactin.test.install", env={})
        assert install_json_logging("impactin.test.install", env={"IMPACTIN_LOG_FORMAT": "json"}, stream=stream)
        assert install_json_logging("impactin.test.install", env={"IMPACTIN_LOG_FORMAT": "json"}, stream=stream)
        assert len(logger.handlers) == 1
        log_delivery(
            logger,
            logging.INFO,
            "hello",
            delivery_id="d",
            provider="goodera",
            event_id="e",
            status="s",
            attempt_count=0,
        )
        [line] = stream.getvalue().splitlines()
        assert json.loads(line)["provider"] == "goodera"
    finally:
        logger.handlers.clear()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_every_line_about_a_delivery_carries_the_fields(engine, sandbox) -> None:  # type: ignore[no-untyped-def]
    """Deliver and replay through every outcome; any line that names a delivery must have all five fields."""
    add_integration(engine, "acme", "benevity")
    add_integration(engine, "nocfg", "benevity", settings={"api_url": "not a url"})
    add_events(engine, [*events("acme", 4), event("bad", "acme", value="x"), *events("nocfg", 1)])
    for company in ("acme", "nocfg"):
        extract(engine, company, Provider.BENEVITY)
    bnv = sandbox.providers["benevity"]
    bnv.configure({"reject_events": ["evt_acme_00000"], "fail_next": {"status": 503, "count": 2}})
    factory = ConnectorFactory(engine, env=ProviderEnv.from_env(sandbox.env()), settings=FAST)
    collect = _Collect()
    logger = logging.getLogger("impactin.test.contract")
    logger.addHandler(collect)
    logger.setLevel(logging.DEBUG)
    try:
        for company in ("acme", "nocfg"):
            DeliveryRun(
                engine, factory, provider=Provider.BENEVITY, company_ids=[company], settings=FAST, logger=logger
            ).run()
        every = rows(engine)
        replay_many(engine, factory, [r["id"] for r in every], logger=logger)
        delivered = next(r for r in rows(engine) if r["status"] == "success")
        with pytest.raises(ReplayRefused):
            replay_one(engine, factory, delivered["id"], logger=logger)
        rejected = next(r for r in every if r["event_id"] == "evt_acme_00000")
        replay_one(engine, factory, rejected["id"], dry_run=True, logger=logger)
    finally:
        logger.removeHandler(collect)
        factory.close()
    ids = {r["delivery_id"] for r in every}
    about_a_delivery = [r for r in collect.records if any(i in r.getMessage() for i in ids)]
    assert len(about_a_delivery) >= 10
    for record in about_a_delivery:
        missing = [f for f in DELIVERY_FIELDS if getattr(record, f, None) is None]
        assert not missing, f"{record.getMessage()!r} lacks {missing}"
    messages = " ".join(r.getMessage() for r in collect.records)
    for kind in ("attempt succeed", "attempt fail", "attempt retry", "delivery not configured", "replay refused"):
        assert kind in messages
    assert API_KEY not in messages and SIGNATURE_SECRET not in messages


def test_cli_writes_one_json_object_per_line(engine, sandbox, warehouse_url) -> None:  # type: ignore[no-untyped-def]
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", 1))
    extract(engine, "acme", Provider.BENEVITY)
    [row] = rows(engine)
    sandbox.providers["benevity"].configure({"fail_next": {"status": 503, "count": 10}})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENEVITY_", "GOODERA_", "WORKDAY_"))}
    env.update(
        sandbox.env(),
        IMPACTIN_WAREHOUSE_URL=warehouse_url,
        IMPACTIN_LOG_FORMAT="json",
        IMPACTIN_RETRY_INITIAL_DELAY_S="0.01",
    )
    done = subprocess.run(
        [IMPACTIN, "replay", row["id"], "--json"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1  # 503 every time: the row is retrying, not delivered
    assert json.loads(done.stdout)["results"][0]["newStatus"] == "retrying"
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every stderr line is one JSON object
    attempts = [doc for doc in lines if doc["message"].startswith("attempt ")]
    assert [doc["message"] for doc in attempts] == ["attempt retry", "attempt retry", "attempt park"]  # 3 per run
    for doc in attempts:
        assert (doc["deliveryId"], doc["eventId"], doc["provider"]) == (row["delivery_id"], row["event_id"], "benevity")
        assert doc["status"] in ("retrying",) and doc["httpStatus"] == 503 and doc["level"] == "WARNING"
    assert [doc["attemptCount"] for doc in attempts] == [1, 2, 3]

    bad = subprocess.run(
        [IMPACTIN, "stats"], env={**env, "IMPACTIN_LOG_FORMAT": "yaml"}, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1 and "IMPACTIN_LOG_FORMAT='yaml' must be one of text, json" in bad.stderr


def test_requested_runs_select_no_logger_in_text_mode() -> None:
    request = run_request(covering_range(["acme"], ["acme"], "benevity"), trigger="schedule")
    assert request.run_config == {}


def test_dagster_run_logs_are_json_lines_and_in_the_event_log(engine, sandbox, monkeypatch, capfd) -> None:  # type: ignore[no-untyped-def]
    from impactin_pipelines.definitions import build_defs

    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", 2))
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IMPACTIN_WAREHOUSE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("IMPACTIN_LOG_FORMAT", "json")
    defs = build_defs()
    try:
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("company", ["acme"])
            request = run_request(covering_range(["acme"], ["acme"], "benevity"), trigger="schedule")
            assert request.run_config == {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
            result = defs.resolve_job_def("impact_delivery_job").execute_in_process(
                instance=instance, tags=request.tags, run_config=request.run_config
            )
            assert result.success
            event_log = [entry.message or "" for entry in instance.all_logs(result.run_id)]
    finally:
        logging.getLogger("impactin").handlers.clear()
    [first, second] = rows(engine)
    for row in (first, second):  # the UI's event log has the line, fields rendered in the message
        assert any(f"deliveryId={row['delivery_id']}" in m and "attemptCount=1" in m for m in event_log)
    stderr = capfd.readouterr().err
    docs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert len(docs) == len([line for line in stderr.splitlines() if line.strip()])  # nothing but JSON
    attempts = [doc for doc in docs if doc.get("deliveryId")]
    assert {doc["deliveryId"] for doc in attempts} == {first["delivery_id"], second["delivery_id"]}
    for doc in attempts:
        assert doc["runId"] == result.run_id and doc["stepKey"] == "impact_deliveries"
        assert (doc["status"], doc["attemptCount"], doc["provider"]) == ("success", 1, "benevity")
