"""Goodera's environment variables (GOODERA_*)."""

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class GooderaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GOODERA_", env_ignore_empty=True, extra="ignore", frozen=True)

    api_url: str | None = None
    token_url: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    rate_limit: str | None = None
    token_auth_method: str | None = None
    webhook_secret: SecretStr | None = None  # verifies the provider's delivery callbacks (api/routes/webhooks)
