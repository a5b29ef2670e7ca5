// The image view: an image dropped or chosen is sent to POST /v1/{task}; the answer is drawn over
// the image (each face's box, score and label; faces not judged with their reason), with the
// verdict, the faces' table and the answer itself.

import { analyze } from './api.js';
import * as format from './format.js';
import { drawFaces, facesTable } from './overlay.js';
import { dropZone, errorMessage, setStatus } from './ui.js';

export function imageView(root, choices, showModel) {
  const status = root.querySelector('#image-status');
  const result = root.querySelector('#image-result');
  const picture = root.querySelector('#image-picture');
  const overlay = root.querySelector('#image-overlay');
  let shown = null;

  async function run(file) {
    setStatus(status, `Analysing ${file.name}…`);
    try {
      if (picture.src) URL.revokeObjectURL(picture.src);
      picture.src = URL.createObjectURL(file);
      const answer = await analyze(choices.taskName(), file, choices.params()); // the API judges the file first
      await picture.decode();
      shown = answer;
      showModel(answer.model);
      result.hidden = false; // on screen before drawing: captions are sized for the picture's shown size
      draw();
      format.verdict(root.querySelector('#image-verdict'), 'Verdict', answer);
      facesTable(root.querySelector('#image-faces'), answer.faces, answer.threshold);
      const audit = root.querySelector('#image-audit');
      audit.hidden = !answer.audit;
      if (answer.audit) {
        audit.textContent = `Audit: upload SHA-256 ${answer.audit.input_sha256}, model package SHA-256 `
          + `${answer.audit.model.package_sha256}, ${answer.audit.code_version}, ${answer.audit.created_at}.`;
      }
      root.querySelector('#image-json').textContent = JSON.stringify(answer, null, 2);
      const judged = answer.faces.filter((face) => face.score !== null && face.score !== undefined).length;
      setStatus(status, `${answer.faces.length} face(s) found, ${judged} judged, in ${answer.timing_ms.total} ms.`);
    } catch (error) {
      setStatus(status, errorMessage(error), true);
    }
  }

  function draw() {
    if (!shown) return;
    drawFaces(overlay, picture.naturalWidth, picture.naturalHeight, shown.faces, shown.threshold, {
      heatmaps: choices.heatmap.checked,
    });
  }

  dropZone(root.querySelector('.dropzone'), root.querySelector('#image-file'), run);
  choices.heatmap.addEventListener('change', draw);
}
