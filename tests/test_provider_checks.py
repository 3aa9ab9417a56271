"""Provider connectivity checks ("provider health checks"): the service, `impactin providers check` and the Dagster
asset check, against the sandbox over loopback. Each says which configurations authenticate and sends no impact data."""

import json

import dagster as dg
import pytest

from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.providers.goodera.fake import CLIENT_SECRET
from impactin_pipelines.security.crypto import generate_key, load_keyring
from impactin_pipelines.services.provider_checks import check_providers
from tests.cli_support import cli_env, run_cli
from tests.support import add_integration

KEY = generate_key()
WRONG = "globex-has-a-stale-goodera-secret"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPACTIN_ENCRYPTION_KEY", KEY)


def seed(engine) -> None:
    add_integration(engine, "acme", "goodera")
    add_integration(engine, "acme", "benevity")
    add_integration(
        engine, "globex", "goodera", settings={"client_secret": {"encrypted": load_keyring().encrypt(WRONG)}}
    )
    add_integration(engine, "initech", "goodera", settings={"client_secret": "plain-text-secret"})
    add_integration(engine, "umbrella", "goodera", enabled=False)


def no_impact_data_sent(sandbox) -> bool:
    return all(p.snapshot()["accepted"] == [] for p in sandbox.providers.values())


def test_check_reports_each_enabled_integration(engine, sandbox) -> None:
    seed(engine)
    results = check_providers(engine, env=ProviderEnv.from_env(sandbox.env()))
    by_key = {(r.company_id, r.provider): r for r in results}
    assert list(by_key) == [("acme", "benevity"), ("acme", "goodera"), ("globex", "goodera"), ("initech", "goodera")]
    assert by_key["acme", "goodera"].ok and "token issued" in by_key["acme", "goodera"].detail
    assert by_key["acme", "benevity"].ok
    globex = by_key["globex", "goodera"]
    assert not globex.ok and "refused the client credentials" in globex.detail and WRONG not in globex.detail
    initech = by_key["initech", "goodera"]
    assert not initech.ok and "must be stored encrypted" in initech.detail and "plain-text-secret" not in initech.detail
    assert no_impact_data_sent(sandbox)


def test_filters_and_missing_configuration(engine, sandbox) -> None:
    seed(engine)
    [only] = check_providers(engine, company_ids=["acme"], providers=["goodera"], env=ProviderEnv())
    assert not only.ok and "GOODERA_API_URL" in only.detail and "GOODERA_CLIENT_SECRET" in only.detail
    assert check_providers(engine, company_ids=["nobody"], env=ProviderEnv()) == []


def test_cli_exits_1_when_a_configuration_fails_and_prints_no_secret(engine, sandbox, tmp_path) -> None:
    seed(engine)
    env = cli_env(tmp_path, engine.url.render_as_string(hide_password=False), sandbox, IMPACTIN_ENCRYPTION_KEY=KEY)
    everything = run_cli(["providers", "check", "--json"], env)
    assert everything.returncode == 1, everything.stderr
    doc = json.loads(everything.stdout)
    assert doc["ok"] is False
    assert [(d["company"], d["provider"], d["ok"]) for d in doc["data"]] == [
        ("acme", "benevity", True),
        ("acme", "goodera", True),
        ("globex", "goodera", False),
        ("initech", "goodera", False),
    ]
    one = run_cli(["providers", "check", "--company", "acme", "--provider", "goodera"], env)
    assert one.returncode == 0, one.stderr
    assert "acme" in one.stdout and "ok" in one.stdout and "globex" not in one.stdout
    for output in (everything.stdout + everything.stderr, one.stdout + one.stderr):
        assert CLIENT_SECRET not in output and WRONG not in output
    assert no_impact_data_sent(sandbox)


def test_cli_says_only_what_it_proved_and_prints_each_reason_whole(engine, sandbox, tmp_path) -> None:
    """A Workday SOAP server that validates the body before the credentials answers the empty probe the same way for
    any password: such an integration is "not proven", never "ok" (a wrong password included). Every reason is
    printed whole in the text output, however long."""
    seed(engine)
    add_integration(engine, "acme", "workday")
    add_integration(engine, "globex", "workday", settings={"password": {"encrypted": load_keyring().encrypt(WRONG)}})
    sandbox.providers["workday"].configure({"validate_before_auth": True})
    env = cli_env(tmp_path, engine.url.render_as_string(hide_password=False), sandbox, IMPACTIN_ENCRYPTION_KEY=KEY)
    as_json, as_text = run_cli(["providers", "check", "--json"], env), run_cli(["providers", "check"], env)
    assert as_json.returncode == as_text.returncode == 1, as_text.stderr
    data = json.loads(as_json.stdout)["data"]
    assert {(d["company"], d["provider"]): (d["ok"], d["auth"]) for d in data} == {
        ("acme", "benevity"): (True, "ok"),
        ("acme", "goodera"): (True, "ok"),
        ("acme", "workday"): (False, "not proven"),
        ("globex", "goodera"): (False, "failed"),
        ("globex", "workday"): (False, "not proven"),
        ("initech", "goodera"): (False, "failed"),
    }
    workday = [d for d in data if d["provider"] == "workday"]
    assert all(d["detail"].startswith("reachable; credentials not proven: ") for d in workday)
    assert max(len(d["detail"]) for d in data) > 150
    lines = as_text.stdout.splitlines()
    assert lines[0].split() == ["company", "provider", "auth", "detail"]
    for d in data:
        [line] = [ln for ln in lines if ln.split()[:2] == [d["company"], d["provider"]]]
        assert f" {'ok' if d['ok'] else d['auth'].upper()} " in line
        if not d["ok"]:  # the reasons (an ok detail names a fresh token's expiry, which differs between the runs)
            assert line.rstrip().endswith(" ".join(d["detail"].split()))
    for output in (as_json.stdout, as_text.stdout, as_json.stderr, as_text.stderr):
        assert WRONG not in output and CLIENT_SECRET not in output
    assert no_impact_data_sent(sandbox)


def test_dagster_asset_check_reports_which_integrations_authenticate(engine, sandbox, monkeypatch) -> None:
    seed(engine)
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IMPACTIN_WAREHOUSE_URL", engine.url.render_as_string(hide_password=False))
    from impactin_pipelines.definitions import build_defs

    job = build_defs().resolve_job_def("provider_health_job")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance)
    assert result.success
    [evaluation] = [
        e.asset_check_evaluation_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert evaluation.check_name == "providers_can_authenticate" and evaluation.passed is False
    metadata = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
    assert metadata["checked"] == 4 and metadata["failed"] == 2
    assert metadata["failing"] == "globex/goodera, initech/goodera"
    assert isinstance(metadata["results"], str) and "| acme | goodera | ok |" in metadata["results"]
    assert CLIENT_SECRET not in json.dumps(metadata, default=str) and WRONG not in json.dumps(metadata, default=str)
    assert no_impact_data_sent(sandbox)


def test_dagster_asset_check_counts_unproven_credentials_apart(engine, sandbox, monkeypatch) -> None:
    add_integration(engine, "acme", "workday")
    sandbox.providers["workday"].configure({"validate_before_auth": True})
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IMPACTIN_WAREHOUSE_URL", engine.url.render_as_string(hide_password=False))
    from impactin_pipelines.definitions import build_defs

    job = build_defs().resolve_job_def("provider_health_job")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance)
    [evaluation] = [
        e.asset_check_evaluation_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert evaluation.passed is False
    assert evaluation.description == "1 reachable with credentials not proven"
    metadata = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
    assert (metadata["checked"], metadata["failed"], metadata["not_proven"]) == (1, 0, 1)
    assert isinstance(metadata["results"], str) and metadata["failing"] == "acme/workday"
    assert "| acme | workday | NOT PROVEN | reachable;" in metadata["results"]
