"""Settings are declared once, in the pydantic-settings models: the Dagster resources, the `impactin api` options and
the environment variable names all derive from them, and sensors and checks read their values from the resources."""

from datetime import timedelta
from typing import Any

import dagster as dg
import pytest

from impactin_pipelines.cli.api import api
from impactin_pipelines.defs.checks import no_stuck_deliveries
from impactin_pipelines.defs.resources import (
    ChecksResource,
    DeliveryResource,
    RetryConfig,
    WarehouseResource,
)
from impactin_pipelines.defs.sensors import stats_after_delivery_sensor
from impactin_pipelines.settings import (
    ApiSettings,
    CheckSettings,
    DeliverySettings,
    ImpactinSettings,
    LogSettings,
    RetrySettings,
    ScheduleSettings,
    StateSettings,
    warehouse_url,
)
from tests.test_checks import add_row

# (resource, the model declaring its fields, the fields it takes from that model)
DECLARED: list[tuple[type[dg.Config], type[ImpactinSettings], list[str]]] = [
    # the circuit breaker's settings are not run config: its state is shared by every run, so are its thresholds
    (DeliveryResource, DeliverySettings, [n for n in DeliverySettings.model_fields if n not in ("retry", "circuit")]),
    (DeliveryResource, LogSettings, ["run_log_level"]),
    (RetryConfig, RetrySettings, list(RetrySettings.model_fields)),
    (ChecksResource, CheckSettings, list(CheckSettings.model_fields)),
]
NON_DEFAULT_TEXT = {"run_log_level": "INFO", "log_format": "json"}


def _other(model: type[ImpactinSettings], name: str) -> Any:
    """A valid value of the field that is not its default."""
    if name in NON_DEFAULT_TEXT:
        return NON_DEFAULT_TEXT[name]
    default = model.default(name)
    return default + 1 if isinstance(default, int) else round(default * 1.5, 4)


@pytest.mark.parametrize(("resource", "model", "names"), DECLARED, ids=lambda v: getattr(v, "__name__", ""))
def test_resource_defaults_are_the_models_defaults(resource, model, names) -> None:
    built = resource()
    for name in names:
        assert getattr(built, name) == model.default(name), name
        assert model.env_var(name) in (resource.model_fields[name].description or ""), name


@pytest.mark.parametrize(("resource", "model", "names"), DECLARED, ids=lambda v: getattr(v, "__name__", ""))
def test_each_variable_of_the_model_reaches_the_resource(resource, model, names, monkeypatch) -> None:
    for name in names:
        with monkeypatch.context() as env:
            env.setenv(model.env_var(name), str(_other(model, name)))
            built = DeliveryResource.from_env().retry if resource is RetryConfig else resource.from_env()
            assert getattr(built, name) == _other(model, name), model.env_var(name)


def test_documented_variable_names_and_defaults() -> None:
    names: dict[tuple[type[ImpactinSettings], str], tuple[str, object]] = {
        (DeliverySettings, "concurrency"): ("IMPACTIN_DELIVERY_CONCURRENCY", 8),
        (DeliverySettings, "claim_batch"): ("IMPACTIN_CLAIM_BATCH", 200),
        (DeliverySettings, "lease_s"): ("IMPACTIN_LEASE_S", 60.0),
        (DeliverySettings, "connect_timeout_s"): ("IMPACTIN_HTTP_CONNECT_TIMEOUT_S", 5.0),
        (DeliverySettings, "read_timeout_s"): ("IMPACTIN_HTTP_READ_TIMEOUT_S", 30.0),
        (DeliverySettings, "max_run_attempts"): ("IMPACTIN_MAX_RUN_ATTEMPTS", 5),
        (RetrySettings, "max_attempts"): ("IMPACTIN_RETRY_MAX_ATTEMPTS", 3),
        (RetrySettings, "initial_delay_s"): ("IMPACTIN_RETRY_INITIAL_DELAY_S", 1.0),
        (RetrySettings, "max_delay_s"): ("IMPACTIN_RETRY_MAX_DELAY_S", 30.0),
        (RetrySettings, "jitter"): ("IMPACTIN_RETRY_JITTER", 0.10),
        (RetrySettings, "max_retry_after_s"): ("IMPACTIN_RETRY_MAX_RETRY_AFTER_S", 120.0),
        (RetrySettings, "rerun_base_delay_s"): ("IMPACTIN_RERUN_BASE_DELAY_S", 300.0),
        (RetrySettings, "rerun_max_delay_s"): ("IMPACTIN_RERUN_MAX_DELAY_S", 21600.0),
        (CheckSettings, "stuck_pending_hours"): ("IMPACTIN_CHECK_STUCK_PENDING_HOURS", 26.0),
        (CheckSettings, "stuck_claim_minutes"): ("IMPACTIN_CHECK_STUCK_CLAIM_MINUTES", 60.0),
        (CheckSettings, "failure_rate_warn"): ("IMPACTIN_CHECK_FAILURE_RATE_WARN", 0.05),
        (CheckSettings, "failure_rate_error"): ("IMPACTIN_CHECK_FAILURE_RATE_ERROR", 0.20),
        (CheckSettings, "failure_window_hours"): ("IMPACTIN_CHECK_FAILURE_WINDOW_HOURS", 24.0),
        (CheckSettings, "ledger_grace_hours"): ("IMPACTIN_CHECK_LEDGER_GRACE_HOURS", 26.0),
        (ApiSettings, "host"): ("IMPACTIN_API_HOST", "127.0.0.1"),
        (ApiSettings, "port"): ("IMPACTIN_API_PORT", 3007),
        (ApiSettings, "rate_limit_per_minute"): ("IMPACTIN_API_RATE_LIMIT_PER_MINUTE", 600),
        (ApiSettings, "max_body_bytes"): ("IMPACTIN_API_MAX_BODY_BYTES", 262144),
        (ApiSettings, "trusted_proxies"): ("IMPACTIN_API_TRUSTED_PROXIES", ()),
        (ApiSettings, "inline_replay_max"): ("IMPACTIN_API_INLINE_REPLAY_MAX", 100),
        (ApiSettings, "job_workers"): ("IMPACTIN_API_JOB_WORKERS", 1),
        (ScheduleSettings, "cron"): ("IMPACTIN_SCHEDULE_CRON", "0 2 * * *"),
        (ScheduleSettings, "timezone"): ("IMPACTIN_SCHEDULE_TIMEZONE", "UTC"),
        (LogSettings, "log_format"): ("IMPACTIN_LOG_FORMAT", "text"),
        (LogSettings, "run_log_level"): ("IMPACTIN_RUN_LOG_LEVEL", "WARNING"),
        (ScheduleSettings, "runs_per_provider"): ("IMPACTIN_RUNS_PER_PROVIDER", 1),
        (StateSettings, "warehouse_url"): ("IMPACTIN_WAREHOUSE_URL", None),
    }
    assert {key: (key[0].env_var(key[1]), key[0].default(key[1])) for key in names} == names
    assert StateSettings.env_var("state_dir") == "IMPACTIN_STATE_DIR"
    assert str(StateSettings.default("state_dir")) == ".impactin"


def test_api_command_options_come_from_the_model() -> None:
    options = {p.name: p for p in api.params}
    assert (options["host"].default, options["host"].envvar) == ("127.0.0.1", "IMPACTIN_API_HOST")
    assert (options["port"].default, options["port"].envvar) == (3007, "IMPACTIN_API_PORT")


@pytest.mark.parametrize(
    ("model", "name", "value", "reason"),
    [
        (DeliverySettings, "IMPACTIN_DELIVERY_CONCURRENCY", "0", "must be at least 1"),
        (DeliverySettings, "IMPACTIN_CLAIM_BATCH", "lots", "is not an integer"),
        (DeliverySettings, "IMPACTIN_LEASE_S", "0.5", "must be at least 1"),
        (DeliverySettings, "IMPACTIN_HTTP_READ_TIMEOUT_S", "nan", "is not a finite number"),
        (DeliverySettings, "IMPACTIN_RETRY_JITTER", "-1", "must be at least 0"),
        (RetrySettings, "IMPACTIN_RERUN_MAX_DELAY_S", "6h", "is not a number"),
        (ApiSettings, "IMPACTIN_API_PORT", "70000", "must be at most 65535"),
        (ApiSettings, "IMPACTIN_API_MAX_BODY_BYTES", "10", "must be at least 1024"),
        (LogSettings, "IMPACTIN_RUN_LOG_LEVEL", "loud", "must be one of DEBUG, INFO"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_value(model, name: str, value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}='{value}' {reason}"):
        model.from_env({name: value})


def test_blank_variables_mean_the_default_and_case_is_forgiven() -> None:
    env = {"IMPACTIN_DELIVERY_CONCURRENCY": " ", "IMPACTIN_LOG_FORMAT": " JSON ", "IMPACTIN_RUN_LOG_LEVEL": "warning"}
    assert DeliverySettings.from_env(env).concurrency == 8
    assert (LogSettings.from_env(env).log_format, LogSettings.from_env(env).run_log_level) == ("json", "WARNING")


def test_from_env_reads_only_the_mapping_it_is_given(monkeypatch) -> None:
    monkeypatch.setenv("IMPACTIN_CLAIM_BATCH", "7")
    assert DeliverySettings().claim_batch == 7  # the process environment, as pydantic-settings reads it
    assert DeliverySettings.from_env({}).claim_batch == 200


def test_the_warehouse_url_is_not_shown_by_the_settings() -> None:
    url = "postgresql+psycopg://app:hunter2-secret@db/impactin"
    state = StateSettings.from_env({"IMPACTIN_WAREHOUSE_URL": url})
    assert "hunter2" not in repr(state) and "hunter2" not in str(state)
    assert warehouse_url({"IMPACTIN_WAREHOUSE_URL": url}) == url


def test_a_check_takes_its_threshold_from_the_checks_resource(engine) -> None:
    add_row(engine, "old", age=timedelta(hours=40))  # pending 40 h: stuck at the default 26 h, not at 48 h
    warehouse = WarehouseResource(url=engine.url.render_as_string(hide_password=False))
    strict = no_stuck_deliveries(warehouse=warehouse, checks=ChecksResource())
    lenient = no_stuck_deliveries(warehouse=warehouse, checks=ChecksResource(stuck_pending_hours=48))
    assert isinstance(strict, dg.AssetCheckResult) and isinstance(lenient, dg.AssetCheckResult)
    assert not strict.passed and strict.metadata["stuck_pending_hours"].value == 26.0
    assert lenient.passed and lenient.metadata["stuck_pending_hours"].value == 48.0


def test_the_stats_sensor_requests_statistics_once_per_delivery_without_run_config() -> None:
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization("impact_deliveries"))
        [delivered] = instance.fetch_materializations(dg.AssetKey("impact_deliveries"), limit=1).records
        with dg.build_sensor_context(instance=instance) as context:
            request = stats_after_delivery_sensor(context)
    assert isinstance(request, dg.RunRequest)
    assert request.run_config == {} and request.run_key == f"stats-after-{delivered.storage_id}"
