"""What routes share: the warehouse, the connector factory and the settings, kept on `app.state`."""

from dataclasses import dataclass

from sqlalchemy.engine import Engine
from starlette.requests import Request

from impactin_pipelines.api.jobs import JobRunner
from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.settings import ApiSettings


@dataclass(frozen=True)
class ApiContext:
    engine: Engine
    factory: ConnectorFactory
    settings: ApiSettings
    jobs: JobRunner | None = None  # bulk work outside the request (api/jobs.py); build_app always sets it


def context(request: Request) -> ApiContext:
    return request.app.state.ctx
