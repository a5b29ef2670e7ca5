"""``fsfm bench``: the engine sweep, the per-stage pipeline, the load generator against a real
service on loopback (REST, gRPC, gRPC streams), the report, and the target arithmetic. Speed is
never asserted; what is checked is that the numbers are measured, consistent and complete."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.engine import EngineRun, batch_sizes, run_engines
from benchmarks.pipeline import STAGES, PipelineResult, StageCost, bench_pipeline
from benchmarks.serve import LevelResult, Target, completion_rate, plan, served, sweep
from benchmarks.stats import Latency, latency, table
from benchmarks.targets import engine_checks, service_checks, stage_checks
from fsfm.engines.select import Host
from fsfm.face.detector import create_detector
from fsfm.package import ModelPackage
from fsfm.package.manifest import INT8_FILE, Variant
from fsfm.package.repository import load_package
from tests.packages import make_tiny_package
from tests.references import encode
from tests.servers import REPO_ROOT
from training.quantize import quantize_int8


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> ModelPackage:
    repository = tmp_path_factory.mktemp("models")
    package = make_tiny_package(repository, name="tiny-deepfake")
    from tests.packages import tiny_classifier
    from training.package_torch import save_torch_weights

    save_torch_weights(tiny_classifier(0), package)
    quantize_int8(package.onnx_path, package.path / INT8_FILE)  # unjudged: runs when asked for, never by auto
    package.manifest.with_variant(Variant(precision="int8", file=INT8_FILE, method="test")).replace_in(package.path)
    return load_package(package.path)


def fsfm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fsfm_cli", "bench", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---- arithmetic ---------------------------------------------------------------------------------


def test_batch_sizes_double_up_to_the_maximum() -> None:
    assert batch_sizes(1) == [1]
    assert batch_sizes(8) == [1, 2, 4, 8]
    assert batch_sizes(6) == [1, 2, 4, 6]


def test_latency_percentiles() -> None:
    summary = latency([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert summary.count == 100
    assert summary.p50_ms == pytest.approx(50.5)
    assert summary.p99_ms == pytest.approx(99.01)
    assert summary.max_ms == pytest.approx(100)
    assert latency([]).count == 0


def test_completion_rate_is_the_slope_of_a_staircase_wherever_the_window_cuts_it() -> None:
    for offset in (0.05, 1.0, 2.25):  # 8 answers every 2.3 s, the window starting anywhere in a period
        ends = [offset + step * 2.3 + i * 0.002 for step in range(13) for i in range(8)]
        assert completion_rate(ends, [1] * len(ends), 30.0) == pytest.approx(8 / 2.3, rel=1e-3)
        assert completion_rate(ends, [2] * len(ends), 30.0) == pytest.approx(16 / 2.3, rel=1e-3)
    assert completion_rate([0.5, 1.5], [1, 3], 2.0) == 2.0  # too few answers for a slope: amount / window


def test_table_is_markdown() -> None:
    text = table(["a", "bb"], [[1, 2.5], ["x", 12345.0]])
    lines = text.splitlines()
    assert lines[0] == "| a | bb     |"
    assert set(lines[1]) <= {"|", "-"}
    assert lines[3] == "| x | 12,345 |"


def run(engine: str, batch: int, faces_per_s: float) -> EngineRun:
    ms = 1000 * batch / faces_per_s
    return EngineRun(engine, batch, faces_per_s, Latency(3, ms, ms, ms, ms, ms), 1.0, None)


def level(protocol: str, concurrency: int, faces_per_s: float, p99_ms: float, batch: float) -> LevelResult:
    return LevelResult(
        protocol,
        concurrency,
        10.0,
        100,
        faces_per_s,
        faces_per_s,
        Latency(100, p99_ms, p99_ms, p99_ms, p99_ms, p99_ms),
        {},
        batch,
    )


def test_service_targets_compare_with_the_engine_at_the_same_batch_size() -> None:
    engine = [run("onnxruntime", 1, 4.0), run("onnxruntime", 8, 3.5)]
    levels = [level("rest", 8, 3.2, 2000, 7.6), level("rest", 32, 3.3, 9000, 8.0)]
    saturation, batching, p99 = service_checks(engine, levels, "onnxruntime", max_queue_delay_ms=5)
    assert saturation.met and "batch 8" in saturation.measured  # 3.3 / 3.5 = 94%, against batch 8 (mean 8.0)
    assert not batching.met  # 3.3 < 4.0, the best fixed batch
    assert not p99.met  # 9000 ms > 5 + 2 x 2286 ms


def test_engine_targets() -> None:
    ort, torch = run("onnxruntime", 1, 3.0), run("torch", 1, 5.0)
    (factor,) = engine_checks([ort, torch])  # no ceiling measured: no share to report
    assert factor.met is False  # torch / ORT = 1.67 > 1.5
    ort.faces_per_s, ort.gflops, ort.peak_share = 4.0, 100.0, 0.8
    factor, share = engine_checks([ort, torch])
    assert factor.met is True  # 1.25
    assert share.met is None and "80%" in share.measured and "fp32 ceiling" in share.target


def test_auto_is_held_to_three_and_a_half_times_onnxruntime_on_amx_and_never_slower_elsewhere() -> None:
    ort, auto = run("onnxruntime", 8, 8.0), run("auto", 8, 30.0)
    auto.selected = "openvino bf16"
    amx, avx2 = Host(frozenset({"avx2", "amx_bf16"})), Host(frozenset({"avx2"}))
    (on_amx,) = engine_checks([ort, auto], amx)
    assert on_amx.met is True and "3.75x" in on_amx.measured and "openvino bf16" in on_amx.measured
    auto.faces_per_s = 20.0
    assert engine_checks([ort, auto], amx)[0].met is False  # 2.5x
    assert engine_checks([ort, auto], avx2)[0].met is True
    auto.faces_per_s = 7.0
    (on_avx2,) = engine_checks([ort, auto], avx2)
    assert on_avx2.met is False and "auto >= 1x" in on_avx2.target  # slower than ONNX Runtime fp32


def test_stage_check_compares_the_service_with_one_request_at_a_time() -> None:
    stages = PipelineResult(
        1000, 64, 64, 1, [StageCost(stage, ms, 0.0) for stage, ms in zip(STAGES, (2, 10, 1, 6, 0.5, 0.5), strict=True)]
    )
    fast, slow = level("rest", 8, 1.0, 100, 1.0), level("grpc", 8, 1.0, 100, 1.0)
    fast.requests_per_s, slow.requests_per_s = 50.0, 40.0  # one REST request: 19.5 ms -> 51.3/s allowed
    rest, grpc = stage_checks(stages, [fast, slow])
    assert rest.met is True and "vs 1 / 20 ms = 51.28: 98%" in rest.measured
    assert grpc.met is False and "78%" in grpc.measured  # 40 < 0.85 x 51.3


# ---- measurements -----------------------------------------------------------------------------


def test_engine_sweep_measures_every_engine_and_batch_size(package: ModelPackage, mtcnn_dir, astronaut_rgb) -> None:
    from fsfm.analysis import prepare_faces

    detector = create_detector()
    faces = np.stack([p.tensor for p in prepare_faces(astronaut_rgb, detector.detect(astronaut_rgb), package.manifest)])
    report = run_engines(
        package,
        ["onnxruntime", "onnxruntime:int8", "torch"],
        [1, 2, 4],
        {"fp32": 100.0},
        min_seconds=0.05,
        faces=faces,
    )
    assert [(r.engine, r.batch_size) for r in report.runs] == [
        (e, b) for e in ("onnxruntime", "onnxruntime:int8", "torch") for b in (1, 2, 4)
    ]
    flops = package.manifest.architecture.vit.flops_per_image()
    for r in report.runs:
        assert r.faces_per_s > 0 and r.batch.count >= 2
        assert r.faces_per_s == pytest.approx(r.batch_size / (r.batch.p50_ms / 1000))
        assert r.gflops == pytest.approx(flops * r.faces_per_s / 1e9)
        assert (r.peak_share is None) == (r.engine == "onnxruntime:int8")  # no int8 ceiling given
        assert r.precision == ("int8" if r.engine == "onnxruntime:int8" else "fp32")
    assert report.drift["torch"] < 1e-4  # the same fp32 model
    assert 0 < report.drift["onnxruntime:int8"] < 1.0  # quantised: close, not equal


def test_unavailable_engines_are_reported_not_fatal(package: ModelPackage) -> None:
    report = run_engines(package, ["onnxruntime", "tensorrt"], [1], min_seconds=0.01, skip_unavailable=True)
    assert "tensorrt" in report.unavailable and "plan" in report.unavailable["tensorrt"]
    assert {r.engine for r in report.runs} == {"onnxruntime"}


def test_pipeline_times_every_stage(package: ModelPackage, mtcnn_dir, astronaut_jpeg) -> None:
    from benchmarks.engine import create_bench_engine

    result = bench_pipeline(astronaut_jpeg, package, create_detector(), create_bench_engine("onnxruntime", package), 3)
    assert [s.stage for s in result.stages] == list(STAGES)
    assert all(s.median_ms > 0 for s in result.stages)
    assert sum(s.share for s in result.stages) == pytest.approx(1.0)
    assert (result.width, result.height, result.faces) == (512, 512, 1)


def test_pipeline_measures_each_evidence_kind_per_face(package: ModelPackage, mtcnn_dir, astronaut_jpeg) -> None:
    from benchmarks.engine import create_bench_engine
    from benchmarks.pipeline import pipeline_table

    engine = create_bench_engine("onnxruntime", package)
    result = bench_pipeline(astronaut_jpeg, package, create_detector(), engine, 1, {"audit", "heatmap", "robustness"})
    assert [(c.kind, c.inferences, c.per) for c in result.evidence] == [
        ("heatmap", 49, "face"),
        ("robustness", 2, "face"),
        ("audit", 0, "request"),
    ]
    assert all(c.median_ms > 0 for c in result.evidence)
    assert "| heatmap " in pipeline_table(result) and [s.stage for s in result.stages] == list(STAGES)
    assert bench_pipeline(astronaut_jpeg, package, create_detector(), engine, 1).evidence == []


def test_pipeline_refuses_an_image_without_faces(package: ModelPackage, mtcnn_dir) -> None:
    from benchmarks.engine import create_bench_engine

    blank = encode(np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(ValueError, match="no judged face"):
        bench_pipeline(blank, package, create_detector(), create_bench_engine("onnxruntime", package), 1)


def test_load_sweep_over_rest_grpc_and_streams(package: ModelPackage, mtcnn_dir, astronaut_jpeg) -> None:
    runs = [("rest", 1), ("rest", 4), ("grpc", 3), ("stream", 2)]
    with served(package, {"max_batch_size": 4, "max_queue_delay_ms": 20}) as target:
        assert target.model == "tiny-deepfake:1"
        results = asyncio.run(sweep(target, astronaut_jpeg, runs, duration_s=1.5))
    assert [(r.protocol, r.concurrency) for r in results] == runs
    for r in results:
        assert r.errors == {} and r.requests > 0
        assert r.faces_per_s == pytest.approx(r.requests_per_s)  # one face per request
        assert r.latency.count == r.requests
        assert r.latency.p50_ms <= r.latency.p95_ms <= r.latency.p99_ms <= r.latency.max_ms
        assert r.mean_batch_size is not None and 1 <= r.mean_batch_size <= 4
        assert {"detect", "queue", "infer", "total"} <= set(r.stage_ms)
    assert results[0].mean_batch_size == pytest.approx(1.0)  # one client: never two faces at once


def test_load_sweep_counts_errors_by_reason(package: ModelPackage, mtcnn_dir, astronaut_jpeg) -> None:
    with served(package, {}) as target:
        liveness = Target(target.rest_url, target.grpc_target, task="liveness")  # no liveness model is served
        (rest, grpc) = asyncio.run(sweep(liveness, astronaut_jpeg, [("rest", 2), ("grpc", 2)], duration_s=0.5))
    assert rest.requests == 0 and set(rest.errors) == {"404 task_not_served"} and rest.errors["404 task_not_served"] > 0
    assert grpc.requests == 0 and set(grpc.errors) == {"NOT_FOUND"}


def test_plan_is_every_protocol_at_every_level() -> None:
    assert plan(["rest", "grpc"], [1, 8]) == [("rest", 1), ("rest", 8), ("grpc", 1), ("grpc", 8)]


# ---- the command line ---------------------------------------------------------------------------


def test_bench_commands_refuse_bad_arguments() -> None:
    for args, message in [
        (["serve", "--protocols", "rest,smtp", "--url", "http://127.0.0.1:1"], "unknown protocols ['smtp']"),
        (["serve", "--concurrency", "4,0", "--url", "http://127.0.0.1:1"], "--concurrency must be positive"),
        (["engine", "--engines", "cuda-magic"], "unknown engines ['cuda-magic']"),
        (["engine", "--model", "vit-z99"], "unknown benchmark model 'vit-z99'"),
        (["report", "--models", "vit-z99"], "unknown benchmark models ['vit-z99']"),
    ]:
        result = fsfm(*args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr


def test_bench_serve_against_a_running_service_writes_json(
    package: ModelPackage, mtcnn_dir, tmp_path, astronaut_path
) -> None:
    out = tmp_path / "serve.json"
    with served(package, {}) as target:
        result = fsfm(
            "serve",
            "--url",
            target.rest_url,
            "--grpc-target",
            target.grpc_target,
            "--protocols",
            "rest,stream",
            "--concurrency",
            "2",
            "--duration",
            "1",
            "--image",
            str(astronaut_path),
            "--json",
            str(out),
        )
    assert result.returncode == 0, result.stderr
    levels = json.loads(out.read_text())["levels"]
    assert [(level["protocol"], level["concurrency"]) for level in levels] == [("rest", 2), ("stream", 2)]
    assert all(level["requests"] > 0 and level["errors"] == {} for level in levels)
    assert "| rest     | 2" in result.stdout


def test_bench_report_writes_markdown_and_json(mtcnn_dir, tmp_path) -> None:
    md, js = tmp_path / "performance.md", tmp_path / "performance.json"
    result = fsfm(
        "report",
        "--models",
        "test-tiny",
        "--output",
        str(md),
        "--json",
        str(js),
        "--duration",
        "1",
        "--min-seconds",
        "0.05",
        "--max-batch",
        "2",
        "--repository",
        str(tmp_path / "bench-models"),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    text = md.read_text()
    for heading in (
        "## Machine",
        "## Targets",
        "## test-tiny",
        "### Engine alone",
        "### One request, stage by stage",
        "### Service under load",
    ):
        assert heading in text
    numbers = json.loads(js.read_text())
    (model,) = numbers["models"]
    engines = {r["engine"] for r in model["engine"]["runs"]}
    assert engines >= {"auto", "onnxruntime", "onnxruntime:int8", "openvino", "openvino:int8", "torch"}
    assert all(r["selected"] for r in model["engine"]["runs"])
    assert [(level["protocol"], level["concurrency"]) for level in model["load"]] == [
        ("rest", 1),
        ("rest", 8),
        ("rest", 32),
        ("grpc", 32),
        ("stream", 8),
    ]
    assert all(level["requests"] > 0 and level["errors"] == {} for level in model["load"])
    assert {c["target"].split(" ")[0] for c in model["checks"]} >= {"service", "dynamic", "p99", "ONNX", "auto", "rest"}
    assert numbers["machine"]["cores"] >= 1 and numbers["machine"]["ceilings_gflops"]["fp32"] > 0
    assert "ceilings" in text and numbers["machine"]["cpu"] in text


def test_bench_hostile_quick_prints_every_section_and_writes_json(mtcnn_dir, tmp_path) -> None:
    out = tmp_path / "hostile.json"
    result = fsfm("hostile", "--model", "test-tiny", "--quick", "--json", str(out), timeout=600)
    assert result.returncode == 0, result.stderr
    for heading in ("Hostile inputs", "Flood", "Abandoned requests", "Random model names", "Frozen Redis"):
        assert heading in result.stdout
    report = json.loads(out.read_text())
    assert report["quick"] is True
    assert [i["expected_status"] for i in report["inputs"]] == [200, 200, 200, 400, 400]
    for item in report["inputs"]:
        assert item["bytes"] > 0 and item["status"] in (200, 400, 413, 429, 504)
        assert item["seconds"] > 0 and item["rss_growth_mib"] >= 0
    flood = report["flood"]
    assert flood["skipped"] or sum(flood["statuses"].values()) == flood["requests"] > 0
    abandoned = report["abandoned"]
    assert abandoned["clients"] == 12 and 0 <= abandoned["gave_up"] <= 12 and abandoned["next_status"] == 200
    assert abandoned["ratio"] == pytest.approx(abandoned["next_ms"] / abandoned["idle_ms"])
    names = report["model_names"]
    assert names["statuses"] == {"404": names["requests"]} and names["growth"] < 0.1
    redis = report["frozen_redis"]
    assert redis["skipped"] or (redis["status_before"] == 200 and redis["refused_status"] == 503)
    assert redis["skipped"] or (redis["status_after"] == 200 and redis["not_ready_s"] is not None)
