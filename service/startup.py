"""What ``fsfm serve`` checks before it binds a port or announces anything.

Cheap, local checks whose failure would otherwise surface only after the service said it was serving:
the model repository (read once here and handed to the core, which then loads the engines), the
detector's weights, the gRPC TLS pair (both files read, and checked to be a certificate and its
private key). Each failure is a ``StartupError`` with one line that names absolute paths; the command
prints it and exits 2, without a traceback. Binding a port that is taken fails the same way
(``service/server.py``, ``service/grpc_server.py``).

Warnings, logged before the service announces itself: a demo model among the packages (its verdicts
are not fit for decisions), an empty repository (``/readyz`` stays 503 ``no_models``), and a
non-loopback address without API keys (anyone who reaches it may use the API).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass, field

from fsfm.face.detector import FaceDetector, create_detector
from fsfm.package import ModelRepository, PackageError
from service.settings import Settings

log = logging.getLogger("fsfm.service")


class StartupError(RuntimeError):
    """The service cannot start as configured; the message says what to change."""


@dataclass
class Startup:
    """What the checks produced, for the core to use rather than read again."""

    repository: ModelRepository
    detector: FaceDetector
    warnings: list[str] = field(default_factory=list)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"; a name that is not an address counts as public."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_tls(settings: Settings) -> tuple[bytes, bytes] | None:
    """The gRPC TLS (key, certificate) bytes, or None for plaintext."""
    cert, key = settings.grpc_tls_cert, settings.grpc_tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing = "FSFM_GRPC_TLS_KEY" if key is None else "FSFM_GRPC_TLS_CERT"
        raise StartupError(f"gRPC TLS needs both FSFM_GRPC_TLS_CERT and FSFM_GRPC_TLS_KEY; {missing} is not set")
    try:
        pair = key.read_bytes(), cert.read_bytes()
    except OSError as exc:
        raise StartupError(
            f"cannot read the gRPC TLS file {exc.filename and str(exc.filename)}: {exc.strerror}"
        ) from None
    try:  # gRPC itself would only fail to bind, with a traceback that does not say why
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise StartupError(
            f"FSFM_GRPC_TLS_CERT ({cert.resolve()}) and FSFM_GRPC_TLS_KEY ({key.resolve()}) are not a PEM "
            f"certificate and its private key ({exc.reason or 'unreadable'})"
        ) from None
    return pair


def check_startup(settings: Settings, grpc: bool = True) -> Startup:
    """Run every check; raise ``StartupError`` on the first that fails, log the warnings."""
    try:
        repository = ModelRepository(settings.models)
    except PackageError as exc:
        raise StartupError(f"{exc} (set --models or FSFM_MODELS)") from None
    try:
        detector = create_detector(settings.detector_config())
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        raise StartupError(f"cannot load the face detector: {exc}") from None
    if grpc:
        check_tls(settings)
    warnings = []
    root = repository.root.resolve()
    if not repository.packages:
        warnings.append(f"no model package in {root}: /readyz answers 503 (no_models) until one is added")
    for folder, error in repository.errors.items():
        warnings.append(f"skipping model package {folder}: {error}")
    for package in repository.packages:
        if package.manifest.demo:
            warnings.append(
                f"{package.manifest.ref} ({package.path.resolve()}) is a DEMO model: "
                "its verdicts are not fit for decisions"
            )
    if not settings.api_keys and not is_loopback(settings.host):
        warnings.append(
            f"serving on {settings.host} without API keys: anyone who reaches this address can use the API; "
            "set FSFM_API_KEYS (comma-separated)"
        )
    for warning in warnings:
        log.warning("%s", warning)
    return Startup(repository, detector, warnings)
