// Faces drawn over a picture: an SVG laid over the <img> or <video>, whose viewBox is the picture's
// size in pixels, so each box is drawn at the answer's own coordinates ([x1, y1, x2, y2] in pixels)
// and scales with the picture. Each face is a <g class="face KIND" data-box="x1,y1,x2,y2"> holding a
// <rect class="box">, a caption tag and, when the answer carries one, its heatmap as an <image>.
// Also the faces' table: the same faces in words.

import * as format from './format.js';

const SVG_NS = 'http://www.w3.org/2000/svg';
const TAG_HEIGHT_SCREEN_PX = 20; // a caption's height on screen, whatever the picture's scale: legible, not covering
const UNSHOWN_WIDTH_SCREEN_PX = 600; // the width assumed for a picture not on screen yet (hidden tab)

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

/**
 * Draw ``faces`` on ``svg`` over a picture of ``width`` x ``height`` pixels. ``options.dim`` (a function
 * of the face) draws some faces faint (e.g. other tracks); ``options.heatmaps`` draws evidence heatmaps.
 */
export function drawFaces(svg, width, height, faces, threshold, options = {}) {
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const shownWidth = svg.getBoundingClientRect().width || UNSHOWN_WIDTH_SCREEN_PX;
  const tagHeight = (TAG_HEIGHT_SCREEN_PX * width) / shownWidth; // in the picture's pixels
  faces.forEach((face, index) => {
    const [x1, y1, x2, y2] = face.box;
    const group = svgElement('g', {
      class: `face ${format.kind(face, threshold)}${options.dim?.(face) ? ' dim' : ''}`,
      'data-face': index,
      'data-box': face.box.join(','),
      'data-score': face.score ?? '',
    });
    const heatmap = face.evidence?.heatmap;
    if (options.heatmaps && heatmap?.png) {
      const [hx1, hy1, hx2, hy2] = heatmap.box;
      group.append(svgElement('image', {
        class: 'heatmap', href: `data:image/png;base64,${heatmap.png}`, x: hx1, y: hy1,
        width: hx2 - hx1, height: hy2 - hy1, preserveAspectRatio: 'none',
      }));
    }
    group.append(svgElement('rect', {
      class: 'box', x: x1, y: y1, width: x2 - x1, height: y2 - y1, 'vector-effect': 'non-scaling-stroke',
    }));
    const words = format.caption(face);
    const tagWidth = Math.round(words.length * tagHeight * 0.5 + tagHeight * 0.5);
    const tagY = y1 >= tagHeight ? y1 - tagHeight : y2; // above the box, or below it at the top edge
    const tagX = Math.min(Math.max(0, x1), Math.max(0, width - tagWidth));
    group.append(svgElement('rect', { class: 'tag', x: tagX, y: tagY, width: tagWidth, height: tagHeight }));
    const text = svgElement('text', {
      class: 'caption', x: tagX + tagHeight * 0.25, y: tagY + tagHeight * 0.78, 'font-size': tagHeight * 0.8,
    });
    text.textContent = words;
    group.append(text);
    svg.append(group);
  });
}

/** What the table says of a judged face besides its score: its track, its robustness probes. */
function notes(face) {
  const said = [];
  if (face.track_id !== undefined && face.track_id !== null) said.push(`track ${face.track_id}`);
  const robustness = face.evidence?.robustness;
  if (robustness) {
    const probes = Object.entries(robustness.probes).map(([name, value]) => `${name} ${format.score(value)}`);
    said.push(`${robustness.fragile ? 'fragile' : 'robust'} (${probes.join(', ')})`);
  }
  return said;
}

/** The faces as a table: number, verdict, score, threshold, detection score, box, note. */
export function facesTable(table, faces, threshold) {
  const head = document.createElement('thead');
  head.innerHTML = '<tr><th scope="col">Face</th><th scope="col">Label</th><th scope="col">Score</th>'
    + '<th scope="col">Threshold</th><th scope="col">Detection</th><th scope="col">Box (x1, y1, x2, y2)</th>'
    + '<th scope="col">Note</th></tr>';
  const body = document.createElement('tbody');
  faces.forEach((face, index) => {
    const row = document.createElement('tr');
    row.className = format.kind(face, threshold);
    const judged = face.score !== null && face.score !== undefined;
    const cells = [
      String(index + 1),
      judged ? face.label : 'not judged',
      format.score(face.score),
      format.score(face.threshold),
      format.score(face.detection_score),
      face.box.map((v) => Math.round(v)).join(', '),
      judged ? notes(face).join('; ') : face.reason,
    ];
    cells.forEach((value, column) => {
      const cell = document.createElement(column === 0 ? 'th' : 'td');
      if (column === 0) cell.scope = 'row';
      if (column >= 2 && column <= 4) cell.className = 'num';
      cell.textContent = value ?? '';
      row.append(cell);
    });
    body.append(row);
  });
  const caption = document.createElement('caption');
  caption.className = 'visually-hidden';
  caption.textContent = 'Every detected face';
  table.replaceChildren(caption, head, body);
}
