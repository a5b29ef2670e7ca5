// The video view: a video dropped or chosen is uploaded as a job (POST /v1/jobs, then GET
// /v1/jobs/{id} until it ends, with its progress; Cancel is DELETE /v1/jobs/{id}), so a long video
// needs no open request and gets the job limits (docs/api.md, "Jobs"). The answer gives the video
// verdict and a timeline per face track; choosing a point on a timeline shows that frame of the video
// with its boxes, the chosen track's face bold.

import { ApiError, request, uploadForm } from './api.js';
import * as format from './format.js';
import { drawFaces } from './overlay.js';
import { plotTrack, tracksOf } from './timeline.js';
import { dropZone, errorMessage, setStatus } from './ui.js';

const POLL_INTERVAL_MS = 400; // between job polls: progress moves visibly, a few requests a second at most
const ENDED = new Set(['succeeded', 'failed', 'cancelled']);

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

export function videoView(root, choices, showModel) {
  const status = root.querySelector('#video-status');
  const result = root.querySelector('#video-result');
  const player = root.querySelector('#video-player');
  const overlay = root.querySelector('#video-overlay');
  const progressRow = root.querySelector('#video-progress-row');
  const progress = root.querySelector('#video-progress');
  const progressText = root.querySelector('#video-progress-text');
  const cancel = root.querySelector('#video-cancel');
  let jobId = null;
  let shown = null;

  function showProgress(job) {
    const done = job.progress?.frames_done ?? 0;
    const total = job.progress?.frames_total ?? 0;
    progress.max = Math.max(total, 1);
    progress.value = done;
    progressText.textContent = total ? `${job.status}: ${done} of ${total} frames` : job.status;
  }

  /** The finished job's answer; ApiError when it failed or was cancelled. */
  async function asJob(task, file, params) {
    let job = await request('/v1/jobs', { method: 'POST', body: uploadForm(file, { ...params, task }) });
    jobId = job.job_id;
    progressRow.hidden = false;
    cancel.disabled = false;
    try {
      while (!ENDED.has(job.status)) {
        showProgress(job);
        await sleep(POLL_INTERVAL_MS);
        job = await request(`/v1/jobs/${encodeURIComponent(job.job_id)}`);
      }
      showProgress(job);
    } finally {
      jobId = null;
      cancel.disabled = true;
    }
    if (job.status !== 'succeeded') {
      throw new ApiError(0, job.error?.reason ?? job.status, job.error?.message ?? `the job was ${job.status}`);
    }
    return job.result;
  }

  async function run(file) {
    const task = choices.taskName();
    const params = choices.params();
    const frames = root.querySelector('#video-frames').value;
    if (frames) params.max_frames = frames;
    result.hidden = true;
    progressRow.hidden = true;
    setStatus(status, `Uploading ${file.name}…`);
    if (player.src) URL.revokeObjectURL(player.src);
    player.src = URL.createObjectURL(file);
    try {
      const answer = await asJob(task, file, params);
      shown = answer;
      showModel(answer.model);
      render(answer);
      setStatus(status, `${answer.frames.length} frame(s) analysed in ${answer.timing_ms.total} ms.`);
    } catch (error) {
      setStatus(status, errorMessage(error), true);
    }
  }

  function render(answer) {
    format.verdict(root.querySelector('#video-verdict'), 'Video verdict', answer);
    if (answer.verdict.track_id !== null) {
      root.querySelector('#video-verdict').append(` (most suspicious: face track ${answer.verdict.track_id})`);
    }
    const tracks = tracksOf(answer);
    const duration = Math.max(0, ...answer.frames.map((frame) => frame.time_s));
    const timelines = root.querySelector('#video-timelines');
    timelines.replaceChildren(...tracks.map((track) => plotTrack(track, answer.threshold, duration, showFrame)));
    if (!tracks.length) timelines.textContent = 'No face was judged in the sampled frames.';
    root.querySelector('#video-json').textContent = JSON.stringify(answer, null, 2);
    overlay.replaceChildren();
    result.hidden = false;
  }

  async function showFrame(point, track) {
    const frame = shown.frames.find((candidate) => candidate.index === point.index);
    const caption = root.querySelector('#video-frame-caption');
    if (player.readyState >= 1) {
      const seeked = new Promise((resolve) => player.addEventListener('seeked', resolve, { once: true }));
      player.currentTime = point.time_s;
      await seeked;
    }
    const width = player.videoWidth || Math.max(...frame.faces.map((face) => face.box[2]));
    const height = player.videoHeight || Math.max(...frame.faces.map((face) => face.box[3]));
    const dim = (face) => face.track_id !== track.track_id; // the chosen track's face stands out
    drawFaces(overlay, width, height, frame.faces, shown.threshold, { dim, heatmaps: choices.heatmap.checked });
    overlay.dataset.frame = point.index;
    caption.textContent = `Frame ${point.index} at ${point.time_s} s: ${frame.faces.length} face(s)`
      + `${player.videoWidth ? '' : ' (this browser cannot show the video itself)'}.`;
  }

  cancel.addEventListener('click', async () => {
    if (jobId === null) return;
    try {
      await request(`/v1/jobs/${encodeURIComponent(jobId)}`, { method: 'DELETE' });
    } catch (error) {
      setStatus(status, errorMessage(error), true);
    }
  });
  dropZone(root.querySelector('.dropzone'), root.querySelector('#video-file'), run);
}
