"""``fsfm/evidence.py`` on its own: occlusion through a real batcher and a test engine whose score depends on
one known cell, the heatmap PNG, the robustness probes and their verdict, the crop square, option parsing."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest

from fsfm.evidence import (
    EVIDENCE_KINDS,
    HEATMAP,
    OCCLUSION_CELLS_PER_SIDE,
    PROBES,
    ROBUSTNESS,
    cell_edges,
    code_version,
    crop_square,
    denormalize,
    downscaled_and_back,
    evidence_inputs,
    face_evidence,
    heatmap_png,
    inferences_per_face,
    jpeg_recompressed,
    parse_evidence,
    robustness,
)
from fsfm.face.crop import CropSpec, crop_region, normalize
from fsfm.package import ModelRepository
from fsfm.package.manifest import Manifest
from fsfm.scoring import attack_scores
from service.batcher import DynamicBatcher
from service.metrics import Metrics

CORNER_GAIN = 10.0  # the corner engine's attack logit per unit of mean input in the top-left cell


@pytest.fixture(scope="module")
def manifest(models) -> Manifest:
    return ModelRepository(models).get("tiny-deepfake").manifest


class CornerEngine:
    """A test engine: its attack logit is ``CORNER_GAIN`` x the mean of the input's top-left occlusion cell,
    the genuine logit 0, so only that cell can move the score."""

    name = "test-corner"
    input_name = "images"
    output_names = ("logits",)
    selection = None

    def __init__(self, manifest: Manifest) -> None:
        self.attack_index = manifest.classes.attack_index
        self.cell = int(cell_edges(manifest.crop.size)[1])

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        logits = np.zeros((len(batch), 2), np.float32)
        logits[:, self.attack_index] = CORNER_GAIN * batch[:, :, : self.cell, : self.cell].mean(axis=(1, 2, 3))
        return {"logits": logits}

    def warmup(self, sample: np.ndarray) -> None:
        self.run(sample)

    def close(self) -> None:
        pass


async def _scores_through_batcher(engine: CornerEngine, manifest: Manifest, inputs: np.ndarray) -> np.ndarray:
    batcher = DynamicBatcher(engine, "corner", Metrics(), max_batch_size=8, max_queue_delay_ms=1, max_queue_size=256)
    batcher.start()
    try:
        result = await batcher.infer(inputs)
    finally:
        await batcher.stop()
    return attack_scores(result.outputs["logits"], manifest)


def test_occlusion_through_the_batcher_finds_the_only_cell_that_matters(manifest) -> None:
    size = manifest.crop.size
    tensor = np.ones((3, size, size), np.float32)
    engine = CornerEngine(manifest)
    kinds = frozenset({HEATMAP})
    inputs = evidence_inputs(tensor, kinds, manifest.normalization)
    assert inputs.shape == (OCCLUSION_CELLS_PER_SIDE**2, 3, size, size) == (inferences_per_face(kinds), 3, size, size)
    scores = asyncio.run(_scores_through_batcher(engine, manifest, inputs))
    score = float(attack_scores(engine.run(tensor[None])["logits"], manifest)[0])
    evidence = face_evidence(kinds, score, "fake", scores, [0.0, 0.0, 10.0, 10.0], 0.5, manifest)
    assert evidence.robustness is None and evidence.heatmap is not None
    grid = evidence.heatmap.grid
    assert grid.shape == (OCCLUSION_CELLS_PER_SIDE, OCCLUSION_CELLS_PER_SIDE)
    expected = np.zeros_like(grid)
    expected[0, 0] = score - 0.5  # the cell greyed: logit 0, score 0.5
    np.testing.assert_allclose(grid, expected, atol=1e-6)
    assert evidence.heatmap.method == "occlusion"


def test_each_occluded_copy_greys_one_cell_to_the_normalisation_mean(manifest) -> None:
    size = manifest.crop.size
    crop = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    tensor = normalize(crop, manifest.normalization)
    copies = evidence_inputs(tensor, frozenset({HEATMAP}), manifest.normalization)
    edges = cell_edges(size)
    for index in (0, 8, len(copies) - 1):
        r, c = divmod(index, OCCLUSION_CELLS_PER_SIDE)
        changed = np.argwhere((copies[index] != tensor).any(axis=0))
        assert changed[:, 0].min() >= edges[r] and changed[:, 0].max() < edges[r + 1]
        assert changed[:, 1].min() >= edges[c] and changed[:, 1].max() < edges[c + 1]
        grey = denormalize(copies[index], manifest.normalization)[edges[r] : edges[r + 1], edges[c] : edges[c + 1]]
        mean_grey = np.round(np.asarray(manifest.normalization.mean) * 255).astype(np.uint8)
        np.testing.assert_array_equal(grey, np.broadcast_to(mean_grey, grey.shape))


def test_the_heatmap_png_is_the_crop_size_and_hottest_at_the_peak_cell() -> None:
    grid = np.zeros((OCCLUSION_CELLS_PER_SIDE, OCCLUSION_CELLS_PER_SIDE))
    grid[3, 5] = 0.2
    png = cv2.imdecode(np.frombuffer(heatmap_png(grid, 224), np.uint8), cv2.IMREAD_COLOR)
    assert png.shape == (224, 224, 3)
    edges = cell_edges(224)
    b, g, r = png[(edges[3] + edges[4]) // 2, (edges[5] + edges[6]) // 2]
    assert r > 100 and b < 50  # JET's red at the grid's maximum
    b, g, r = png[5, 5]
    assert b > 100 and r < 50  # and blue where nothing mattered


def test_the_probes_reencode_the_crop_and_their_verdict_is_fragile_when_a_label_flips(manifest) -> None:
    size = manifest.crop.size
    crop = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8), (5, 5), 2)
    tensor = normalize(crop, manifest.normalization)
    np.testing.assert_array_equal(denormalize(tensor, manifest.normalization), crop)  # normalize's exact inverse
    probes = evidence_inputs(tensor, frozenset({ROBUSTNESS}), manifest.normalization)
    assert probes.shape == (len(PROBES), 3, size, size)
    for probe, expected in zip(probes, (jpeg_recompressed(crop), downscaled_and_back(crop)), strict=True):
        np.testing.assert_array_equal(denormalize(probe, manifest.normalization), expected)
        assert not np.array_equal(expected, crop)
    kept = robustness("fake", np.array([0.7, 0.9]), 0.5, manifest)
    assert kept.probes == dict(zip(PROBES, [0.7, 0.9], strict=True)) and not kept.fragile
    assert robustness("fake", np.array([0.7, 0.4]), 0.5, manifest).fragile
    assert robustness("real", np.array([0.2, 0.5]), 0.5, manifest).fragile  # the threshold itself is the attack label


def test_the_crop_square_is_the_crop_region_narrowed_by_a_centre_crop() -> None:
    box = np.array([100.0, 80.0, 180.0, 190.0])
    plain = CropSpec(size=224)
    assert crop_square(box, 640, 480, plain) == [float(v) for v in crop_region(box, 640, 480, plain)]
    x1, y1, x2, y2 = crop_region(box, 640, 480, plain)
    centred = crop_square(box, 640, 480, CropSpec(size=224, center_crop_from=256))
    inset_x, inset_y = (x2 - x1) / 16, (y2 - y1) / 16  # 224 of 256 kept: 1/16 off each side
    assert centred == pytest.approx([x1 + inset_x, y1 + inset_y, x2 - inset_x, y2 - inset_y], abs=0.05)  # rounded


def test_evidence_options_parse_from_text_or_parts_and_unknown_kinds_are_named() -> None:
    assert parse_evidence(None) == frozenset()
    assert parse_evidence(" heatmap, audit ,") == {"heatmap", "audit"}
    assert parse_evidence(["robustness"]) == {"robustness"}
    with pytest.raises(ValueError, match=r"\['saliency'\].*heatmap, robustness, audit"):
        parse_evidence("heatmap,saliency")
    assert inferences_per_face(EVIDENCE_KINDS) == OCCLUSION_CELLS_PER_SIDE**2 + len(PROBES)
    assert inferences_per_face({"audit"}) == 0


def test_the_evidence_faces_of_a_request_fit_an_idle_queue() -> None:
    from service.settings import Settings

    settings = Settings(max_queue_size=120, max_evidence_faces=4)
    assert settings.evidence_faces({"heatmap", "robustness"}) == 2  # 2 x 51 extra inferences fit 120
    assert settings.evidence_faces({"robustness", "audit"}) == 4
    assert settings.evidence_faces({"audit"}) == 0  # no per-face evidence
    assert Settings(max_queue_size=48).evidence_faces({"heatmap"}) == 0


def test_the_code_version_names_the_release_and_the_build() -> None:
    version = code_version()
    assert version.startswith("fsfm 0.1.0+") and version.split("+", 1)[1]
