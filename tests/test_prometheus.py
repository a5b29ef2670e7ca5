"""A real Prometheus (Debian's ``prometheus``) scrapes a real API node and a real worker under the
shipped job names and rules (deploy/prometheus/), and its query API answers with every documented
metric, the queue gauges from both jobs, the recording rules the autoscaler reads, and data for
every Grafana panel's query. A single ``fsfm serve`` without Redis gives data for every panel too,
and every live ``/metrics`` passes ``promtool check metrics``."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.deploy_files import DEPLOY, dashboard_expressions, exported_names, load_all, recording_rules
from tests.packages import make_tiny_package
from tests.queue_processes import RunningWorker, free_port, running_redis, running_worker
from tests.servers import RunningServer, running_server

PROMTOOL_MISSING = "promtool is missing: .ci/run installs Debian's prometheus package (apt-get install -y prometheus)"

PROMETHEUS_MISSING = (
    "the prometheus binary is missing: .ci/run installs Debian's prometheus package (apt-get install -y prometheus)"
)
RATE_WINDOW = "10s"  # stands in for Grafana's $__rate_interval: ten 1 s scrapes


def send_traffic(api: RunningServer, astronaut_rgb: np.ndarray) -> None:
    """Answered requests and one refused upload, so that the labelled series exist."""
    png = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(astronaut_rgb[0:256, 100:356])).save(png, format="PNG")
    with httpx.Client(base_url=api.rest_url, timeout=30) as client:
        for _ in range(3):
            assert client.post("/v1/deepfake", files={"file": ("f.png", png.getvalue())}).status_code == 200
        assert client.post("/v1/deepfake", files={"file": ("f.gif", b"GIF89a....")}).status_code == 415


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("models")
    make_tiny_package(models)
    return models


@pytest.fixture(scope="module")
def stack(models, tmp_path_factory, mtcnn_dir, astronaut_rgb) -> Iterator[tuple[RunningServer, RunningWorker]]:
    """Redis, one worker and one API node in redis mode, after some traffic."""
    with (
        running_redis(tmp_path_factory.mktemp("redis")) as redis_server,
        running_worker(models, redis_server.url, "worker-p") as worker,
        running_server(models, {"queue": redis_server.url, "min_face_size": 40}, grpc=False) as api,
    ):
        send_traffic(api, astronaut_rgb)
        yield api, worker


def scrape_config(targets: dict[str, str], rules: Path) -> dict:
    """deploy/prometheus/prometheus.yml with its jobs pointed at this test's processes (job name -> URL);
    jobs without a target are left out."""
    config = load_all(DEPLOY / "prometheus" / "prometheus.yml")[0]
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules)]
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] in targets]
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs")
        job["static_configs"] = [{"targets": [targets[job["job_name"]].removeprefix("http://")]}]
    return config


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory) -> Iterator[Callable[[str], list[dict]]]:
    """A running Prometheus scraping the stack; yields ``query(promql) -> result vector``."""
    api, worker = stack
    targets = {"fsfm-api": api.rest_url, "fsfm-worker": worker.http_url}
    with running_prometheus(targets, tmp_path_factory.mktemp("prometheus")) as query:
        yield query


@contextmanager
def running_prometheus(targets: dict[str, str], folder: Path) -> Iterator[Callable[[str], list[dict]]]:
    """Prometheus with the shipped config and rules, scraping ``targets`` (job name -> URL), once it has
    scraped every one of them."""
    binary = shutil.which("prometheus")
    assert binary, PROMETHEUS_MISSING
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(targets, DEPLOY / "prometheus" / "rules.yml")))
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address={address}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://{address}"

    def query(promql: str) -> list[dict]:
        body = httpx.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5).json()
        assert body["status"] == "success", (promql, body)
        return body["data"]["result"]

    try:
        until(lambda: _answers(f"{base}/-/ready"), "Prometheus did not start", process)
        until(
            lambda: len(query('up{job=~"fsfm-.*"} == 1')) == len(targets),
            "Prometheus did not scrape every job",
            process,
        )
        yield query
    finally:
        process.terminate()
        process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def until(condition: Callable[[], bool], message: str, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"Prometheus exited: {process.stderr.read()}"
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


def test_every_documented_metric_is_scraped(prometheus) -> None:
    for name in sorted(exported_names()):
        assert prometheus(f'count({{__name__="{name}", job=~"fsfm-.*"}})'), name
    for name in ("fsfm_queue_depth", "fsfm_queue_pending", "fsfm_queue_up", "fsfm_model_ready"):
        jobs = {series["metric"]["job"] for series in prometheus(name)}
        assert jobs == {"fsfm-api", "fsfm-worker"}, name  # an autoscaler may read either
    (success,) = prometheus('sum(fsfm_request_success_total{job="fsfm-api"})')
    assert float(success["value"][1]) == 3


def test_the_recording_rules_and_every_dashboard_query_return_data(prometheus) -> None:
    def answered() -> bool:  # rate() needs two scrapes of the window: wait for them
        return all(prometheus(expr.replace("$__rate_interval", RATE_WINDOW)) for expr in dashboard_expressions())

    deadline = time.monotonic() + 30
    while not answered():
        assert time.monotonic() < deadline, [
            expr for expr in dashboard_expressions() if not prometheus(expr.replace("$__rate_interval", RATE_WINDOW))
        ]
        time.sleep(0.5)
    for record in recording_rules():
        assert prometheus(record), record


def test_every_dashboard_panel_shows_data_in_single_process_mode(
    models, tmp_path_factory, mtcnn_dir, astronaut_rgb
) -> None:
    """One ``fsfm serve`` without Redis, scraped as the job fsfm-api: every panel has a query with data."""
    with running_server(models, {"min_face_size": 40}, grpc=False) as api:
        send_traffic(api, astronaut_rgb)
        with running_prometheus({"fsfm-api": api.rest_url}, tmp_path_factory.mktemp("prometheus-single")) as query:
            dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "fsfm.json").read_text())
            panels = {panel["title"]: [target["expr"] for target in panel["targets"]] for panel in dashboard["panels"]}
            deadline = time.monotonic() + 30
            while True:
                dark = [
                    title
                    for title, exprs in panels.items()
                    if all(not query(expr.replace("$__rate_interval", RATE_WINDOW)) for expr in exprs)
                ]
                if not dark or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert not dark, f"panels without data in single-process mode: {dark}"
        assert_promtool_accepts(httpx.get(api.rest_url + "/metrics", timeout=10).text, "fsfm_pending_requests")


def assert_promtool_accepts(exposition: str, expected_metric: str) -> None:
    """``promtool check metrics`` (names, types, suffixes, help) passes on a live exposition."""
    promtool = shutil.which("promtool")
    assert promtool, PROMTOOL_MISSING
    assert expected_metric in exposition
    result = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_live_metrics_of_the_api_and_the_worker_pass_promtool(stack) -> None:
    api, worker = stack
    assert_promtool_accepts(httpx.get(api.rest_url + "/metrics", timeout=10).text, "fsfm_request_success_total")
    assert_promtool_accepts(httpx.get(worker.http_url + "/metrics", timeout=10).text, "fsfm_queue_depth")
