"""``fsfm prepare``: real detector on faces the tests make (scikit-image's astronaut, moved, turned,
recoloured, on different backgrounds), a video, broken files; manifest, region maps, resume, the
official input layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from fsfm.face.crop import Normalization
from training.commands import prepare
from training.masking import GROUPS, patch_groups
from training.prepare import (
    PrepareConfig,
    PrepareError,
    frame_indices,
    open_shard,
    prepare_dataset,
    read_manifest,
    read_shard_records,
)
from training.regions import LaPa, landmark_region_map, read_parsing_map, write_parsing_map

HEAD = (226.0, 118.0)  # centre of the astronaut's head in skimage's 512 x 512 picture
NUM_IMAGES = 48
VIDEO_FRAMES, VIDEO_SAMPLES = 12, 4
TEST_SIZE = 64  # crop size of the shared test set (tiny models train on it)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(4)
    if kind == 0:
        return np.full((size, size, 3), rng.integers(0, 256, 3), np.uint8)
    if kind == 1:
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ramp = np.linspace(0, 1, size)[None, :, None]
        return np.broadcast_to(a + (b - a) * ramp, (size, size, 3)).astype(np.uint8).copy()
    if kind == 2:
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    scene = (data.coffee, data.rocket, data.chelsea)[rng.integers(3)]()
    return cv2.resize(scene, (size, size))


def synthetic_face(rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """The astronaut's head, rotated +-12 degrees, scaled, shifted, colour-jittered, maybe mirrored,
    cut out with a soft ellipse and placed on a random background."""
    source = data.astronaut()
    matrix = cv2.getRotationMatrix2D(HEAD, rng.uniform(-12, 12), rng.uniform(0.55, 0.8))
    matrix[:, 2] += np.array([size / 2, size / 2]) + rng.uniform(-20, 20, 2) - HEAD
    alpha = np.zeros(source.shape[:2], np.float32)
    cv2.ellipse(alpha, (int(HEAD[0]), int(HEAD[1]) + 10), (120, 150), 0, 0, 360, 1.0, -1)
    face = cv2.warpAffine(source, matrix, (size, size), flags=cv2.INTER_LINEAR).astype(np.float32)
    alpha = cv2.warpAffine(alpha, matrix, (size, size))[..., None]
    face = face * rng.uniform(0.7, 1.2, 3) + rng.uniform(-20, 20)
    image = np.clip(alpha * face + (1 - alpha) * _background(rng, size), 0, 255).astype(np.uint8)
    return image[:, ::-1].copy() if rng.random() < 0.5 else image


def write_video(path: Path, frames: list[np.ndarray]) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def make_source_folder(folder: Path) -> Path:
    """48 face images in two sub-folders, a 12-frame video, a picture without a face, and three
    files that cannot be used (a truncated JPEG, a broken MP4, a text file)."""
    rng = np.random.default_rng(0)
    for i in range(NUM_IMAGES):
        sub = folder / ("set_a" if i % 2 else "set_b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_face(rng)).save(sub / f"face_{i:02d}.png")
    write_video(folder / "clip.avi", [synthetic_face(rng) for _ in range(VIDEO_FRAMES)])
    Image.fromarray(_background(np.random.default_rng(1), 224)[..., ::-1].copy()).save(folder / "no_face.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    (folder / "broken.mp4").write_bytes(b"not a video")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def cli_app() -> typer.Typer:
    """The command registered as the ``fsfm`` CLI registers it."""
    app = typer.Typer()
    app.command()(prepare)
    app.command("noop")(lambda: None)  # two commands: Typer keeps the sub-command name
    return app


def run_prepare(*args: str) -> str:
    result = CliRunner().invoke(cli_app(), ["prepare", *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def prepared_test_faces(base: Path) -> tuple[Path, Path]:
    """(source folder, dataset) of the shared test set, built once per session through the CLI
    (both test modules call this; a second call finds the finished dataset)."""
    source, dataset = base / "faces-source", base / f"faces-{TEST_SIZE}"
    if not (dataset / "manifest.json").is_file():
        make_source_folder(source)
        run_prepare(
            str(source), str(dataset), "--size", str(TEST_SIZE), "--frames", str(VIDEO_SAMPLES), "--workers", "2"
        )
    return source, dataset


@pytest.fixture(scope="session")
def test_faces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return prepared_test_faces(tmp_path_factory.getbasetemp())


def test_prepare_writes_faces_regions_and_a_manifest(test_faces: tuple[Path, Path]) -> None:
    source, dataset = test_faces
    manifest = read_manifest(dataset)
    assert manifest["faces"] == NUM_IMAGES + VIDEO_SAMPLES
    assert manifest["counts"] == {
        "files": NUM_IMAGES + 5,
        "image": NUM_IMAGES + 2,
        "video": 2,
        "crop": 0,
        "other": 1,
        "ok": NUM_IMAGES + 1,
        "no_face": 1,
        "skipped": 3,
    }
    assert manifest["no_face"] == ["no_face.png"]
    reasons = {entry["path"]: entry["reason"] for entry in manifest["skipped"]}
    assert set(reasons) == {"broken.jpg", "broken.mp4", "notes.txt"}
    assert reasons["broken.jpg"].startswith("corrupt") and "video" in reasons["broken.mp4"]
    assert manifest["parameters"]["size"] == TEST_SIZE and manifest["region_maps"] == "landmarks"

    records = [r for _, r in read_shard_records(dataset)]
    names = [face["name"] for r in records for face in r["faces"]]
    expected_frames = np.linspace(0, VIDEO_FRAMES - 1, VIDEO_SAMPLES).astype(int)
    assert [n for n in names if n.startswith("clip")] == [f"clip_frame_{i}" for i in expected_frames]
    assert "set_a__face_01" in names and len(set(names)) == len(names)

    images = np.concatenate([open_shard(dataset, s["name"])[0] for s in manifest["shards"]])
    regions = np.concatenate([open_shard(dataset, s["name"])[1] for s in manifest["shards"]])
    assert images.shape == (manifest["faces"], TEST_SIZE, TEST_SIZE, 3) and images.dtype == np.uint8
    assert regions.shape == (manifest["faces"], TEST_SIZE, TEST_SIZE) and regions.max() < len(LaPa)
    # Every face has every group CRFR-P can cover (at 8 px patches, the tiny models' size).
    groups = patch_groups(np.asarray(regions), 8)
    assert groups[:, : GROUPS.index("skin")].any(axis=2).all()

    # Normalisation statistics: computed once here, stored both in the manifest and the official file.
    pixels = images.reshape(-1, 3).astype(np.float64) / 255
    stored = Normalization.from_mean_std_file(dataset / "pretrain_ds_mean_std.txt")
    assert np.allclose(stored.mean, pixels.mean(axis=0), atol=1e-9)
    assert np.allclose(stored.std, pixels.std(axis=0), atol=1e-9)
    assert manifest["normalization"]["mean"] == list(stored.mean)


def test_landmark_regions_put_the_parts_where_the_face_is(astronaut_rgb: np.ndarray) -> None:
    from fsfm.face.crop import CropSpec, crop_region
    from fsfm.face.detector import create_detector

    face = create_detector().detect(astronaut_rgb)[0]
    x1, y1, x2, y2 = crop_region(face.box, 512, 512, CropSpec())
    landmarks = (face.landmarks - [x1, y1]) * [224 / (x2 - x1), 224 / (y2 - y1)]
    labels = landmark_region_map(landmarks, 224)
    at = lambda point: labels[int(point[1]), int(point[0])]  # noqa: E731
    assert at(landmarks[0]) == LaPa.RIGHT_EYE and at(landmarks[1]) == LaPa.LEFT_EYE
    assert at(landmarks[2]) == LaPa.NOSE
    mouth_centre = landmarks[3:].mean(axis=0)
    assert at(mouth_centre) == LaPa.INNER_MOUTH
    assert at(mouth_centre + [0, 6]) == LaPa.LOWER_LIP and at(mouth_centre - [0, 5]) == LaPa.UPPER_LIP
    eye_distance = np.hypot(*(landmarks[1] - landmarks[0]))
    assert at(landmarks[0] - [0, 0.34 * eye_distance]) == LaPa.RIGHT_BROW
    assert at((landmarks[0] + landmarks[3]) / 2) == LaPa.SKIN  # cheek
    assert at((112, 3)) == LaPa.HAIR and at((3, 220)) == LaPa.BACKGROUND
    counts = np.bincount(labels.ravel(), minlength=len(LaPa))
    assert counts[LaPa.SKIN] > counts[LaPa.NOSE] > counts[LaPa.RIGHT_EYE] > 0


def test_frame_sampling_by_count_or_stride() -> None:
    assert frame_indices(12, 4, None) == [0, 3, 7, 11]  # np.linspace(0, N - 1, K), as the official code
    assert frame_indices(3, 128, None) == [0, 1, 2]
    assert frame_indices(12, None, 5) == [0, 5, 10]
    assert PrepareConfig(frame_stride=2).frames is None


def test_resume_continues_and_matches_an_uninterrupted_run(test_faces: tuple[Path, Path], tmp_path: Path) -> None:
    source, _ = test_faces
    subset = tmp_path / "subset"
    (subset / "set_a").mkdir(parents=True)
    for path in sorted((source / "set_a").iterdir())[:10]:
        shutil.copy(path, subset / "set_a" / path.name)
    shutil.copy(source / "broken.jpg", subset)
    config = PrepareConfig(size=TEST_SIZE, shard_size=3)
    full = prepare_dataset(subset, tmp_path / "full", config, workers=1, progress=False)

    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "full", interrupted)
    (interrupted / "manifest.json").unlink()  # killed before the end: no manifest, the last shards lost
    last = sorted((interrupted / "shards").glob("*.json"))[-2:]
    for record in last:
        for path in (interrupted / "shards").glob(record.name.removesuffix(".json") + ".*"):
            path.unlink()
    kept = sorted((interrupted / "shards").glob("*"))
    before = {p.name: p.stat().st_mtime_ns for p in kept}
    resumed = prepare_dataset(subset, interrupted, config, workers=2, progress=False)

    assert {p.name: p.stat().st_mtime_ns for p in kept} == before  # finished shards untouched
    assert resumed == {**full, "source": resumed["source"]} and resumed["faces"] == 10
    for shard in full["shards"]:
        for a, b in zip(
            open_shard(tmp_path / "full", shard["name"]), open_shard(interrupted, shard["name"]), strict=False
        ):
            assert np.array_equal(a, b)
    assert [r for _, r in read_shard_records(tmp_path / "full")] == [r for _, r in read_shard_records(interrupted)]

    with pytest.raises(PrepareError, match="other inputs or parameters"):
        prepare_dataset(subset, interrupted, PrepareConfig(size=TEST_SIZE + 8, shard_size=3), workers=1, progress=False)


def test_rerun_of_a_finished_dataset_only_reports(test_faces: tuple[Path, Path]) -> None:
    source, dataset = test_faces
    output = run_prepare(str(source), str(dataset), "--size", str(TEST_SIZE), "--frames", str(VIDEO_SAMPLES))
    assert f"{NUM_IMAGES + VIDEO_SAMPLES} faces from {NUM_IMAGES + 1} of {NUM_IMAGES + 5} files" in output
    assert "skipped broken.mp4" in output and "skipped notes.txt" in output


def test_official_layout_and_precomputed_parsing_maps(test_faces: tuple[Path, Path], tmp_path: Path) -> None:
    """images/<name>.png + parsing_maps/<name>.npy (int8, (1, S, S)) in; the parser's maps are used as
    they are. Faces whose map is missing or invalid are skipped and reported."""
    source, dataset = test_faces
    crops, _ = open_shard(dataset, read_manifest(dataset)["shards"][0]["name"])
    official = tmp_path / "official"
    (official / "images").mkdir(parents=True)
    (official / "parsing_maps").mkdir()
    rng = np.random.default_rng(0)
    maps = {}
    for i in range(4):
        Image.fromarray(np.asarray(crops[i])).save(official / "images" / f"vid_frame_{i}.png")
        maps[f"vid_frame_{i}"] = rng.integers(0, len(LaPa), (TEST_SIZE, TEST_SIZE)).astype(np.uint8)
        write_parsing_map(official / "parsing_maps" / f"vid_frame_{i}.npy", maps[f"vid_frame_{i}"])
    np.save(official / "parsing_maps" / "vid_frame_3.npy", np.full((1, TEST_SIZE, TEST_SIZE), 12, np.int8))
    Image.fromarray(np.asarray(crops[4])).save(official / "images" / "no_map.png")

    manifest = prepare_dataset(official, tmp_path / "out", PrepareConfig(size=TEST_SIZE), workers=1, progress=False)
    assert manifest["input_layout"] == "official" and manifest["region_maps"] == "parsing"
    assert manifest["faces"] == 3 and manifest["counts"]["crop"] == 5
    assert {e["path"] for e in manifest["skipped"]} == {"images/vid_frame_3.png", "images/no_map.png"}
    images, regions = open_shard(tmp_path / "out", manifest["shards"][0]["name"])
    for i in range(3):
        assert np.array_equal(regions[i], maps[f"vid_frame_{i}"]) and np.array_equal(images[i], crops[i])

    # The same maps used for detected faces, found by face name (--region-maps parsing).
    parsing = tmp_path / "parsing"
    parsing.mkdir()
    picked = tmp_path / "picked"
    picked.mkdir()
    shutil.copy(source / "set_a" / "face_01.png", picked)
    write_parsing_map(parsing / "face_01.npy", maps["vid_frame_0"])
    config = PrepareConfig(size=TEST_SIZE, region_maps="parsing", parsing_dir=parsing)
    manifest = prepare_dataset(picked, tmp_path / "out2", config, workers=1, progress=False)
    assert manifest["faces"] == 1 and manifest["region_maps"] == "parsing"
    assert np.array_equal(open_shard(tmp_path / "out2", manifest["shards"][0]["name"])[1][0], maps["vid_frame_0"])


def test_parsing_map_reader_checks_the_official_format(tmp_path: Path) -> None:
    labels = np.arange(224 * 224).reshape(224, 224) % len(LaPa)
    write_parsing_map(tmp_path / "a.npy", labels)
    stored = np.load(tmp_path / "a.npy")
    assert stored.dtype == np.int8 and stored.shape == (1, 224, 224)
    assert np.array_equal(read_parsing_map(tmp_path / "a.npy"), labels)
    assert read_parsing_map(tmp_path / "a.npy", size=112).shape == (112, 112)
    np.save(tmp_path / "b.npy", np.zeros((2, 224, 224), np.int8))
    with pytest.raises(ValueError, match="parsing map"):
        read_parsing_map(tmp_path / "b.npy")
    np.save(tmp_path / "c.npy", np.full((1, 8, 8), -1, np.int8))
    with pytest.raises(ValueError, match="LaPa range"):
        read_parsing_map(tmp_path / "c.npy")
