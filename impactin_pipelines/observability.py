"""The spec's logging contract: every line about a delivery carries deliveryId, provider, eventId, status and
attemptCount, as structured fields (`extra`) and in the message, so they survive any handler.

With IMPACTIN_LOG_FORMAT=json every line is one JSON object (the fields at top level, for log shippers); the
CLI installs it on the root logger, the code location on its Dagster console logger and the `impactin` loggers.
"""

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from impactin_pipelines.settings import LogSettings

DELIVERY_FIELDS = ("deliveryId", "provider", "eventId", "status", "attemptCount")
LOG_FORMAT_ENV = LogSettings.env_var("log_format")
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
_FIELDS_ATTR = "impactin"  # the structured fields, as one dict on the record
_MESSAGE_ATTR = "impactin_message"  # the message without the rendered fields
_JSON_HANDLER_MARK = "_impactin_json"


def log_delivery(
    logger: logging.Logger,
    level: int,
    message: str,
    *,
    delivery_id: str,
    provider: str,
    event_id: str,
    status: str,
    attempt_count: int,
    **more: Any,
) -> None:
    fields: dict[str, Any] = {
        "deliveryId": delivery_id,
        "provider": provider,
        "eventId": event_id,
        "status": status,
        "attemptCount": attempt_count,
        **more,
    }
    rendered = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    logger.log(level, f"{message} {rendered}", extra={_FIELDS_ATTR: fields, _MESSAGE_ATTR: message, **fields})


def log_format(env: Mapping[str, str] = os.environ) -> str:
    return LogSettings.from_env(env).log_format


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the delivery fields, and (inside a Dagster
    run) the run id and step key."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, _FIELDS_ATTR, None)
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": getattr(record, _MESSAGE_ATTR, None) if fields else None,
        }
        if doc["message"] is None:
            doc["message"] = record.getMessage()
        dagster_meta = getattr(record, "dagster_meta", None)
        if isinstance(dagster_meta, Mapping):
            for key, name in (("run_id", "runId"), ("step_key", "stepKey"), ("job_name", "job")):
                if dagster_meta.get(key):
                    doc[name] = dagster_meta[key]
            if dagster_meta.get("orig_message") and not fields:
                doc["message"] = dagster_meta["orig_message"]
        if isinstance(fields, Mapping):
            doc.update({k: _jsonable(v) for k, v in fields.items()})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def json_handler(stream: TextIO | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    setattr(handler, _JSON_HANDLER_MARK, True)
    return handler


def install_json_logging(
    logger_name: str = "impactin", env: Mapping[str, str] = os.environ, stream: TextIO | None = None
) -> bool:
    """When IMPACTIN_LOG_FORMAT=json: give `logger_name` a JSON stderr handler, once, unless the root logger
    already writes JSON (the CLI), so no line is written twice. Returns whether JSON logging is on."""
    if log_format(env) != "json":
        return False
    for name in ("", logger_name):
        if any(getattr(h, _JSON_HANDLER_MARK, False) for h in logging.getLogger(name).handlers):
            return True
    target = logging.getLogger(logger_name)
    target.addHandler(json_handler(stream))
    if target.level == logging.NOTSET or target.level > logging.INFO:
        target.setLevel(logging.INFO)
    return True


def console_handler(env: Mapping[str, str] = os.environ, stream: TextIO | None = None) -> logging.Handler:
    """The CLI's one stderr handler, in the configured format."""
    if log_format(env) == "json":
        return json_handler(stream)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler
