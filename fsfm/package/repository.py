"""A model repository: ``<root>/<name>/<version>/{manifest.json, model.onnx[, variants]}``; the
manifest lists the variants (``model.int8.onnx``, ``model.plan``, ...).

Like Triton's model repository: every model in it is served, the highest version by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from fsfm.package.manifest import MANIFEST_FILE, Manifest, Variant


class PackageError(ValueError):
    """A model package or repository is missing, malformed, or has no such model."""


@dataclass(frozen=True)
class ModelPackage:
    manifest: Manifest
    path: Path

    @property
    def onnx_path(self) -> Path:
        return self.path / self.manifest.onnx.file

    def variant_path(self, variant: Variant) -> Path:
        return self.path / variant.file


def load_package(folder: Path) -> ModelPackage:
    folder = Path(folder)
    if not (folder / MANIFEST_FILE).is_file():
        raise PackageError(f"{folder} has no {MANIFEST_FILE}")
    try:
        manifest = Manifest.load(folder)
    except (ValidationError, ValueError) as exc:
        raise PackageError(f"invalid manifest in {folder}: {exc}") from exc
    if folder.name != str(manifest.version) or folder.parent.name != manifest.name:
        raise PackageError(
            f"{folder} holds {manifest.ref}; a package lives at <repository>/{manifest.name}/{manifest.version}"
        )
    package = ModelPackage(manifest, folder)
    if not package.onnx_path.is_file():
        raise PackageError(f"{manifest.ref}: {package.onnx_path} is missing")
    return package


def parse_model_ref(ref: str) -> tuple[str, int | None]:
    """``"name"`` or ``"name:version"`` -> (name, version or None)."""
    name, _, version = ref.partition(":")
    if not version:
        return name, None
    if not version.isdigit():
        raise PackageError(f"model version must be an integer, got {ref!r}")
    return name, int(version)


class ModelRepository:
    """Reads every package under ``root``. Malformed packages are collected in ``errors``, not fatal,
    so one broken folder does not take the others down."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise PackageError(f"model repository {self.root.resolve()} does not exist")
        self.packages: list[ModelPackage] = []
        self.errors: dict[str, str] = {}
        for version_dir in sorted(self.root.glob(f"*/*/{MANIFEST_FILE}")):
            folder = version_dir.parent
            try:
                self.packages.append(load_package(folder))
            except PackageError as exc:
                self.errors[str(folder)] = str(exc)
        self.packages.sort(key=lambda p: (p.manifest.name, p.manifest.version))

    def get(self, ref: str) -> ModelPackage:
        """A package by ``name`` (its highest version) or ``name:version``."""
        name, version = parse_model_ref(ref)
        matches = [p for p in self.packages if p.manifest.name == name]
        if not matches:
            raise PackageError(f"no model named {name!r}; models: {self.names()}")
        if version is None:
            return matches[-1]
        for package in matches:
            if package.manifest.version == version:
                return package
        raise PackageError(
            f"model {name!r} has no version {version}; versions: {[p.manifest.version for p in matches]}"
        )

    def default_for_task(self, task: str) -> ModelPackage:
        """The model a request for ``task`` gets when it names none: the latest version of the
        alphabetically first model with that task."""
        latest = self.latest()
        for package in latest:
            if package.manifest.task == task:
                return package
        raise PackageError(f"no {task} model is loaded; models: {self.names()}")

    def latest(self) -> list[ModelPackage]:
        """The highest version of each model name."""
        best: dict[str, ModelPackage] = {}
        for package in self.packages:
            best[package.manifest.name] = package  # sorted by version, so the last one wins
        return list(best.values())

    def names(self) -> list[str]:
        return sorted({p.manifest.name for p in self.packages})
