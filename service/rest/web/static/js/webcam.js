// The webcam view: live frames from getUserMedia, each drawn on a canvas, sent to POST /v1/{task} as
// a JPEG, one request at a time (the next frame goes when the answer is back, so the rate follows
// the server and the network). Each answer's boxes and scores are drawn over the live video, with
// the running aggregate (the mean, over the frames so far, of each frame's most suspicious face)
// and the measured frame rate (answers per second over the last FPS_WINDOW frames) and round trip.

import { analyze } from './api.js';
import * as format from './format.js';
import { drawFaces } from './overlay.js';
import { errorMessage, setStatus } from './ui.js';

const MAX_SIDE_PX = 640; // frames are scaled down to this: enough for faces, small uploads
const JPEG_QUALITY = 0.85;
const FPS_WINDOW = 10; // answers the frame rate is measured over

export function webcamView(root, choices, showModel) {
  const status = root.querySelector('#webcam-status');
  const video = root.querySelector('#webcam-video');
  const overlay = root.querySelector('#webcam-overlay');
  const start = root.querySelector('#webcam-start');
  const stop = root.querySelector('#webcam-stop');
  const canvas = document.createElement('canvas');
  let stream = null;
  let running = false;

  const show = (id, text) => { root.querySelector(id).textContent = text; };

  async function loop() {
    const answered = [];
    const scores = []; // each judged frame's most suspicious face
    while (running) {
      const scale = Math.min(1, MAX_SIDE_PX / Math.max(video.videoWidth, video.videoHeight));
      canvas.width = Math.round(video.videoWidth * scale);
      canvas.height = Math.round(video.videoHeight * scale);
      canvas.getContext('2d').drawImage(video, 0, 0, canvas.width, canvas.height);
      const blob = await new Promise((resolve) => { canvas.toBlob(resolve, 'image/jpeg', JPEG_QUALITY); });
      const sent = performance.now();
      let answer;
      try {
        answer = await analyze(choices.taskName(), new File([blob], 'frame.jpg', { type: 'image/jpeg' }),
          choices.params());
      } catch (error) {
        setStatus(status, errorMessage(error), true);
        halt();
        return;
      }
      if (!running) return;
      const now = performance.now();
      answered.push(now);
      if (answered.length > FPS_WINDOW) answered.shift();
      showModel(answer.model);
      drawFaces(overlay, canvas.width, canvas.height, answer.faces, answer.threshold, {
        heatmaps: choices.heatmap.checked,
      });
      if (answer.verdict.score !== null && answer.verdict.score !== undefined) {
        scores.push(answer.verdict.score);
      }
      const fps = answered.length > 1 ? ((answered.length - 1) * 1000) / (now - answered[0]) : null;
      show('#webcam-fps', fps === null ? '–' : `${fps.toFixed(1)} frames/s`);
      show('#webcam-latency', `${Math.round(now - sent)} ms`);
      show('#webcam-frames', String(scores.length));
      if (scores.length) {
        const mean = scores.reduce((a, b) => a + b, 0) / scores.length;
        const labels = choices.labelsOf(answer.model);
        const aggregate = root.querySelector('#webcam-aggregate');
        aggregate.textContent = `${mean >= answer.threshold ? labels.attack : labels.genuine} `
          + `${format.score(mean)} over ${scores.length} frame(s)`;
        aggregate.className = mean >= answer.threshold ? 'attack' : 'genuine';
      }
      setStatus(status, `Live: ${answer.faces.length} face(s) in the last frame.`);
    }
  }

  function halt() {
    running = false;
    stream?.getTracks().forEach((track) => track.stop());
    stream = null;
    video.srcObject = null;
    start.disabled = false;
    stop.disabled = true;
  }

  start.addEventListener('click', async () => {
    start.disabled = true;
    setStatus(status, 'Asking for the camera…');
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 } }, audio: false });
      video.srcObject = stream;
      await video.play();
    } catch (error) {
      setStatus(status, `No camera: ${error.message}`, true);
      halt();
      return;
    }
    stop.disabled = false;
    running = true;
    loop();
  });
  stop.addEventListener('click', () => {
    halt();
    setStatus(status, 'Stopped.');
  });
}
