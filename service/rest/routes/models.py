"""``GET /v1/models``: every loaded model package with its manifest (the core's listing)."""

from __future__ import annotations

from fastapi import APIRouter

from service.rest.deps import CoreDep
from service.rest.errors import error_responses
from service.rest.schemas import ModelEntry, ModelsResponse

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelsResponse, responses=error_responses(401))
async def list_models(core: CoreDep) -> ModelsResponse:
    """Every loaded model package with its manifest."""
    return ModelsResponse(
        models=[
            ModelEntry(
                ref=entry.manifest.ref,
                default_for_task=entry.default_for_task,
                manifest=entry.manifest,
                engine=entry.engine,
            )
            for entry in core.listing()
        ]
    )
