"""``fsfm pull``: the official FSFM weights from their Hugging Face repository (``Wolowolo/fsfm-3c``), verified,
and the fine-tuned ones exported to model packages.

Catalogue (``OFFICIAL``): the VGGFace2 ViT-B/16 pretraining checkpoint (downloaded for ``fsfm finetune
--pretrained``; an encoder is no detector, so no package), the FF++ c23 deepfake model, the DiFF model
(its class-order-fixed ``correct_version`` when the repository has one), and the four MCIO leave-one-out
face anti-spoofing models (FLIP-style head, ``training.flip``). Fine-tuned checkpoints are found by listing
their folder (the repository's file names inside ``finetuned_models/`` are matched by pattern, not
hard-coded).

The weights are CC BY-NC 4.0 (non-commercial use only): nothing is downloaded unless the licence is
accepted explicitly (``accept_licence``), and every package records it.

Verification: each file's size and, for files stored in LFS, its SHA-256 against the repository's listing;
each checkpoint then loads (weights only) and holds the tensors its kind needs. Packages get their
preprocessing (the official normalisation: the pretraining statistics for DfD and FAS, ImageNet's for DiFF;
the paper's plain-resize test transform unless asked otherwise), class semantics (FSFM's: index 0 = fake /
spoof) and, where the official files carry one, the official threshold (FAS).

``HF_ENDPOINT`` (read when pulling) points the client at another server, e.g. a mirror, or a loopback
server in the tests.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsfm.face.crop import Normalization

REPO_ID = "Wolowolo/fsfm-3c"
LICENCE = "CC-BY-NC-4.0"
LICENCE_NOTICE = (
    f"The official FSFM weights ({REPO_ID}) are licensed under Creative Commons Attribution-NonCommercial 4.0\n"
    "International (CC BY-NC 4.0, https://creativecommons.org/licenses/by-nc/4.0/): you may use and adapt them\n"
    "for non-commercial purposes only, with attribution (Wang et al., FSFM, CVPR 2025, arXiv 2412.12032).\n"
    "Models fine-tuned from them inherit the licence. Pass --accept-licence to accept it and download."
)
PACKAGE_LICENCE = f"{LICENCE} (official FSFM weights, {REPO_ID}; non-commercial use only)"
MEAN_STD = "pretrain_ds_mean_std.txt"
VF2_FOLDER = "pretrained_models/VF2_ViT-B"
CHECKPOINT_SUFFIXES = (".pth", ".pth.tar")


class PullError(RuntimeError):
    """A file is missing from the repository, fails verification, or is not the checkpoint expected."""


@dataclass(frozen=True)
class OfficialModel:
    """One downloadable official model: where it lives, which checkpoint file(s) to prefer (glob patterns,
    first match wins; ties: the shortest path), and how to package it."""

    key: str
    folder: str
    patterns: tuple[str, ...]
    task: str | None  # None: a pretraining checkpoint (downloaded, not packaged)
    package: str | None = None
    normalization: str = "pretraining"  # pretraining statistics (VF2's mean/std file) or "imagenet"
    description: str = ""


_FAS_DOMAINS = {"m": "msu", "c": "casia", "i": "replay", "o": "oulu"}
OFFICIAL: dict[str, OfficialModel] = {
    model.key: model
    for model in (
        OfficialModel(
            "pretrained",
            VF2_FOLDER,
            ("checkpoint-400.pth",),
            None,
            description="FSFM ViT-B/16 pretrained on VGGFace2 (400 epochs): fine-tune with fsfm finetune --pretrained",
        ),
        OfficialModel(
            "dfd",
            "finetuned_models/FF++_c23_32frames",
            ("checkpoint-min_val_loss.pth", "*.pth"),
            "deepfake",
            "fsfm-dfd",
            description="official FSFM ViT-B/16 deepfake detector, fine-tuned on FF++ c23 (paper: cross-dataset DfD)",
        ),
        OfficialModel(
            "diff",
            "finetuned_models/FF++_DF_c23_32frames",
            ("*correct_version*/checkpoint-min_val_loss.pth", "*correct_version*/*.pth", "checkpoint-min_val_loss.pth"),
            "diffusion",
            "fsfm-diff",
            normalization="imagenet",
            description="official FSFM ViT-B/16 diffusion-forgery detector, fine-tuned on FF++ DF c23 (paper: DiFF)",
        ),
        *(
            OfficialModel(
                f"fas-{letter}",
                "finetuned_models/MCIO_protocol",
                (f"*{domain}_vit_0_shot_checkpoint_run_0.pth.tar", f"*{domain}_vit_0_shot_checkpoint*.pth.tar"),
                "liveness",
                f"fsfm-fas-{domain}",
                description=f"official FSFM ViT-B/16 face anti-spoofing model, MCIO protocol, {domain} left out "
                "(FLIP-style head)",
            )
            for letter, domain in _FAS_DOMAINS.items()
        ),
    )
}


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files only


@dataclass
class Pulled:
    """What pulling one model gave: its verified local files, and the package (fine-tuned models)."""

    model: OfficialModel
    checkpoint: Path
    package: Any = None  # fsfm.package.repository.ModelPackage
    skipped: bool = False  # an identical package was already in the repository


def endpoint() -> str | None:
    """``HF_ENDPOINT`` as set now (the client reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


def list_folder(folder: str, revision: str) -> list[RemoteFile]:
    """Every file below ``folder`` in the repository, with its size and LFS SHA-256."""
    from huggingface_hub import HfApi, RepoFile
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=endpoint())
    try:
        entries = api.list_repo_tree(REPO_ID, path_in_repo=folder, recursive=True, revision=revision)
        return [RemoteFile(e.path, e.size, e.lfs.sha256 if e.lfs else None) for e in entries if isinstance(e, RepoFile)]
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise PullError(f"{REPO_ID}/{folder} ({revision}): {exc}") from exc


def choose(files: Sequence[RemoteFile], model: OfficialModel) -> RemoteFile:
    """The checkpoint file of ``model``: the first pattern with a match (relative to the folder), the
    shortest such path."""
    for pattern in model.patterns:
        matches = [
            f
            for f in files
            if f.path.endswith(CHECKPOINT_SUFFIXES)
            and fnmatch.fnmatch(str(PurePosixPath(f.path).relative_to(model.folder)), pattern)
        ]
        if matches:
            return min(matches, key=lambda f: (len(f.path), f.path))
    listed = ", ".join(sorted(f.path for f in files)) or "nothing"
    raise PullError(f"no checkpoint matching {model.patterns} in {REPO_ID}/{model.folder} (it holds: {listed})")


def download(remote: RemoteFile, dest: Path, revision: str) -> Path:
    """Download one file into ``dest`` (the repository's layout) and verify its size and SHA-256."""
    from huggingface_hub import hf_hub_download

    path = Path(hf_hub_download(REPO_ID, remote.path, revision=revision, local_dir=dest, endpoint=endpoint()))
    size = path.stat().st_size
    if size != remote.size:
        raise PullError(f"{remote.path}: {size} bytes downloaded, the repository lists {remote.size}")
    if remote.sha256 is not None:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != remote.sha256:
            raise PullError(f"{remote.path}: SHA-256 {digest.hexdigest()} != the repository's {remote.sha256}")
    return path


def check_checkpoint(path: Path, model: OfficialModel) -> None:
    """The file loads (weights only) and holds what its kind needs: an encoder, or a classifier."""
    from fsfm.models.checkpoints import is_classifier_state, load_checkpoint, model_state
    from training.flip import is_flip_state

    try:
        state = model_state(load_checkpoint(path))
    except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise PullError(f"{path}: not a loadable checkpoint ({exc})") from exc
    if "patch_embed.proj.weight" not in state and not is_flip_state(state):
        raise PullError(f"{path}: no ViT encoder in it")
    if model.task is not None and not (is_classifier_state(state) or is_flip_state(state)):
        raise PullError(f"{path}: expected a fine-tuned {model.task} classifier, found no classifier head")


def normalization(model: OfficialModel, mean_std: Path | None) -> Normalization:
    from fsfm.face.crop import IMAGENET_MEAN, IMAGENET_STD, Normalization

    if model.normalization == "imagenet":
        return Normalization(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if mean_std is None:
        raise PullError(f"{MEAN_STD} is missing from {REPO_ID}/{VF2_FOLDER}")
    return Normalization.from_mean_std_file(mean_std)


def pull(
    keys: Sequence[str],
    models_dir: Path,
    download_dir: Path,
    accept_licence: bool,
    revision: str = "main",
    test_transform: str = "resize",
    progress: bool = True,
) -> list[Pulled]:
    """Download, verify and (fine-tuned models) export each of ``keys`` (``OFFICIAL``'s); a package already in
    ``models_dir`` from the same checkpoint file is kept as it is."""
    if not accept_licence:
        raise PullError(f"{LICENCE_NOTICE}\nNothing was downloaded.")
    unknown = [k for k in keys if k not in OFFICIAL]
    if unknown:
        raise PullError(f"unknown model(s) {unknown}; choose from {sorted(OFFICIAL)}")
    from fsfm.models.checkpoints import file_sha256
    from fsfm.package.repository import ModelRepository
    from training.export import export_checkpoint

    vf2 = list_folder(VF2_FOLDER, revision)
    mean_std_remote = next((f for f in vf2 if PurePosixPath(f.path).name == MEAN_STD), None)
    mean_std = download(mean_std_remote, download_dir, revision) if mean_std_remote else None
    results = []
    for key in keys:
        model = OFFICIAL[key]
        files = vf2 if model.folder == VF2_FOLDER else list_folder(model.folder, revision)
        remote = choose(files, model)
        if progress:
            print(f"{key}: {remote.path} ({remote.size / 1e6:.1f} MB)", flush=True)
        checkpoint = download(remote, download_dir, revision)
        check_checkpoint(checkpoint, model)
        pulled = Pulled(model, checkpoint)
        if model.task is not None and model.package is not None:
            sha = file_sha256(checkpoint)
            models_dir.mkdir(parents=True, exist_ok=True)
            existing = [p for p in ModelRepository(models_dir).packages if p.manifest.name == model.package]
            same = [p for p in existing if p.manifest.provenance.checkpoint_sha256 == sha]
            if same:
                pulled.package, pulled.skipped = same[0], True
            else:
                pulled.package = export_checkpoint(
                    checkpoint,
                    models_dir,
                    name=model.package,
                    version=max((p.manifest.version for p in existing), default=0) + 1,
                    task=model.task,
                    normalization=normalization(model, mean_std),
                    test_transform=test_transform,
                    description=model.description,
                    licence=PACKAGE_LICENCE,
                )
        results.append(pulled)
    return results
