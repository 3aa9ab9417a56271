"""Workday's environment variables (WORKDAY_*), for both protocols."""

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkdaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WORKDAY_", env_ignore_empty=True, extra="ignore", frozen=True)

    api_url: str | None = None
    tenant_id: str | None = None
    protocol: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_type: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    token_url: str | None = None
    token_auth_method: str | None = None
    webhook_secret: SecretStr | None = None  # verifies the provider's delivery callbacks (api/routes/webhooks)
