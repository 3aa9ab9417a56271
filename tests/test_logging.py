"""The logging contract: deliveryId, provider, eventId, status, attemptCount on every line about a delivery, as
structured fields; one JSON object per line with IMPACTIN_LOG_FORMAT=json (CLI and code location). In a Dagster
run every delivery line is on stderr, and only retries, failures and summaries are in the run's event log (the
instance's python_logs manage the `impactin` loggers), so a routine delivery costs no event-log write."""

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.defs.orchestration.planning import covering_range, run_request
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.observability import (
    DELIVERY_FIELDS,
    JsonLineFormatter,
    install_stream_logging,
    log_delivery,
    log_format,
)
from impactin_pipelines.providers.benevity.fake import API_KEY, SIGNATURE_SECRET
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.services.deliver import DeliveryRun
from impactin_pipelines.services.extract import extract
from impactin_pipelines.services.replay import ReplayRefused, replay_many, replay_one
from impactin_pipelines.settings import DeliverySettings, RetrySettings
from tests.support import add_events, add_integration, event, events, rows, statuses

FAST = DeliverySettings(concurrency=2, lease_s=30, retry=RetrySettings(max_attempts=2, initial_delay_s=0.01))
IMPACTIN = str(Path(sys.executable).parent / "impactin")
ROOT = Path(__file__).resolve().parents[1]
# The repository's instance settings for Python logs (dagster.yaml), as the tests' instances use them.
PYTHON_LOGS = yaml.safe_load((ROOT / "dagster.yaml").read_text())["python_logs"]


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
    # `extra` fields become attributes the LogRecord class does not declare
    assert (getattr(record, "deliveryId", None), getattr(record, "attemptCount", None)) == ("d-1", 2)


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


def test_code_location_installs_one_stream_handler_in_the_configured_format() -> None:
    logger = logging.getLogger("impactin.test.install")
    child = logging.getLogger("impactin.test.install.child")
    json_stream, text_stream = io.StringIO(), io.StringIO()
    try:
        handler = install_stream_logging(
            "impactin.test.install", env={"IMPACTIN_LOG_FORMAT": "json"}, stream=json_stream
        )
        assert install_stream_logging("impactin.test.install", env={}, stream=text_stream) is handler
        assert install_stream_logging("impactin.test.install.child", env={}) is handler  # the parent's reaches it
        assert len(logger.handlers) == 1 and not child.handlers
        logger.setLevel(logging.INFO)
        log_delivery(
            child,
            logging.INFO,
            "hello",
            delivery_id="d",
            provider="goodera",
            event_id="e",
            status="s",
            attempt_count=0,
        )
        [line] = json_stream.getvalue().splitlines()
        assert json.loads(line)["provider"] == "goodera" and text_stream.getvalue() == ""
    finally:
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_every_line_about_a_delivery_carries_the_fields(engine, sandbox) -> None:
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


def test_cli_writes_one_json_object_per_line(engine, sandbox, warehouse_url) -> None:
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


def test_requested_runs_carry_no_logging_run_config(monkeypatch) -> None:
    for log_format_value in ("text", "json"):
        monkeypatch.setenv("IMPACTIN_LOG_FORMAT", log_format_value)
        span = covering_range(["acme"], ["acme"], "benevity")
        assert span is not None
        assert run_request(span, trigger="schedule").run_config == {}


def _run_delivery_job(engine, sandbox, monkeypatch, *, python_logs=PYTHON_LOGS, **env: str):
    """One scheduled-style run of the code location's delivery job for company acme at Benevity; returns the run
    and the messages of its event log. `impactin` handlers added by the run are removed afterwards."""
    from impactin_pipelines.definitions import build_defs

    for name, value in {**sandbox.env(), **env}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IMPACTIN_WAREHOUSE_URL", engine.url.render_as_string(hide_password=False))
    defs = build_defs()
    overrides = {"python_logs": python_logs} if python_logs else {}
    try:
        with dg.instance_for_test(overrides=overrides) as instance:
            instance.add_dynamic_partitions("company", ["acme"])
            span = covering_range(["acme"], ["acme"], "benevity")
            assert span is not None
            request = run_request(span, trigger="schedule")
            result = defs.resolve_job_def("impact_delivery_job").execute_in_process(
                instance=instance, tags=request.tags, run_config=request.run_config
            )
            assert result.success
            event_log = [entry.message or "" for entry in instance.all_logs(result.run_id)]
    finally:
        logging.getLogger("impactin").handlers.clear()
        logging.getLogger("impactin").setLevel(logging.NOTSET)
    return result, event_log


def test_dagster_run_writes_delivery_lines_as_json_and_problems_to_the_event_log(
    engine, sandbox, monkeypatch, capfd
) -> None:
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", 2))
    sandbox.providers["benevity"].configure({"fail_next": {"status": 503}})
    result, event_log = _run_delivery_job(
        engine, sandbox, monkeypatch, IMPACTIN_LOG_FORMAT="json", IMPACTIN_RETRY_INITIAL_DELAY_S="0.01"
    )
    [first, second] = rows(engine)
    assert {first["status"], second["status"]} == {"success"}
    stderr = capfd.readouterr().err
    docs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    attempts = [doc for doc in docs if doc.get("deliveryId")]
    # one JSON object per attempt, no line twice: a retry and two successes
    assert sorted(doc["message"] for doc in attempts) == ["attempt retry", "attempt succeed", "attempt succeed"]
    assert {doc["deliveryId"] for doc in attempts} == {first["delivery_id"], second["delivery_id"]}
    for doc in attempts:
        assert doc["runId"] == result.run_id and doc["stepKey"] == "impact_deliveries"
        assert doc["provider"] == "benevity" and doc["logger"] == "impactin.delivery"
        assert (doc["status"], doc["attemptCount"]) in {("success", 1), ("success", 2), ("retrying", 1)}
    # the event log: the retry (fields rendered in the message) and the summary, not the successes
    about_deliveries = [m for m in event_log if "deliveryId=" in m]
    assert len(about_deliveries) == 1 and "attempt retry" in about_deliveries[0]
    assert "attemptCount=1" in about_deliveries[0] and "status=retrying" in about_deliveries[0]
    assert any("benevity: 2 delivered, 0 retrying, 0 failed, 3 attempts" in m for m in event_log)


def test_dagster_run_text_lines_on_stderr(engine, sandbox, monkeypatch, capfd) -> None:
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", 1))
    _run_delivery_job(engine, sandbox, monkeypatch, IMPACTIN_LOG_FORMAT="text")
    [row] = rows(engine)
    stderr = capfd.readouterr().err.splitlines()
    assert f"INFO impactin.delivery: attempt succeed deliveryId={row['delivery_id']} provider=benevity " in "\n".join(
        stderr
    )
    assert not any(line.startswith("{") for line in stderr)


def test_a_successful_delivery_writes_no_event_log_record_of_its_own(engine, sandbox, monkeypatch) -> None:
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", 3))
    _, event_log = _run_delivery_job(engine, sandbox, monkeypatch)
    ids = [r["delivery_id"] for r in rows(engine)]
    assert statuses(engine) == {"success": 3}
    assert [m for m in event_log if any(i in m for i in ids)] == []
    assert any("benevity: 3 delivered" in m for m in event_log)  # the summary is there

    # IMPACTIN_RUN_LOG_LEVEL=INFO brings every delivery line into the run log
    add_events(engine, events("acme", 5)[3:])
    _, verbose_log = _run_delivery_job(engine, sandbox, monkeypatch, IMPACTIN_RUN_LOG_LEVEL="INFO")
    new_ids = {r["delivery_id"] for r in rows(engine)} - set(ids)
    assert len(new_ids) == 2
    assert sorted(i for m in verbose_log for i in new_ids if i in m and "attempt succeed" in m) == sorted(new_ids)


def test_without_managed_impactin_loggers_problems_still_reach_the_run_log(engine, sandbox, monkeypatch) -> None:
    add_integration(engine, "acme", "benevity")
    add_events(engine, events("acme", 1))
    sandbox.providers["benevity"].configure({"fail_next": {"status": 503}})
    _, event_log = _run_delivery_job(
        engine, sandbox, monkeypatch, python_logs=None, IMPACTIN_RETRY_INITIAL_DELAY_S="0.01"
    )
    assert any("does not manage the `impactin` loggers" in m for m in event_log)
    assert [m for m in event_log if "deliveryId=" in m and "attempt" in m] == [
        m for m in event_log if "attempt retry" in m
    ]
    assert any("attempt retry" in m for m in event_log)
