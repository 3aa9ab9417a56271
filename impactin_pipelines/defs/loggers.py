"""The run logger of the code location: with IMPACTIN_LOG_FORMAT=json, Dagster's console logger is replaced by one
that writes one JSON object per line, with the delivery fields of each line at top level (Dagster passes a
record's `extra` on to run loggers). The event log the UI shows is unaffected: it keeps every line as text.

Dagster instantiates a job's loggers only when the run config names them (otherwise it falls back to its
colored console logger), so the runs we request carry `logging_run_config(...)`, given the log format of the logs
resource."""

import logging

import dagster as dg

from impactin_pipelines.observability import install_json_logging, json_handler, log_format


@dg.logger(
    config_schema={
        "log_level": dg.Field(str, is_required=False, default_value="INFO"),
        "name": dg.Field(str, is_required=False, default_value="dagster"),
    },
    description="Run logs as JSON lines on stderr (IMPACTIN_LOG_FORMAT=json).",
)
def json_lines_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger(init_context.logger_config["name"], level=init_context.logger_config["log_level"].upper())
    logger.addHandler(json_handler())
    return logger


def run_loggers() -> dict[str, dg.LoggerDefinition]:
    """Loggers for the Definitions; also installs JSON lines for the `impactin` loggers of this process."""
    if log_format() != "json":
        return {}
    install_json_logging("impactin")
    return {"console": json_lines_logger}


def logging_run_config(fmt: str, level: str = "INFO") -> dict[str, object]:
    """Run config that selects the code location's console logger (the JSON one when the format is json);
    empty otherwise, so Dagster's defaults stay untouched."""
    if fmt != "json":
        return {}
    return {"loggers": {"console": {"config": {"log_level": level}}}}
