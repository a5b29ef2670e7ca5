"""Which engine runs which of a package's variants: one choice, made by ``select_variant`` for the
service, the worker, ``fsfm analyze`` and ``fsfm bench`` alike.

The inputs are the package (its manifest declares its variants: the fp32 reference graph, int8
graphs, a bf16 record, TensorRT plans, each with its drift from fp32 measured on held-out faces),
the engine and precision asked for ("auto" or a name), and the host: its CPU features, whether an
NVIDIA GPU is present, and which registered engines cannot run here. Given the host explicitly,
the function is pure; ``Host.detect()`` reads the machine.

An engine runs a precision from a variant the package declares in it, or, for the precisions its
registry entry ``derives`` (OpenVINO's bf16 inference hint, torch's bf16 autocast), from the fp32
reference graph; a package records such a precision's measured drift as a variant of that graph.

``auto`` walks ``AUTO_PREFERENCE`` top to bottom and takes the first row whose engine runs here,
whose CPU features the host has, whose variant the package carries and, below fp32, whose
recorded drift is within the tolerance (``DriftTolerance``): a lower precision is never chosen on
speed alone. A forced engine or precision keeps only the rows that agree with it; when none of
them fits, the forced engine's (or any engine's) variants in the forced precision are taken in
registry order, refused when their recorded drift exceeds the tolerance unless ``accept_drift``.
Nothing fits: a ``SelectionError`` saying what is missing and, for a missing variant, the command
that adds it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fsfm.engines.base import EngineError
from fsfm.engines.registry import ENGINES, EngineSpec, engine_spec, unavailable_engines
from fsfm.package import ModelPackage
from fsfm.package.manifest import DEFAULT_DRIFT_TOLERANCE, PRECISIONS, DriftTolerance, Variant

AUTO = "auto"
# The /proc/cpuinfo flags a choice may depend on (VNNI for int8, AMX and AVX-512 BF16 for bf16).
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class Preference:
    """One row of the automatic choice: ``engine`` at ``precision``, on hosts with at least one of
    ``cpu_any`` (any host when empty) and, with ``cuda``, an NVIDIA GPU."""

    engine: str
    precision: str
    cpu_any: frozenset[str] = frozenset()
    cuda: bool = False

    def fits(self, host: Host) -> bool:
        return (not self.cpu_any or bool(self.cpu_any & host.cpu_features)) and (host.cuda or not self.cuda)


INT8_DOT = frozenset({"amx_int8", "avx512_vnni", "avx_vnni"})  # int8 dot-product instructions
BF16_MATH = frozenset({"amx_bf16", "avx512_bf16"})  # bf16 matrix or dot-product instructions

# Fastest first, each row taken only where its variant is carried and, below fp32, its recorded
# drift is within tolerance. Measured with ViT-B/16 on 2 cores of a Xeon with AMX (docs/performance.md):
# OpenVINO int8 ~7x and bf16 ~4.5x ONNX Runtime fp32; ONNX Runtime's dynamic int8 ~3.5x there and
# 1.4-1.8x on an AVX2-only EPYC, where bf16 has no instructions and runs slower than fp32.
AUTO_PREFERENCE: tuple[Preference, ...] = (
    Preference("tensorrt", "fp16"),
    Preference("tensorrt", "fp32"),
    Preference("torch", "bf16", cuda=True),
    Preference("openvino", "int8", INT8_DOT),
    Preference("openvino", "bf16", BF16_MATH),
    Preference("onnxruntime", "int8", frozenset({"avx2"}) | INT8_DOT),
    Preference("onnxruntime", "fp32"),
)


def cpu_features(cpuinfo: str | None = None) -> frozenset[str]:
    """The ``CPU_FEATURES`` flags of the first processor in ``cpuinfo`` (default: /proc/cpuinfo;
    empty where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split()) & frozenset(CPU_FEATURES)
    return frozenset()


def cpu_model(cpuinfo: str | None = None) -> str:
    """The first processor's model name and its ``CPU_FEATURES`` flags, as reports state the host."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown CPU"
    name = next(
        (
            v.strip()
            for k, _, v in map(lambda line: line.partition(":"), cpuinfo.splitlines())
            if k.strip() == "model name"
        ),
        "unknown CPU",
    )
    return f"{name} ({' '.join(sorted(cpu_features(cpuinfo))) or 'no AVX2'})"


def cuda_present() -> bool:
    """Whether an NVIDIA GPU's device node exists (the driver's /dev/nvidia0, ...); no CUDA call."""
    return any(p.name[len("nvidia") :].isdigit() for p in Path("/dev").glob("nvidia*"))


@dataclass(frozen=True)
class Host:
    """What the choice needs to know about the machine."""

    cpu_features: frozenset[str] = frozenset()
    cuda: bool = False
    unavailable: Mapping[str, str] = field(default_factory=dict)  # engine name -> why it cannot run here

    @classmethod
    def detect(cls) -> Host:
        return cls(cpu_features(), cuda_present(), unavailable_engines())

    def cannot_run(self, spec: EngineSpec) -> str | None:
        if spec.name in self.unavailable:
            return self.unavailable[spec.name]
        if spec.device == "cuda" and not self.cuda:
            return "it needs an NVIDIA GPU and none is present"
        return None


@dataclass(frozen=True)
class Selection:
    """The engine, the precision it runs, the variant it reads (``path``) and why they were chosen.
    ``precision`` is the variant's, or one the engine derives from the fp32 reference graph."""

    engine: str
    precision: str
    variant: Variant
    path: Path
    why: str

    def describe(self) -> dict[str, str]:
        """For /readyz and logs."""
        return {"engine": self.engine, "precision": self.precision, "file": self.variant.file}


class SelectionError(EngineError):
    """No engine and variant fit the request on this host."""


def select_variant(
    package: ModelPackage,
    engine: str = AUTO,
    precision: str = AUTO,
    host: Host | None = None,
    preferences: Sequence[Preference] = AUTO_PREFERENCE,
    accept_drift: bool = False,
    tolerance: DriftTolerance = DEFAULT_DRIFT_TOLERANCE,
) -> Selection:
    """Choose the engine and the package variant it runs (see the module docstring). A variant
    below fp32 is chosen automatically only when its recorded drift is within ``tolerance``; asked
    for by name, one whose recorded drift exceeds it is refused unless ``accept_drift``."""
    if engine != AUTO:
        engine_spec(engine)  # unknown: fails, listing the known engines
    if precision != AUTO and precision not in PRECISIONS:
        raise SelectionError(f"unknown precision {precision!r}; precisions: {', '.join((AUTO, *PRECISIONS))}")
    host = Host.detect() if host is None else host
    variants = package.manifest.all_variants()

    def carried(spec: EngineSpec, wanted: str) -> Variant | None:
        """The variant ``spec`` runs at ``wanted``: declared, or made from the reference graph for a
        derived precision (then with no drift on record)."""
        declared = next((v for v in variants if v.precision == wanted and spec.runs(v)), None)
        if declared is None and wanted in spec.derives:
            return variants[0].model_copy(update={"precision": wanted, "method": f"{spec.name} {wanted} from fp32"})
        return declared

    def chosen(spec: EngineSpec, variant: Variant, why: str) -> Selection:
        return Selection(spec.name, variant.precision, variant, package.variant_path(variant), why)

    def asked_for(spec: EngineSpec, variant: Variant) -> Selection:
        """A variant in the precision asked for by name: refused when its recorded drift exceeds the
        tolerance (unless ``accept_drift``), served with a note when it was never measured."""
        why = f"asked for engine {engine}, precision {precision}"
        problem = variant.drift_problem(tolerance)
        if problem is not None and variant.heldout:
            if not accept_drift:
                raise SelectionError(
                    f"{package.manifest.ref}: {spec.name} {variant.precision} is refused: {problem}. "
                    "Serve it anyway with FSFM_ACCEPT_DRIFT=1, or choose another precision"
                )
            why += f"; served although {problem} (FSFM_ACCEPT_DRIFT)"
        elif problem is not None:
            why += f"; {problem}"
        return chosen(spec, variant, why)

    passed_over: list[str] = []

    def lacks_file(spec: EngineSpec) -> bool:
        """Whether an engine not asked for by name lacks a file it needs (asked for, it says so itself)."""
        return engine == AUTO and spec.needs_file is not None and not (package.path / spec.needs_file).is_file()

    for row in preferences:
        spec = ENGINES.get(row.engine)
        if spec is None or engine not in (AUTO, row.engine) or precision not in (AUTO, row.precision):
            continue
        if lacks_file(spec):
            continue
        if row.fits(host) and host.cannot_run(spec) is None and (variant := carried(spec, row.precision)):
            if (problem := variant.drift_problem(tolerance)) is None:
                why = f"preferred on this host: {row.engine} {row.precision}"
                return chosen(spec, variant, "; ".join([why, *passed_over]))
            if precision != AUTO:
                return asked_for(spec, variant)
            passed_over.append(f"passed over {row.engine} {row.precision}: {problem}")
    specs = [ENGINES[engine]] if engine != AUTO else list(ENGINES.values())
    for spec in (s for s in specs if not lacks_file(s)):
        for wanted in [precision] if precision != AUTO else spec.precisions:
            if host.cannot_run(spec) is None and (variant := carried(spec, wanted)) is not None:
                if precision == AUTO and variant.drift_problem(tolerance) is not None:
                    continue  # the engine was asked for, not this precision: try its next one
                return asked_for(spec, variant)
    raise SelectionError(_nothing_fits(package, engine, precision, host, carried))


def _nothing_fits(
    package: ModelPackage, engine: str, precision: str, host: Host, carried: Callable[[EngineSpec, str], Variant | None]
) -> str:
    """Why ``select_variant`` found nothing: the most specific reason first."""
    ref = package.manifest.ref
    if engine != AUTO:
        spec = ENGINES[engine]
        if precision != AUTO and precision not in spec.precisions:
            return f"engine {engine} cannot run precision {precision}; it runs {', '.join(spec.precisions)}"
        wanted = [precision] if precision != AUTO else list(spec.precisions)
        if not any(carried(spec, p) for p in wanted):
            return missing_variant(ref, wanted[0] if len(wanted) == 1 else None, spec.formats[0])
        return f"engine {engine} cannot run here: {host.cannot_run(spec)}"
    runners = [s for s in ENGINES.values() if precision == AUTO or precision in s.precisions]
    if precision != AUTO and not any(carried(s, precision) for s in runners):
        return missing_variant(ref, precision, runners[0].formats[0] if runners else "onnx")
    reasons = "; ".join(f"{s.name}: {host.cannot_run(s)}" for s in runners if host.cannot_run(s))
    return (
        f"no engine that runs here runs {ref}"
        + (f" at precision {precision}" if precision != AUTO else "")
        + (f" ({reasons})" if reasons else "")
    )


def missing_variant(ref: str, precision: str | None, format: str) -> str:
    """The error for a package without the variant asked for, naming the command that adds it."""
    if format == "tensorrt-plan":
        trt = f" --trt-precision {precision}" if precision else ""
        what = f"{precision} TensorRT plan" if precision else "TensorRT plan"
        return f"{ref} has no {what}: build one with `fsfm export --tensorrt{trt}` on the GPU that will run it"
    if precision == "int8":
        return f"{ref} has no int8 variant: add one with `fsfm quantize --model {ref} --heldout DATA`"
    return f"{ref} has no {precision} variant (no fsfm command makes one yet)"
