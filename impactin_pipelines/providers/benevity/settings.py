"""Benevity's environment variables (BENEVITY_*)."""

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class BenevitySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BENEVITY_", env_ignore_empty=True, extra="ignore", frozen=True)

    api_url: str | None = None
    api_key: SecretStr | None = None
    signature_secret: SecretStr | None = None
    webhook_secret: SecretStr | None = None  # verifies the provider's delivery callbacks (api/routes/webhooks)
