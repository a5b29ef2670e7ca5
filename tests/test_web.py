"""The web page (``service/rest/web/``) in a real headless Chromium against a real ``fsfm serve`` on
loopback that requires API keys: the page asks for a key, then images, a video and a fake camera are
analysed through it, and what it drew is compared with the API's JSON answers and the faces' measured
positions. Every tab's network log must hold this server's URLs only (and blob:/data: ones).

A screenshot of each view is written to ``$FSFM_SCREENSHOTS`` (default: a pytest temp folder), for CI
to keep as artefacts; ``docs/web-image.png`` (in the README) and ``docs/web-video.png`` are two of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from fsfm.package.manifest import OperatingPoint, Thresholds
from service.rest.web import PAGE_HEADERS
from tests.browser import Browser, Tab
from tests.faces import ASTRONAUT_FACE_BOX, assert_group_faces, iou
from tests.packages import make_tiny_package
from tests.servers import RunningServer, running_server
from tests.test_rest import DEMO_DESCRIPTION, make_video

API_KEY = "web-page-key"
MAX_VIDEO_FRAMES = 8
MAX_FACES = 4  # judged per request: two of the group photo's six faces are not judged (face_limit)
CAMERA_FPS = 5
BOX_TOLERANCE_PX = 1.5  # drawn box vs answer, in image pixels: layout rounding of the scaled picture
PHONE_WIDTH_PX = 390
LONG_CLIP_FRAMES = 120  # frames of a job long enough (seconds on 2 cores) to cancel while it runs

# The boxes drawn in an overlay, in the pixels of the picture under it: each box's on-screen rectangle
# mapped back through the picture's on-screen rectangle and natural size.
DRAWN_BOXES_JS = """(() => {
  const media = document.getElementById('%s');
  const area = media.getBoundingClientRect();
  const scale = (media.naturalWidth || media.videoWidth) / area.width;
  return [...document.querySelectorAll('#%s .face')].map((face) => {
    const r = face.querySelector('.box').getBoundingClientRect();
    const drawn = [r.left - area.left, r.top - area.top, r.right - area.left, r.bottom - area.top];
    return {drawn: drawn.map((v) => v * scale),
            box: face.dataset.box.split(',').map(Number), caption: face.querySelector('text').textContent};
  });
})()"""


# Text whose contrast with its background is under WCAG AA's 4.5:1: every visible element with text of
# its own, its colour against the first opaque background up its ancestors (HTML only: SVG captions are
# drawn on their own tags).
LOW_CONTRAST_JS = """(() => {
  const rgb = (text) => text.match(/[\\d.]+/g).map(Number);
  const luminance = ([r, g, b]) => [r, g, b].map((v) => v / 255)
    .map((v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4))
    .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (element) => {
    for (let e = element; e; e = e.parentElement) {
      const colour = rgb(getComputedStyle(e).backgroundColor);
      if (colour.length < 4 || colour[3] === 1) return colour;
    }
    return [255, 255, 255];
  };
  return [...document.body.querySelectorAll('*')]
    .filter((e) => !(e instanceof SVGElement) && e.checkVisibility()
      && [...e.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim()))
    .map((e) => {
      const [a, b] = [luminance(rgb(getComputedStyle(e).color)), luminance(background(e))];
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      return [`${e.tagName}#${e.id} ${e.textContent.trim().slice(0, 30)}`, ratio];
    })
    .filter(([, ratio]) => ratio < 4.5);
})()"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, mtcnn_dir) -> Iterator[RunningServer]:
    models = tmp_path_factory.mktemp("models")
    point = OperatingPoint(name="fpr_1pct", threshold=0.8, target_fpr=0.01)
    calibrated = Thresholds(default=0.5, operating_points=[point])
    make_tiny_package(models, name="tiny-deepfake", version=1, seed=0, thresholds=calibrated)
    make_tiny_package(models, name="tiny-deepfake", version=2, seed=2, demo=True, description=DEMO_DESCRIPTION)
    make_tiny_package(models, name="tiny-liveness", task="liveness", seed=1)
    settings = {
        "api_keys": [API_KEY],
        "max_video_frames": MAX_VIDEO_FRAMES,
        "max_faces_per_request": MAX_FACES,
        "job_max_faces": MAX_FACES,  # a job judges what a request would: the test's threshold comes from one
    }
    with running_server(models, settings, grpc=False) as running:
        yield running


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("FSFM_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_y4m(path: Path, frames: list[np.ndarray], fps: int) -> Path:
    """Frames (RGB uint8, same size) as a YUV4MPEG2 file, 4:2:0: what Chromium's fake camera plays."""
    height, width = frames[0].shape[:2]
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            out.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory, astronaut_rgb) -> Iterator[Browser]:
    """One Chromium for the module; its fake camera films the astronaut (512x512, 5 fps)."""
    folder = tmp_path_factory.mktemp("browser")
    camera = write_y4m(folder / "camera.y4m", [astronaut_rgb] * CAMERA_FPS, CAMERA_FPS)
    fake_camera = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
    ]
    running = Browser(folder / "profile", fake_camera)
    yield running
    running.close()


def enter_key(tab: Tab, key: str) -> None:
    tab.evaluate("document.getElementById('key-input').focus()")
    tab.type_text(key)
    tab.evaluate("document.getElementById('key-submit').click()")


def open_page(browser: Browser, server: RunningServer, path: str = "/", width_px: int = 1200) -> Tab:
    """A new tab on the page, past the key prompt, with the served models read."""
    tab = browser.new_tab(width_px)
    tab.goto(server.rest_url + path)
    tab.wait_for("document.getElementById('key-dialog').open")
    enter_key(tab, API_KEY)
    tab.wait_for("document.body.dataset.ready === 'true'")
    return tab


def assert_only_this_server(tab: Tab, server: RunningServer) -> None:
    origin = urlsplit(server.rest_url)
    urls = [url for _, url in tab.requests()]
    assert urls
    for url in urls:
        parts = urlsplit(url.removeprefix("blob:"))
        assert parts.scheme == "data" or (parts.scheme, parts.netloc) == (origin.scheme, origin.netloc), url


@pytest.fixture(scope="module")
def page(browser, server) -> Tab:
    """The page at ``/``, key given: the image and video tests share it."""
    return open_page(browser, server)


def analysed(tab: Tab, selector: str, path: Path, answer_id: str, drop: bool = False) -> dict:
    """Choose ``path`` in the file input ``selector``, or drop it on the drop zone around that input; the
    answer the page shows (its JSON panel)."""
    tab.evaluate(f"document.getElementById('{answer_id}').textContent = ''")
    if drop:
        tab.drop_files(f".dropzone:has({selector})", path)
    else:
        tab.choose_files(selector, path)
    return json.loads(tab.wait_for(f"document.getElementById('{answer_id}').textContent"))


def test_the_page_is_served_at_root_and_ui_with_a_strict_csp(server) -> None:
    for path in ("/", "/ui", "/ui/static/js/main.js", "/ui/static/style.css"):
        response = httpx.get(server.rest_url + path)
        assert response.status_code == 200, path
        policy = response.headers["content-security-policy"]
        assert policy == PAGE_HEADERS["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    assert httpx.get(server.rest_url + "/ui/static/js/main.js").headers["content-type"].startswith("text/javascript")
    api = httpx.get(server.rest_url + "/v1/models", headers={"x-api-key": API_KEY})
    assert api.status_code == 200 and "content-security-policy" not in api.headers
    assert "/ui" not in httpx.get(server.rest_url + "/openapi.json").json()["paths"]


def test_the_page_asks_for_the_key_and_keeps_it_in_the_tab_memory_only(browser, server, screenshots) -> None:
    tab = browser.new_tab()
    tab.goto(server.rest_url + "/ui")
    tab.wait_for("document.getElementById('key-dialog').open")
    assert tab.evaluate("document.getElementById('key-why').dataset.reason") == "missing_api_key"
    enter_key(tab, "not-the-key")
    tab.wait_for("document.getElementById('key-why').dataset.reason === 'invalid_api_key'")
    assert tab.evaluate("document.getElementById('key-dialog').open")
    tab.screenshot(screenshots / "web-key.png")
    enter_key(tab, API_KEY)
    tab.wait_for("document.body.dataset.ready === 'true'")
    tasks = tab.evaluate("[...document.querySelectorAll('#task option')].map((o) => o.value)")
    assert tasks == ["deepfake", "liveness"]
    stored = tab.evaluate("[localStorage.length, sessionStorage.length, document.cookie]")
    assert stored == [0, 0, ""]
    assert tab.send("Network.getCookies")["cookies"] == []
    assert tab.evaluate("document.getElementById('key-input').value") == ""
    assert_only_this_server(tab, server)


def test_the_astronaut_gets_one_box_at_her_face_with_its_score(page, server, astronaut_path, screenshots) -> None:
    answer = analysed(page, "#image-file", astronaut_path, "image-json", drop=True)
    with httpx.Client(base_url=server.rest_url, headers={"x-api-key": API_KEY}) as client:
        direct = client.post("/v1/deepfake", files={"file": astronaut_path.read_bytes()}).json()
    assert [face["score"] for face in answer["faces"]] == [face["score"] for face in direct["faces"]]
    [face] = answer["faces"]
    [drawn] = page.evaluate(DRAWN_BOXES_JS % ("image-picture", "image-overlay"))
    assert drawn["box"] == face["box"]
    np.testing.assert_allclose(drawn["drawn"], face["box"], atol=BOX_TOLERANCE_PX)
    assert iou(np.array(drawn["drawn"]), ASTRONAUT_FACE_BOX) >= 0.5
    assert drawn["caption"] == f"{face['label']} {face['score']:.3f}"
    row = page.evaluate("[...document.querySelectorAll('#image-faces tbody td')].map((c) => c.textContent)")
    assert row[:3] == [face["label"], f"{face['score']:.3f}", f"{face['threshold']:.3f}"]
    verdict = page.evaluate("document.getElementById('image-verdict').textContent")
    assert f"{answer['verdict']['label']} {answer['verdict']['score']:.3f}" in verdict
    # The default deepfake model is a demo: the page says so plainly.
    assert answer["model"]["demo"] is True
    assert page.evaluate("document.getElementById('demo-banner').hidden") is False
    banner = page.evaluate("document.getElementById('demo-banner').textContent")
    assert "not fit for decisions" in banner and DEMO_DESCRIPTION in banner
    page.screenshot(screenshots / "web-image.png")
    assert_only_this_server(page, server)


def test_a_file_the_api_refuses_gets_its_reason_in_words(page, server, tmp_path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    page.choose_files("#image-file", notes)
    status = page.wait_for("document.querySelector('#image-status.error')?.textContent")
    assert status.startswith("Failed (unsupported_type): ")
    assert_only_this_server(page, server)


def choose_model(tab: Tab, ref: str) -> None:
    tab.evaluate(f"document.getElementById('model').value = '{ref}'")
    tab.evaluate("document.getElementById('model').dispatchEvent(new Event('change', {bubbles: true}))")


def test_the_group_photo_gets_six_boxes_with_the_chosen_model_and_operating_point(
    page, server, group_photo_path, screenshots
) -> None:
    assert page.evaluate("document.getElementById('fpr-row').hidden") is True  # the demo model has no points
    choose_model(page, "tiny-deepfake:1")
    assert page.evaluate("document.getElementById('demo-banner').hidden") is True
    assert page.evaluate("document.getElementById('fpr-value').value") == "0.01"
    page.evaluate("document.getElementById('threshold-fpr').click()")
    answer = analysed(page, "#image-file", group_photo_path, "image-json")
    assert answer["model"] == {"name": "tiny-deepfake", "version": 1, "task": "deepfake", "demo": False}
    assert (answer["threshold"], answer["threshold_source"]) == (0.8, "fpr_1pct")
    drawn = page.evaluate(DRAWN_BOXES_JS % ("image-picture", "image-overlay"))
    assert [d["box"] for d in drawn] == [face["box"] for face in answer["faces"]]
    for shown, face in zip(drawn, answer["faces"], strict=True):
        np.testing.assert_allclose(shown["drawn"], face["box"], atol=BOX_TOLERANCE_PX)
    assert_group_faces([d["drawn"] for d in drawn])
    unjudged = [face for face in answer["faces"] if face.get("judged") is False]
    assert len(unjudged) == len(answer["faces"]) - MAX_FACES
    assert [d["caption"] for d in drawn if d["caption"].startswith("not judged")] == ["not judged: face_limit"] * 2
    notes = page.evaluate("[...document.querySelectorAll('#image-faces tbody tr')].map((r) => r.lastChild.textContent)")
    assert notes.count("face_limit") == len(unjudged)
    page.screenshot(screenshots / "web-group.png")
    page.evaluate("document.getElementById('threshold-default').click()")
    choose_model(page, "")
    assert_only_this_server(page, server)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory, astronaut_rgb) -> Path:
    """2 s of WebM (VP8, which Chromium plays) at 5 fps: the astronaut brightening, then a face-free picture."""
    faces = [np.clip(astronaut_rgb * (0.6 + 0.08 * k), 0, 255).astype(np.uint8) for k in range(6)]
    coffee = np.asarray(Image.fromarray(skdata.coffee()).resize(astronaut_rgb.shape[1::-1]))
    path = tmp_path_factory.mktemp("video") / "clip.webm"
    path.write_bytes(make_video(faces + [coffee] * 4, "webm", "libvpx"))
    return path


def test_a_video_gets_a_timeline_per_track_whose_points_show_their_frames(page, server, clip_path, screenshots) -> None:
    # A threshold at the verdict's score (the most suspicious track's highest smoothed score): that
    # track has a segment to shade.
    with httpx.Client(base_url=server.rest_url, headers={"x-api-key": API_KEY}, timeout=60) as client:
        sampling = {"max_frames": MAX_VIDEO_FRAMES}
        direct = client.post("/v1/deepfake", data=sampling, files={"file": clip_path.read_bytes()}).json()
    threshold = math.floor(direct["verdict"]["score"] * 1000) / 1000
    page.evaluate("document.getElementById('tab-video').click()")
    page.evaluate("document.getElementById('threshold-custom').click()")
    page.evaluate(f"document.getElementById('threshold-value').value = '{threshold}'")
    page.evaluate(f"document.getElementById('video-frames').value = '{MAX_VIDEO_FRAMES}'")
    answer = analysed(page, "#video-file", clip_path, "video-json")
    assert (answer["threshold"], answer["threshold_source"]) == (threshold, "request")
    judged = [frame for frame in answer["frames"] if any(face.get("score") is not None for face in frame["faces"])]
    assert 0 < len(judged) < len(answer["frames"]) == MAX_VIDEO_FRAMES
    # Uploaded as a job, its progress polled until it succeeded.
    calls = page.requests()
    assert [url for method, url in calls if method == "POST"].count(server.rest_url + "/v1/jobs") == 1
    assert any(method == "GET" and "/v1/jobs/" in url for method, url in calls)
    assert page.evaluate("document.getElementById('video-progress-row').hidden") is False
    progress = page.evaluate("document.getElementById('video-progress-text').textContent")
    assert progress == f"succeeded: {MAX_VIDEO_FRAMES} of {MAX_VIDEO_FRAMES} frames"
    plots = page.evaluate(
        """[...document.querySelectorAll('#video-timelines .timeline')].map((figure) => ({
             track: figure.dataset.trackId,
             points: [...figure.querySelectorAll('.point')].map((p) => Number(p.dataset.index)),
             segments: [...figure.querySelectorAll('.segment')]
               .map((s) => [Number(s.dataset.start), Number(s.dataset.end)]),
           }))"""
    )
    tracks = answer["tracks"]
    assert plots == [
        {
            "track": str(track["track_id"]),
            "points": [point["index"] for point in track["frames"]],
            "segments": [[segment["start_s"], segment["end_s"]] for segment in track["segments"]],
        }
        for track in tracks
    ]
    assert any(plot["segments"] for plot in plots)
    assert page.evaluate("document.querySelectorAll('#video-timelines .threshold').length") == len(plots)
    verdict = page.evaluate("document.getElementById('video-verdict').textContent")
    assert f"{answer['verdict']['label']} {answer['verdict']['score']:.3f}" in verdict
    assert f"most suspicious: face track {answer['verdict']['track_id']}" in verdict
    # Choosing a point (by keyboard) shows that frame with its boxes.
    chosen = judged[-1]
    page.evaluate(f"document.querySelector('.timeline .point[data-index=\"{chosen['index']}\"]').focus()")
    page.press("Enter")
    page.wait_for(f"document.getElementById('video-overlay').dataset.frame === '{chosen['index']}'")
    assert page.evaluate("document.getElementById('video-player').currentTime") == pytest.approx(chosen["time_s"])
    drawn = page.evaluate(DRAWN_BOXES_JS % ("video-player", "video-overlay"))
    assert [d["box"] for d in drawn] == [face["box"] for face in chosen["faces"]]
    for shown, face in zip(drawn, chosen["faces"], strict=True):
        np.testing.assert_allclose(shown["drawn"], face["box"], atol=BOX_TOLERANCE_PX)
    page.screenshot(screenshots / "web-video.png")
    page.evaluate("document.getElementById('threshold-default').click()")
    page.evaluate("document.getElementById('threshold-value').value = '0.5'")
    assert_only_this_server(page, server)


def test_a_running_video_job_can_be_cancelled(page, server, tmp_path, astronaut_rgb) -> None:
    frames = [np.roll(astronaut_rgb, shift, axis=1) for shift in range(LONG_CLIP_FRAMES)]
    path = tmp_path / "long.webm"
    path.write_bytes(make_video(frames, "webm", "libvpx", fps=25))
    page.evaluate("document.getElementById('tab-video').click()")
    page.evaluate(f"document.getElementById('video-frames').value = '{LONG_CLIP_FRAMES}'")
    page.choose_files("#video-file", path)
    page.wait_for("document.getElementById('video-progress-text').textContent.startsWith('running')")
    page.evaluate("document.getElementById('video-cancel').click()")
    status = page.wait_for("document.querySelector('#video-status.error')?.textContent")
    assert status == "Failed (cancelled): the job was cancelled"
    done, total = map(
        int,
        re.fullmatch(
            r"cancelled: (\d+) of (\d+) frames",
            page.evaluate("document.getElementById('video-progress-text').textContent"),
        ).groups(),
    )
    assert done < total == LONG_CLIP_FRAMES
    [(_, job)] = [(method, url) for method, url in page.requests() if method == "DELETE"]
    assert job.startswith(server.rest_url + "/v1/jobs/")
    page.evaluate("document.getElementById('video-frames').value = ''")
    assert_only_this_server(page, server)


def test_a_fake_camera_gets_live_boxes_and_a_running_aggregate(browser, server, screenshots) -> None:
    tab = open_page(browser, server)
    tab.evaluate("document.getElementById('tab-webcam').click()")
    tab.evaluate("document.getElementById('webcam-start').click()")
    tab.wait_for("Number(document.getElementById('webcam-frames').textContent) >= 3")
    drawn = tab.evaluate(DRAWN_BOXES_JS % ("webcam-video", "webcam-overlay"))
    assert len(drawn) == 1
    assert iou(np.array(drawn[0]["box"]), ASTRONAUT_FACE_BOX) >= 0.5  # the frames go at the camera's 512x512
    np.testing.assert_allclose(drawn[0]["drawn"], drawn[0]["box"], atol=BOX_TOLERANCE_PX)
    assert tab.evaluate("document.getElementById('webcam-fps').textContent").endswith(" frames/s")
    aggregate = tab.evaluate("document.getElementById('webcam-aggregate').textContent")
    assert " over " in aggregate and aggregate.split()[0] in ("fake", "real")
    tab.screenshot(screenshots / "web-webcam.png")
    tab.evaluate("document.getElementById('webcam-stop').click()")
    assert tab.evaluate("document.getElementById('webcam-video').srcObject") is None
    assert_only_this_server(tab, server)


def test_the_page_fits_a_phone_and_works_by_keyboard(browser, server, screenshots) -> None:
    tab = open_page(browser, server, width_px=PHONE_WIDTH_PX)
    assert tab.evaluate("document.documentElement.scrollWidth") <= PHONE_WIDTH_PX
    unlabelled = tab.evaluate(
        """[...document.querySelectorAll('input, select, button')]
             .filter((c) => !(c.labels && c.labels.length) && !c.textContent.trim() && !c.getAttribute('aria-label'))
             .map((c) => c.outerHTML)"""
    )
    assert unlabelled == []
    assert tab.evaluate(LOW_CONTRAST_JS) == []
    tab.evaluate("document.getElementById('tab-image').focus()")
    tab.press("ArrowRight")
    assert tab.evaluate("document.activeElement.id") == "tab-video"
    hidden = tab.evaluate("['view-image', 'view-video'].map((id) => document.getElementById(id).hidden)")
    assert hidden == [True, False]
    tab.screenshot(screenshots / "web-phone.png")
    assert_only_this_server(tab, server)


EVIDENCE_BOXES = ("evidence-heatmap", "evidence-robustness", "evidence-audit")


def test_evidence_the_heatmap_on_the_face_crop_the_probes_and_the_audit(
    page, server, astronaut_path, screenshots
) -> None:
    page.evaluate("document.getElementById('tab-image').click()")
    for box in EVIDENCE_BOXES:
        page.evaluate(f"document.getElementById('{box}').click()")
    answer = analysed(page, "#image-file", astronaut_path, "image-json")
    [face] = answer["faces"]
    heatmap = face["evidence"]["heatmap"]
    drawn = page.evaluate(
        """[...document.querySelectorAll('#image-overlay .heatmap')].map((image) => ({
             href: image.getAttribute('href'),
             box: ['x', 'y', 'width', 'height'].map((name) => Number(image.getAttribute(name))),
             shown: image.getBBox().width > 0,
           }))"""
    )
    x1, y1, x2, y2 = heatmap["box"]
    png = f"data:image/png;base64,{heatmap['png']}"
    assert drawn == [{"href": png, "box": [x1, y1, x2 - x1, y2 - y1], "shown": True}]
    robustness = face["evidence"]["robustness"]
    note = page.evaluate("document.querySelector('#image-faces tbody tr').lastChild.textContent")
    probes = ", ".join(f"{name} {value:.3f}" for name, value in robustness["probes"].items())
    assert note == f"{'fragile' if robustness['fragile'] else 'robust'} ({probes})"
    audit = page.evaluate("document.getElementById('image-audit').textContent")
    assert answer["audit"]["input_sha256"] == hashlib.sha256(astronaut_path.read_bytes()).hexdigest()
    assert f"upload SHA-256 {answer['audit']['input_sha256']}" in audit
    page.screenshot(screenshots / "web-evidence.png")
    for box in EVIDENCE_BOXES:
        page.evaluate(f"document.getElementById('{box}').click()")
    assert page.evaluate("document.querySelectorAll('#image-overlay .heatmap').length") == 0
    assert_only_this_server(page, server)
