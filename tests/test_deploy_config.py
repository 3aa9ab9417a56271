"""The shipped instance configs load, the production one really stores runs in PostgreSQL, and the Docker and
Kubernetes deployments in deploy/ hold together as far as can be checked without Docker or Kubernetes."""

import ast
import importlib.metadata
import importlib.util
import itertools
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa
import yaml
from dockerfile_parse import DockerfileParser

from impactin_pipelines.defs.assets.delivery import impact_deliveries, impact_outbox
from impactin_pipelines.defs.orchestration.partitions import partition_key
from impactin_pipelines.defs.orchestration.planning import PROVIDER_TAG
from impactin_pipelines.defs.resources import DeliveryResource, ProvidersResource, WarehouseResource
from tests.conftest import fresh_postgres_url
from tests.support import add_events, add_integration, events, statuses

ROOT = Path(__file__).resolve().parents[1]


def _home_with(config: Path, tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(config, home / "dagster.yaml")
    return home


def test_embedded_instance_config_loads_with_provider_limits(tmp_path) -> None:
    home = _home_with(ROOT / "dagster.yaml", tmp_path)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None
        limits = queue.tag_concurrency_limits
        assert {"key": PROVIDER_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits


def test_production_config_runs_the_job_on_postgres_storage(
    tmp_path, postgres_database, sqlite_engine, sandbox, monkeypatch
) -> None:
    storage_url = fresh_postgres_url(postgres_database)
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", storage_url.replace("postgresql+psycopg://", "postgresql+psycopg2://"))
    home = _home_with(ROOT / "deploy" / "dagster.yaml", tmp_path)
    add_integration(sqlite_engine, "acme", "benevity")
    add_events(sqlite_engine, events("acme", 2))
    job = dg.Definitions(
        assets=[impact_outbox, impact_deliveries],
        jobs=[dg.define_asset_job("j", selection=[impact_outbox, impact_deliveries])],
        resources={
            "warehouse": WarehouseResource(url=str(sqlite_engine.url)),
            "providers": ProvidersResource(**sandbox.env()),
            "delivery": DeliveryResource(),
        },
    ).resolve_job_def("j")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        instance.add_dynamic_partitions("company", ["acme"])
        result = job.execute_in_process(instance=instance, partition_key=partition_key("acme", "benevity"))
        assert result.success
    assert statuses(sqlite_engine) == {"success": 2}
    with sa.create_engine(storage_url).connect() as conn:
        assert conn.execute(sa.text("select count(*) from runs")).scalar_one() == 1


# -- deploy/: Docker Compose, the Helm chart's values, the image -------------------------------------------------
# What CI can check without Docker or Kubernetes: each file parses (the compose file against the Compose
# specification's schema), the instance of each run launcher loads with its package installed (the `deploy` extra),
# every variable the code reads reaches the code server, the daemon and the runs, and the image's commands exist.
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yaml"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
DOCKER_INSTANCE = DEPLOY / "docker" / "dagster.yaml"
IMAGE = "impactin-pipelines:local"
BIN = Path(sys.executable).parent
# Read by `impactin api` (not one of these deployments' processes) or by the embedded default only.
NOT_DEPLOYED = {
    "IMPACTIN_API_HOST",
    "IMPACTIN_API_PORT",
    "IMPACTIN_API_RATE_LIMIT_PER_MINUTE",
    "IMPACTIN_API_MAX_BODY_BYTES",
    "IMPACTIN_API_TRUSTED_PROXIES",
    "IMPACTIN_API_MAX_QUERY_BYTES",
    "IMPACTIN_API_MAX_AUTH_HEADER_CHARS",
    "IMPACTIN_API_WEBHOOK_TOLERANCE_S",
    "IMPACTIN_API_INLINE_REPLAY_MAX",
    "IMPACTIN_API_JOB_WORKERS",
    "IMPACTIN_STATE_DIR",
}
SECRET_SUFFIXES = ("_KEY", "_SECRET", "_PASSWORD", "_USERNAME", "_CLIENT_ID", "_WAREHOUSE_URL")
# Top-level keys of the official chart's values and the fields of one user code deployment (chart 1.13).
HELM_TOP_LEVEL = {
    "global", "dagsterWebserver", "dagster-user-deployments", "postgresql", "generatePostgresqlPasswordSecret",
    "generateCeleryConfigSecret", "rabbitmq", "redis", "flower", "ingress", "imagePullSecrets", "computeLogManager",
    "scheduler", "runLauncher", "pythonLogs", "dagsterDaemon", "busybox", "migrate", "telemetry", "serviceAccount",
    "retention", "concurrency", "additionalInstanceConfig",
}  # fmt: skip
HELM_USER_DEPLOYMENT = {
    "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns", "port", "env",
    "envConfigMaps", "envSecrets", "annotations", "nodeSelector", "affinity", "tolerations", "podSecurityContext",
    "securityContext", "resources", "livenessProbe", "readinessProbe", "startupProbe", "labels", "volumeMounts",
    "volumes", "schedulerName",
}  # fmt: skip


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _variables_the_code_reads() -> set[str]:
    """Every IMPACTIN_/provider variable the package reads: those its settings models declare (names derived from
    their prefixes), every provider's, and any other named in its source (the sandbox aside)."""
    from impactin_pipelines.providers import all_variables
    from impactin_pipelines.settings import ImpactinSettings

    pattern = re.compile(r"^(IMPACTIN|BENEVITY|GOODERA|WORKDAY)_[A-Z0-9_]*[A-Z0-9]$")  # a prefix ends in "_"
    found: set[str] = set(all_variables())
    models: list[type[ImpactinSettings]] = list(ImpactinSettings.__subclasses__())
    while models:
        model = models.pop()
        models.extend(model.__subclasses__())
        for name, field in model.model_fields.items():
            if not (isinstance(field.annotation, type) and issubclass(field.annotation, ImpactinSettings)):
                found.add(model.env_var(name))
    for path in (ROOT / "impactin_pipelines").rglob("*.py"):
        if "sandbox" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and pattern.match(node.value):
                found.add(node.value)
    return found


def _is_secret(name: str) -> bool:
    return name.endswith(SECRET_SUFFIXES)


def _interpolated(variable: str, value: str) -> bool:
    """A compose value that takes the secret from the environment (or deploy/.env), never written in the file."""
    if re.fullmatch(rf"\$\{{{variable}:(-|\?[^}}]*)\}}", value):
        return True
    # The warehouse URL of the compose file's own PostgreSQL: only its password is a secret.
    own_database = re.fullmatch(r"[^$:]+://\w+:\$\{POSTGRES_PASSWORD:\?[^}]*\}@[^$]+", value)
    return variable == "IMPACTIN_WAREHOUSE_URL" and own_database is not None


def _compose_services() -> dict[str, dict[str, Any]]:
    return _yaml(COMPOSE)["services"]


def _ours(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s.get("image") == IMAGE}


def _user_deployment() -> dict[str, Any]:
    [deployment] = _yaml(HELM_VALUES)["dagster-user-deployments"]["deployments"]
    return deployment


def test_deploy_files_parse_and_follow_their_formats() -> None:
    checked = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for path in (DEPLOY / "dagster.yaml", DOCKER_INSTANCE, DEPLOY / "docker" / "workspace.yaml", HELM_VALUES):
        assert isinstance(_yaml(path), dict), path
    values = _yaml(HELM_VALUES)
    assert set(values) <= HELM_TOP_LEVEL, set(values) - HELM_TOP_LEVEL
    assert set(_user_deployment()) <= HELM_USER_DEPLOYMENT, set(_user_deployment()) - HELM_USER_DEPLOYMENT
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    dockerfile = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    instructions = [i["instruction"] for i in dockerfile.structure if i["instruction"] != "COMMENT"]
    assert instructions[0] == "FROM" and dockerfile.baseimage.startswith("python:3.")
    assert set(instructions) <= {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "CMD"}
    assert isinstance(json.loads(dockerfile.cmd), list), "CMD in exec form"
    extras = re.findall(r"\.\[([a-z,]+)\]", dockerfile.content)
    assert extras and set(extras) <= set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )


def test_the_docker_instance_is_the_production_one_with_docker_runs() -> None:
    base, docker = _yaml(DEPLOY / "dagster.yaml"), _yaml(DOCKER_INSTANCE)
    assert {k: v for k, v in docker.items() if k != "run_launcher"} == {
        k: v for k, v in base.items() if k != "run_launcher"
    }
    assert (docker["run_launcher"]["module"], docker["run_launcher"]["class"]) == (
        "dagster_docker",
        "DockerRunLauncher",
    )
    assert docker["run_launcher"]["config"]["network"] == _yaml(COMPOSE)["networks"]["impactin"]["name"]


def test_every_instance_sends_the_impactin_loggers_to_the_run_log(tmp_path) -> None:
    expected = {"managed_python_loggers": ["impactin"], "python_log_level": "INFO"}
    for config in (ROOT / "dagster.yaml", DEPLOY / "dagster.yaml", DOCKER_INSTANCE):
        assert _yaml(config)["python_logs"] == expected, config
    helm = _yaml(HELM_VALUES)["pythonLogs"]
    assert {"managed_python_loggers": helm["managedPythonLoggers"], "python_log_level": helm["pythonLogLevel"]} == (
        expected
    )
    with dg.DagsterInstance.from_config(str(_home_with(ROOT / "dagster.yaml", tmp_path))) as instance:
        assert (instance.managed_python_loggers, instance.python_log_level) == (["impactin"], "INFO")


def _kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig naming a cluster nobody listens on: K8sRunLauncher reads it when built, never connects."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "not-a-token"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def _helm_instance(values: dict[str, Any], storage_url: str, kubeconfig: Path) -> dict[str, Any]:
    """The instance config the chart renders from these values (its run launcher, run queue and run monitoring
    templates), pointed at a test database and a kubeconfig file instead of the cluster's own."""
    daemon = values["dagsterDaemon"]
    queue = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    monitoring = daemon["runMonitoring"]
    return {
        "storage": {"postgres": {"postgres_url": storage_url}},
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {
                "max_concurrent_runs": queue["maxConcurrentRuns"],
                "tag_concurrency_limits": queue["tagConcurrencyLimits"],
            },
        },
        "run_launcher": {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": {
                "load_incluster_config": False,  # the chart: loadInclusterConfig (true in the cluster)
                "kubeconfig_file": str(kubeconfig),
                "job_namespace": k8s["jobNamespace"] or "impactin",
                "image_pull_policy": k8s["imagePullPolicy"],
                "service_account_name": "impactin-dagster",
                "dagster_home": {"env": "DAGSTER_HOME"},
                "instance_config_map": {"env": "DAGSTER_K8S_INSTANCE_CONFIG_MAP"},
                "postgres_password_secret": {"env": "DAGSTER_K8S_PG_PASSWORD_SECRET"},
                "env_config_maps": [{"env": "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP"}],
                "env_secrets": [s["name"] for s in k8s["envSecrets"]],
            },
        },
        "run_monitoring": {
            "enabled": monitoring["enabled"],
            "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            "max_resume_run_attempts": monitoring["maxResumeRunAttempts"],
        },
        "python_logs": {
            "managed_python_loggers": values["pythonLogs"]["managedPythonLoggers"],
            "python_log_level": values["pythonLogs"]["pythonLogLevel"],
        },
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
    }


def test_each_launchers_instance_loads_with_its_package(tmp_path, postgres_database, monkeypatch) -> None:
    storage_url = fresh_postgres_url(postgres_database).replace("postgresql+psycopg://", "postgresql+psycopg2://")
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", storage_url)
    docker_home = _home_with(DOCKER_INSTANCE, tmp_path / "docker")
    with dg.DagsterInstance.from_config(str(docker_home)) as instance:
        from dagster_docker import DockerRunLauncher

        launcher = instance.run_launcher
        assert type(launcher).__name__ == "DockerRunLauncher" and isinstance(launcher, DockerRunLauncher)
        assert launcher.networks == ["impactin"]
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.get_runs() == []  # the storage is really there

    for name, value in {
        "DAGSTER_HOME": "/opt/dagster/dagster_home",
        "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "impactin-dagster-instance",
        "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
        "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP": "impactin-dagster-pipeline-env",
    }.items():
        monkeypatch.setenv(name, value)
    values = _yaml(HELM_VALUES)
    k8s_home = tmp_path / "k8s" / "dagster_home"
    k8s_home.mkdir(parents=True)
    instance_yaml = _helm_instance(values, storage_url, _kubeconfig(tmp_path))
    (k8s_home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    with dg.DagsterInstance.from_config(str(k8s_home)) as instance:
        from dagster_k8s import K8sRunLauncher

        launcher = instance.run_launcher
        assert type(launcher).__name__ == "K8sRunLauncher" and isinstance(launcher, K8sRunLauncher)
        assert list(launcher.env_secrets) == ["impactin-secrets"]
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None
        limits = queue.tag_concurrency_limits
        assert {"key": PROVIDER_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 3} in limits


def test_every_variable_the_code_reads_reaches_the_code_server_the_daemon_and_the_runs() -> None:
    names = _variables_the_code_reads() - NOT_DEPLOYED
    assert {"IMPACTIN_WAREHOUSE_URL", "IMPACTIN_RUNS_PER_PROVIDER", "WORKDAY_PASSWORD"} <= names  # the scan works

    services = _compose_services()
    assert set(_ours(services)) == {"migrate", "code-server", "webserver", "daemon"}
    for name, service in _ours(services).items():
        missing = (names | {"DAGSTER_POSTGRES_URL", "DAGSTER_HOME"}) - set(service["environment"])
        assert not missing, f"compose service {name} lacks {sorted(missing)}"
        for variable in filter(_is_secret, names):
            assert _interpolated(variable, service["environment"][variable]), f"{name}: {variable} is written out"
    run_vars = set(_yaml(DOCKER_INSTANCE)["run_launcher"]["config"]["env_vars"])
    assert not (names | {"DAGSTER_POSTGRES_URL"}) - run_vars, "DockerRunLauncher does not pass them to the runs"

    env = {e["name"]: e for e in _user_deployment()["env"]}
    assert not names - set(env), f"Helm values lack {sorted(names - set(env))}"
    for variable in names:
        if _is_secret(variable):
            assert "value" not in env[variable], f"{variable} must come from a Kubernetes secret"
            assert env[variable]["valueFrom"]["secretKeyRef"] == {
                "name": "impactin-secrets",
                "key": variable,
                **({} if variable in ("IMPACTIN_WAREHOUSE_URL", "IMPACTIN_ENCRYPTION_KEY") else {"optional": True}),
            }
        else:
            assert isinstance(env[variable]["value"], str)
    assert _user_deployment()["includeConfigInLaunchedRuns"] == {"enabled": True}  # the runs' pods get them too


def test_runs_per_provider_fits_each_deployments_run_queue() -> None:
    """The nightly schedule's runs of one provider all start at once only if the tag limit allows as many."""
    compose_default = re.fullmatch(
        r"\$\{IMPACTIN_RUNS_PER_PROVIDER:-(\d+)\}",
        _compose_services()["code-server"]["environment"]["IMPACTIN_RUNS_PER_PROVIDER"],
    )
    assert compose_default
    helm = int({e["name"]: e for e in _user_deployment()["env"]}["IMPACTIN_RUNS_PER_PROVIDER"]["value"])
    loopback = re.search(r'setdefault\("IMPACTIN_RUNS_PER_PROVIDER", "(\d+)"\)', (DEPLOY / "loopback.py").read_text())
    assert loopback
    queue = _yaml(HELM_VALUES)["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    for runs, limits in (
        (int(compose_default.group(1)), _yaml(DOCKER_INSTANCE)["concurrency"]["runs"]["tag_concurrency_limits"]),
        (int(loopback.group(1)), _yaml(DEPLOY / "dagster.yaml")["concurrency"]["runs"]["tag_concurrency_limits"]),
        (helm, queue["tagConcurrencyLimits"]),
    ):
        [limit] = [entry["limit"] for entry in limits if entry["key"] == PROVIDER_TAG]
        assert runs > 1 and limit >= runs


def _image_commands() -> dict[str, list[str]]:
    """Every command the image is started with: its CMD, the compose services', the Helm user deployment's."""
    commands = {"Dockerfile CMD": json.loads(DockerfileParser(path=str(DEPLOY / "Dockerfile")).cmd)}
    for name, service in _ours(_compose_services()).items():
        commands[f"compose {name}"] = service["command"]
        if "healthcheck" in service:
            commands[f"compose {name} healthcheck"] = service["healthcheck"]["test"][1:]
    commands["helm user deployment"] = ["dagster", "api", "grpc", *_user_deployment()["dagsterApiGrpcArgs"]]
    return commands


def test_the_images_entry_points_name_commands_and_modules_that_exist() -> None:
    scripts = {ep.name for ep in importlib.metadata.entry_points(group="console_scripts")}
    for where, command in _image_commands().items():
        assert command[0] in scripts, f"{where}: no command {command[0]!r} in the image's packages"
        for flag, value in itertools.pairwise(command):
            if flag == "-m":
                assert importlib.util.find_spec(value) is not None, f"{where}: no module {value}"
        # Click parses every option before --help answers: an unknown flag fails here.
        checked = subprocess.run(
            [str(BIN / command[0]), *command[1:], "--help"], capture_output=True, text=True, timeout=120, check=False
        )
        assert checked.returncode == 0, f"{where}: {' '.join(command)}\n{checked.stderr[-2000:]}"
    dockerfile = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    for line in (i["value"] for i in dockerfile.structure if i["instruction"] == "COPY"):
        *sources, _target = line.split()
        assert all((ROOT / source).exists() for source in sources), line
    assert dockerfile.envs["DAGSTER_HOME"] == "/opt/dagster/dagster_home"  # where the chart mounts its instance
    [server] = [entry["grpc_server"] for entry in _yaml(DEPLOY / "docker" / "workspace.yaml")["load_from"]]
    code_server = _compose_services()["code-server"]["command"]
    assert server == {
        "host": "code-server",
        "port": int(code_server[code_server.index("-p") + 1]),
        "location_name": code_server[code_server.index("--location-name") + 1],
    }


def test_every_instance_limits_backfill_runs_per_provider_as_it_limits_ours() -> None:
    """Runs we launch carry impactin/provider; runs Dagster builds for an asset-page backfill (one partition each)
    carry dagster/partition/provider: each instance limits both alike, and every workspace names the location."""
    queue = _yaml(HELM_VALUES)["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    instances = {
        "embedded": _yaml(ROOT / "dagster.yaml")["concurrency"]["runs"]["tag_concurrency_limits"],
        "deploy": _yaml(DEPLOY / "dagster.yaml")["concurrency"]["runs"]["tag_concurrency_limits"],
        "docker": _yaml(DOCKER_INSTANCE)["concurrency"]["runs"]["tag_concurrency_limits"],
        "helm": queue["tagConcurrencyLimits"],
    }
    for name, limits in instances.items():
        per_value = {e["key"]: e["limit"] for e in limits if e.get("value") == {"applyLimitPerUniqueValue": True}}
        assert set(per_value) >= {PROVIDER_TAG, "dagster/partition/provider"}, name
        assert per_value[PROVIDER_TAG] == per_value["dagster/partition/provider"], name
    for workspace in (ROOT / "workspace.yaml", DEPLOY / "docker" / "workspace.yaml"):
        [entry] = _yaml(workspace)["load_from"]
        assert next(iter(entry.values()))["location_name"] == "impactin", workspace


def test_every_dagster_process_writes_range_runs_events_in_batches() -> None:
    """The webserver and the daemon create runs (planned events), the code location's image runs them: each gets
    Dagster's batching switches, with the values the code location sets for itself."""
    from impactin_pipelines.defs.event_log import DAGSTER_EVENT_ENV

    for name, service in _ours(_compose_services()).items():
        assert {k: service["environment"].get(k) for k in DAGSTER_EVENT_ENV} == DAGSTER_EVENT_ENV, name
    values = _yaml(HELM_VALUES)
    for component in ("dagsterWebserver", "dagsterDaemon"):
        env = {e["name"]: e["value"] for e in values[component]["env"]}
        assert {k: env.get(k) for k in DAGSTER_EVENT_ENV} == DAGSTER_EVENT_ENV, component
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for name, value in DAGSTER_EVENT_ENV.items():
        assert f"{name}={value}" in dockerfile
