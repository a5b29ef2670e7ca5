"""A job's media is dropped as soon as it is decoded: ``EncodedMedia`` gives its bytes to the core once,
and a video's frames hold them only until their decoding ends (the container closes then). Checked by
the bytes object's reference count: back where it was before, nothing of the analysis holds it."""

from __future__ import annotations

import asyncio
import gc
import sys
import time

import numpy as np
import pytest

from service.core import AnalysisCore, AnalysisOptions, AnalysisRequest, RequestContext
from service.media import MEDIA_KINDS, EncodedMedia, Sampling, decode_media
from service.settings import Settings
from tests.test_rest import make_video


@pytest.fixture(scope="module")
def clip(astronaut_rgb) -> bytes:
    """Six frames of the astronaut, brightening: an MP4 in memory."""
    frames = [np.clip(astronaut_rgb * (0.6 + 0.08 * k), 0, 255).astype(np.uint8) for k in range(6)]
    return make_video(frames, "mp4", "libx264")


def test_a_videos_frames_hold_its_bytes_until_their_decoding_ends(clip) -> None:
    data = bytes(clip)  # an object of this test's own
    before = sys.getrefcount(data)
    media = decode_media(data, MEDIA_KINDS, Settings().image_limits(), Sampling(60.0, 4))
    assert sys.getrefcount(data) > before  # the open container reads them as frames are taken
    assert len(list(media.frames)) == 4
    del media
    gc.collect()
    assert sys.getrefcount(data) == before


def test_the_core_takes_encoded_media_once_and_keeps_none_of_it(models, clip) -> None:
    data = bytes(clip)
    before = sys.getrefcount(data)

    async def scenario() -> None:
        core = AnalysisCore(Settings(models=models))
        await core.start()
        try:
            holder = EncodedMedia(data)
            context = RequestContext("test", time.monotonic() + 60)
            request = AnalysisRequest(AnalysisOptions(task="deepfake", max_frames=4), context, media=holder)
            report = await core.analyze(request)
            assert report.is_video and len(report.frames) == 4
            assert holder.taken and holder.size == len(data)
            gc.collect()
            assert sys.getrefcount(data) == before  # the request still exists; the bytes are not in it
            with pytest.raises(RuntimeError, match="already taken"):
                holder.take()
        finally:
            await core.stop()

    asyncio.run(scenario())
