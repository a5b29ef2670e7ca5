"""The generated modules of ``proto/fsfm/v1/analysis.proto``, for the server and for clients.

They are committed in ``service/proto_gen/`` and ship in the wheel, so serving needs no grpcio-tools.
After editing the proto, ``python -m service.protogen`` regenerates them; tests/test_stubs.py fails
while they are stale.
"""

from __future__ import annotations

from service.proto_gen.fsfm.v1 import analysis_pb2 as pb
from service.proto_gen.fsfm.v1 import analysis_pb2_grpc as pb_grpc

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["FaceSecurity"].full_name

__all__ = ["SERVICE_NAME", "pb", "pb_grpc"]
