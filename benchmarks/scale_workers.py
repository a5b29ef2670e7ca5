"""Throughput of the Redis queue with one worker and with two, on a CPU-bound model.

Not a test: it prints faces per second for each and the ratio. On a shared machine other processes
take CPU from the workers, so runs alternate and the best of each counts, and every run also prints
the cores the workers actually got. Real processes: a private
``redis-server``, ``fsfm worker`` processes (one ONNX Runtime thread each, so each worker is one
core's worth of engine), and an API-node ``RedisInferenceClient`` in this process sending one-face
requests (the face detector is left out: it runs on API nodes, which scale on their own). The model
is a ViT-Tiny (depth 12, width 192) at 64x64 input: ~3.5 ms of engine time per face on one core.

Run from the repository root (needs the dev and train extras, and redis-server):
    .venv/bin/python -m benchmarks.scale_workers [--faces 3000] [--concurrency 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from fsfm.models.config import vit_preset
from fsfm.package import ModelPackage
from fsfm.package.manifest import PackageInfo
from service.metrics import Metrics
from service.redis_queue import RedisInferenceClient
from service.settings import Settings
from tests.packages import tiny_classifier
from tests.queue_processes import running_redis, running_worker
from training.export import write_package

CPU_BOUND_VIT = vit_preset("fsfm_vit_tiny_patch16", img_size=64)
WORKER_SETTINGS = {"engine_threads": 1, "max_batch_size": 8, "max_queue_delay_ms": 2}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by the processes (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


async def faces_per_second(
    package: ModelPackage, queue_url: str, faces: int, concurrency: int, worker_pids: list[int]
) -> tuple[float, float]:
    """Send ``faces`` one-face requests, ``concurrency`` at a time, after a warm-up. Returns faces/s
    and the cores the workers got meanwhile (on a shared machine, less than they could use)."""
    settings = Settings(queue=queue_url, max_queue_size=4 * concurrency)
    client = RedisInferenceClient(package.manifest, settings, Metrics())
    client.start()
    batch = np.random.default_rng(0).standard_normal((concurrency, 3, 64, 64)).astype(np.float32)
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with limit:
            await client.infer(batch[i % concurrency][None])

    try:
        await asyncio.gather(*(one(i) for i in range(2 * concurrency)))  # warm-up: connections, first batches
        started, cpu_before = time.perf_counter(), cpu_seconds(worker_pids)
        await asyncio.gather(*(one(i) for i in range(faces)))
        wall = time.perf_counter() - started
        return faces / wall, (cpu_seconds(worker_pids) - cpu_before) / wall
    finally:
        await client.stop()


def measure(models: Path, package: ModelPackage, queue_url: str, workers: int, args: argparse.Namespace) -> float:
    """One run with ``workers`` fresh worker processes; prints and returns faces/s."""
    with ExitStack() as stack:
        pids = [
            stack.enter_context(running_worker(models, queue_url, f"bench-{k}", WORKER_SETTINGS)).process.pid
            for k in range(workers)
        ]
        throughput, cores = asyncio.run(faces_per_second(package, queue_url, args.faces, args.concurrency, pids))
    print(
        f"{workers} worker(s): {throughput:7.1f} faces/s, workers busy on {cores:.2f} cores "
        f"({throughput / cores:.0f} faces per worker CPU second), load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores"
    )
    return throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each; the best of each counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        package = write_package(
            tiny_classifier(0, CPU_BOUND_VIT),
            PackageInfo(name="vit-tiny-64", version=1, task="deepfake"),
            root / "models",
            preset="fsfm_vit_tiny_patch16",
        )
        (root / "redis").mkdir()
        best = {1: 0.0, 2: 0.0}
        with running_redis(root / "redis") as redis_server:
            for _ in range(args.rounds):
                for workers in best:
                    run = measure(root / "models", package, redis_server.url, workers, args)
                    best[workers] = max(best[workers], run)
    print(
        f"best: 1 worker {best[1]:.1f} faces/s, 2 workers {best[2]:.1f} faces/s; "
        f"2 workers / 1 worker: {best[2] / best[1]:.2f}x"
    )


if __name__ == "__main__":
    main()
