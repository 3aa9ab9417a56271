"""The /v1/impact-in HTTP API (Starlette): thin doors onto the services, authenticated and scoped per company."""

from impactin_pipelines.api.app import build_app

__all__ = ["build_app"]
