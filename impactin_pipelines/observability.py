"""The logging contract: every line about a delivery carries deliveryId, provider, eventId, status and
attemptCount, as structured fields (`extra`) and in the message, so they survive any handler.

Every line goes to the process's stderr in IMPACTIN_LOG_FORMAT (`text`, or `json`: one JSON object per line, the
fields at top level, for log shippers): the CLI's handler is on the root logger, a Dagster run's on the `impactin`
logger. Inside a run, `run_delivery_logger` keeps routine delivery lines on stderr (the run's compute log) and
passes only those at or above the run log level on to Dagster's run log, where each line is an event-log write.
"""

import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from impactin_pipelines.settings import LogSettings

DELIVERY_FIELDS = ("deliveryId", "provider", "eventId", "status", "attemptCount")
LOG_FORMAT_ENV = LogSettings.env_var("log_format")
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
_FIELDS_ATTR = "impactin"  # the structured fields, as one dict on the record
_MESSAGE_ATTR = "impactin_message"  # the message without the rendered fields
_TAGS_ATTR = "impactin_tags"  # run id and step key, for the JSON line of a record Dagster never saw
_STREAM_HANDLER_MARK = "_impactin_stream"  # our stderr handlers, text or JSON


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
        tags = getattr(record, _TAGS_ATTR, None)
        if isinstance(tags, Mapping):
            doc.update({k: v for k, v in tags.items() if v and k not in doc})
        if isinstance(fields, Mapping):
            doc.update({k: _jsonable(v) for k, v in fields.items()})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def json_handler(stream: TextIO | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    setattr(handler, _STREAM_HANDLER_MARK, True)
    return handler


def console_handler(env: Mapping[str, str] = os.environ, stream: TextIO | None = None) -> logging.Handler:
    """A stderr handler in the configured format (IMPACTIN_LOG_FORMAT)."""
    if log_format(env) == "json":
        return json_handler(stream)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    setattr(handler, _STREAM_HANDLER_MARK, True)
    return handler


def _handlers(logger: logging.Logger) -> Iterator[logging.Handler]:
    """The handlers a record logged on `logger` reaches, in the order `logging` calls them."""
    current: logging.Logger | None = logger
    while current is not None:
        yield from current.handlers
        current = current.parent if current.propagate else None


def _is_stream(handler: logging.Handler) -> bool:
    return bool(getattr(handler, _STREAM_HANDLER_MARK, False))


def install_stream_logging(
    logger_name: str = "impactin", env: Mapping[str, str] = os.environ, stream: TextIO | None = None
) -> logging.Handler:
    """Give `logger_name` a stderr handler in the configured format, once, unless a logger it propagates to
    already has one (the CLI's, on the root logger), so no line is written twice. Returns that handler."""
    target = logging.getLogger(logger_name)
    existing = next((h for h in _handlers(target) if _is_stream(h)), None)
    if existing is not None:
        return existing
    handler = console_handler(env, stream)
    target.addHandler(handler)
    return handler


class _RunLogGate(logging.Handler):
    """Every record to the stderr handlers `stream_logger` reaches; records at or above `run_log_level` also to
    the other handlers `run_log` reaches (Dagster's, while a step runs). Stderr goes first: Dagster's handler
    rewrites the record's message in place."""

    def __init__(self, stream_logger: logging.Logger, run_log: logging.Logger, run_log_level: int) -> None:
        super().__init__()
        self.stream_logger = stream_logger
        self.run_log = run_log
        self.run_log_level = run_log_level

    def handle(self, record: logging.LogRecord) -> bool:  # no lock of our own: the handlers called have theirs
        for handler in _handlers(self.stream_logger):
            if _is_stream(handler) and record.levelno >= handler.level:
                handler.handle(record)
        if record.levelno >= self.run_log_level:
            for handler in _handlers(self.run_log):
                if not _is_stream(handler) and record.levelno >= handler.level:
                    handler.handle(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() does the work
        self.handle(record)


def run_delivery_logger(
    run_log: logging.Logger,
    run_log_level: str,
    *,
    name: str = "impactin.delivery",
    stream_logger_name: str = "impactin",
    tags: Mapping[str, str] | None = None,
) -> logging.Logger:
    """The logger of one run's delivery lines. Every line is written to stderr by the `impactin` logger's stream
    handler (cheap: it lands in the run's compute log); only lines at or above `run_log_level` reach `run_log`'s
    other handlers, i.e. Dagster's run log, where each line costs an event-log write. `tags` (run id, step key)
    go into the JSON lines. The logger is not registered with `logging`, so it is dropped with the run."""
    threshold = logging.getLevelNamesMapping()[run_log_level.upper()]
    stream_logger = logging.getLogger(stream_logger_name)
    install_stream_logging(stream_logger_name)
    logger = logging.Logger(name, min(logging.INFO, threshold))
    logger.propagate = False
    logger.addHandler(_RunLogGate(stream_logger, run_log, threshold))
    if tags:
        fixed = dict(tags)

        def add_tags(record: logging.LogRecord) -> bool:
            setattr(record, _TAGS_ATTR, fixed)
            return True

        logger.addFilter(add_tags)
    return logger
