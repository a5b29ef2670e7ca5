"""The analysis core behind both doors (REST: ``service/rest``, gRPC: ``service/grpc_server.py``).

One entry, ``AnalysisCore.analyze(AnalysisRequest) -> Report``; one module per job: ``request``
(what a door hands in), ``admission``, ``models`` (load, warm up, choose), ``pipeline`` (detect,
crop, infer, judge), ``report`` (verdicts, face tracks, the stream aggregate), ``streams`` (per-stream state).
"""

from service.core.analysis_core import CORE_DEADLINE_SLACK_S, AnalysisCore
from service.core.models import InferenceBackend, ModelListing, ServedModel
from service.core.report import AggregateSnapshot, FrameReport, Report, StreamAggregate, tracks_verdict
from service.core.request import AnalysisOptions, AnalysisRequest, RequestContext
from service.media import Frame
from service.settings import VideoLimits

__all__ = [
    "CORE_DEADLINE_SLACK_S",
    "AggregateSnapshot",
    "AnalysisCore",
    "AnalysisOptions",
    "AnalysisRequest",
    "Frame",
    "FrameReport",
    "InferenceBackend",
    "ModelListing",
    "Report",
    "RequestContext",
    "ServedModel",
    "StreamAggregate",
    "VideoLimits",
    "tracks_verdict",
]
