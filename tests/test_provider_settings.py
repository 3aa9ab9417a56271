"""Each provider declares its variables once (a pydantic-settings model in its folder); the environment view and
the Dagster provider resource are derived from those models, with the variable names unchanged."""

import pytest

from impactin_pipelines.defs.resources import ProvidersResource
from impactin_pipelines.providers import all_variables, spec_for
from impactin_pipelines.providers.env import ProviderEnv

CONTRACT = {
    "BENEVITY_API_URL", "BENEVITY_API_KEY", "BENEVITY_SIGNATURE_SECRET",
    "GOODERA_API_URL", "GOODERA_TOKEN_URL", "GOODERA_CLIENT_ID", "GOODERA_CLIENT_SECRET", "GOODERA_RATE_LIMIT",
    "GOODERA_TOKEN_AUTH_METHOD",
    "WORKDAY_API_URL", "WORKDAY_TENANT_ID", "WORKDAY_PROTOCOL", "WORKDAY_USERNAME", "WORKDAY_PASSWORD",
    "WORKDAY_PASSWORD_TYPE", "WORKDAY_CLIENT_ID", "WORKDAY_CLIENT_SECRET", "WORKDAY_TOKEN_URL",
    "WORKDAY_TOKEN_AUTH_METHOD",
    "BENEVITY_WEBHOOK_SECRET", "GOODERA_WEBHOOK_SECRET", "WORKDAY_WEBHOOK_SECRET",
}  # fmt: skip


def test_the_variable_names_are_the_contract() -> None:
    assert set(all_variables()) == CONTRACT
    assert set(ProvidersResource.model_fields) == CONTRACT


def test_the_process_environment_is_read_through_each_providers_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKDAY_PROTOCOL", "rest")
    monkeypatch.setenv("BENEVITY_API_KEY", "k-123")
    monkeypatch.setenv("GOODERA_CLIENT_ID", "")  # empty is unset
    env = ProviderEnv.from_env()
    assert (env.WORKDAY_PROTOCOL, env.get("BENEVITY_API_KEY"), env.get("GOODERA_CLIENT_ID")) == ("rest", "k-123", None)
    assert env.settings("workday") == spec_for("workday").settings(protocol="rest")
    assert "k-123" not in repr(env) and "k-123" not in repr(env.settings("benevity"))  # secrets are SecretStr
    assert ProviderEnv.from_env({"WORKDAY_PROTOCOL": "soap"}).WORKDAY_PROTOCOL == "soap"  # a mapping, not os.environ


def test_an_unknown_variable_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match=r"unknown provider variable.*BENEVITY_API_UR"):
        ProviderEnv(BENEVITY_API_UR="https://x")
