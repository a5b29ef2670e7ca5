"""The served models: the repository loaded, one inference backend per package, model choice.

Each package gets a backend: with ``queue=local`` an engine, created and warmed up by
``load_engine``, behind a ``DynamicBatcher``; with a Redis queue a ``RedisInferenceClient`` (the
workers hold the engines, docs/scaling.md). Every version in the repository is served; a request
names ``name`` (its latest version) or ``name:version``, or only a task (the task's default model).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fsfm.evidence import package_sha256
from fsfm.package import ModelPackage, ModelRepository, PackageError
from fsfm.package.manifest import TASKS, Manifest
from service.batcher import DynamicBatcher, InferenceResult
from service.core.request import AnalysisOptions
from service.engines import load_engine
from service.errors import BadInput, ModelNotFound
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("fsfm.service")

DEFAULT_MODEL_LABEL = "default"  # the metrics' model label of a request that names no model
UNKNOWN_MODEL_LABEL = "unknown"  # ... of a request naming a model that is not served (one series for all)


class InferenceBackend(Protocol):
    """Where a model's faces go to be inferred: the in-process ``DynamicBatcher`` (``queue=local``)
    or the Redis Streams queue to remote workers (``queue=redis://...``)."""

    async def infer(self, tensors: np.ndarray, deadline: float | None = None) -> InferenceResult: ...

    @property
    def pending(self) -> int: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health_error(self) -> str | None:
        """Why the backend cannot take work right now (e.g. the queue is unreachable), or None."""
        ...


@dataclass
class ServedModel:
    package: ModelPackage
    backend: InferenceBackend
    package_sha256: str  # ``fsfm.evidence.package_sha256``, read once at load for audit records

    @property
    def manifest(self) -> Manifest:
        return self.package.manifest

    @property
    def label(self) -> str:
        return self.manifest.ref


@dataclass(frozen=True)
class ModelListing:
    """One served model, as both doors list it."""

    manifest: Manifest
    default_for_task: bool
    engine: dict[str, str] | None = None  # the engine, precision and file it runs on here (none: on workers)


def load_backend(package: ModelPackage, settings: Settings, metrics: Metrics) -> InferenceBackend:
    """Local queue: an engine, warmed up, behind a dynamic batcher. Redis queue: a client of the
    model's stream; this node needs only the manifest."""
    if settings.queue != "local":
        from service.redis_queue import RedisInferenceClient

        return RedisInferenceClient(package.manifest, settings, metrics)
    return DynamicBatcher(
        load_engine(package, settings),
        package.manifest.ref,
        metrics,
        max_batch_size=settings.max_batch_size,
        max_queue_delay_ms=settings.max_queue_delay_ms,
        max_queue_size=settings.max_queue_size,
    )


class ServedModels:
    """Every package of the repository with its backend (filled by ``load``; empty until then)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.repository: ModelRepository | None = None
        self.models: dict[str, ServedModel] = {}

    def load(self, repository: ModelRepository | None = None) -> None:
        """Load every version of every package, each with its backend (slow: run it off the loop);
        ``repository``: the settings' repository already read, else it is read here."""
        self.repository = repository or ModelRepository(self.settings.models)
        for folder, error in self.repository.errors.items():
            log.error("skipping model package %s: %s", folder, error)
        for package in self.repository.packages:
            backend = load_backend(package, self.settings, self.metrics)
            self.models[package.manifest.ref] = ServedModel(package, backend, package_sha256(package.path))

    def start(self) -> None:
        engines = self.engines()
        for model in self.models.values():
            model.backend.start()
            self.metrics.model_loaded(model.label, engines.get(model.label))

    async def stop(self) -> None:
        for model in self.models.values():
            await model.backend.stop()
            self.metrics.model_ready.labels(model.label).set(0)

    def backend_errors(self) -> dict[str, str]:
        return {label: error for label, model in self.models.items() if (error := model.backend.health_error())}

    def engines(self) -> dict[str, dict[str, str]]:
        """The engine, precision and graph file each model runs on in this process (none with a Redis
        queue: the workers hold the engines and report their own)."""
        chosen = {}
        for label, model in self.models.items():
            selection = getattr(getattr(model.backend, "engine", None), "selection", None)
            if selection is not None:
                chosen[label] = selection.describe()
        return chosen

    def tasks(self) -> list[str]:
        """The tasks some loaded model judges."""
        return sorted({m.manifest.task for m in self.models.values()})

    def listing(self) -> list[ModelListing]:
        """Every served model, sorted by ``name:version``."""
        repository = self.repository
        defaults = {repository.default_for_task(t).manifest.ref for t in self.tasks()} if repository else set()
        engines = self.engines()
        return [
            ModelListing(served.manifest, ref in defaults, engines.get(ref))
            for ref, served in sorted(self.models.items())
        ]

    def metric_label(self, name: str | None) -> str:
        """The ``model`` label of a request naming ``name``: the name itself when it is a served model's
        ``name`` or ``name:version``, ``default`` when it names none, else ``unknown``, so that names a
        client makes up never add Prometheus series."""
        if name is None:
            return DEFAULT_MODEL_LABEL
        served = {ref for model in self.models.values() for ref in (model.manifest.name, model.label)}
        return name if name in served else UNKNOWN_MODEL_LABEL

    def resolve(self, options: AnalysisOptions) -> ServedModel:
        """The model a request gets: the one it names, else its task's default."""
        if options.task not in TASKS:
            raise BadInput("unknown_task", f"unknown task {options.task!r}; tasks: {list(TASKS)}")
        if self.repository is None:
            raise ModelNotFound("model_not_found", "no model is loaded yet")
        try:
            package = (
                self.repository.get(options.model) if options.model else self.repository.default_for_task(options.task)
            )
        except PackageError as exc:
            raise ModelNotFound("model_not_found", str(exc)) from None
        if package.manifest.task != options.task:
            raise BadInput(
                "wrong_task", f"model {package.manifest.ref} is a {package.manifest.task} model, not {options.task}"
            )
        return self.models[package.manifest.ref]
