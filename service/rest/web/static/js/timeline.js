// The timeline of a video answer: per face track, its score over time, the threshold line and the
// suspicious segments shaded. Points are buttons (mouse, Enter or Space): choosing one shows that frame.
//
// Tracks, their frames and segments are the answer's ``tracks`` (docs/api.md, "Tracks").

import * as format from './format.js';

const SVG_NS = 'http://www.w3.org/2000/svg';
const WIDTH = 640; // viewBox units; the plot scales to the page's width
const HEIGHT = 190;
const PAD = { left: 42, right: 14, top: 12, bottom: 30 };
const POINT_RADIUS = 6;

function svgElement(name, attributes = {}) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

/** A segment's times in words: "0.8–1.6 s", or "at 0.8 s" for one frame. */
function timeSpan(segment) {
  return segment.start_s === segment.end_s ? `at ${segment.start_s} s` : `${segment.start_s}–${segment.end_s} s`;
}

/** The answer's face tracks, titled. */
export function tracksOf(answer) {
  return answer.tracks.map((track) => ({ ...track, title: `Face track ${track.track_id}` }));
}

/** A <figure> with the plot of ``track``; ``onPick(point, track)`` when a point is chosen. */
export function plotTrack(track, threshold, durationS, onPick) {
  const span = Math.max(durationS, ...track.frames.map((point) => point.time_s), 1e-6);
  const x = (t) => PAD.left + (t / span) * (WIDTH - PAD.left - PAD.right);
  const y = (s) => PAD.top + (1 - s) * (HEIGHT - PAD.top - PAD.bottom);
  const figure = document.createElement('figure');
  figure.className = 'timeline';
  figure.dataset.trackId = track.track_id ?? '';
  const svg = svgElement('svg', { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: 'group' });
  svg.setAttribute('aria-label', `${track.title}: score over time; each point is a button that shows its frame`);

  for (const segment of track.segments ?? []) {
    const left = x(segment.start_s) - POINT_RADIUS; // around its points: a one-frame segment shows too
    const shade = svgElement('rect', {
      class: 'segment', x: left, y: PAD.top, width: x(segment.end_s) + POINT_RADIUS - left,
      height: HEIGHT - PAD.top - PAD.bottom, 'data-start': segment.start_s, 'data-end': segment.end_s,
    });
    const tip = svgElement('title');
    tip.textContent = `suspicious ${timeSpan(segment)}, peak ${format.score(segment.peak_score)}`;
    shade.append(tip);
    svg.append(shade);
  }
  svg.append(
    svgElement('line', { class: 'axis', x1: PAD.left, y1: y(0), x2: WIDTH - PAD.right, y2: y(0) }),
    svgElement('line', { class: 'axis', x1: PAD.left, y1: y(0), x2: PAD.left, y2: y(1) }),
  );
  const labels = [
    [PAD.left - 6, y(1) + 4, '1', 'end'], [PAD.left - 6, y(0) + 4, '0', 'end'],
    [PAD.left, HEIGHT - 8, '0 s', 'start'], [WIDTH - PAD.right, HEIGHT - 8, `${span.toFixed(1)} s`, 'end'],
    [WIDTH - PAD.right - 4, y(threshold) - 5, `threshold ${format.score(threshold)}`, 'end'],
  ];
  for (const [lx, ly, words, anchor] of labels) {
    const text = svgElement('text', { class: 'axis-label', x: lx, y: ly, 'text-anchor': anchor });
    text.textContent = words;
    svg.append(text);
  }
  svg.append(svgElement('line', {
    class: 'threshold', x1: PAD.left, y1: y(threshold), x2: WIDTH - PAD.right, y2: y(threshold),
  }));
  svg.append(svgElement('polyline', {
    class: 'line', points: track.frames.map((point) => `${x(point.time_s)},${y(point.score)}`).join(' '),
  }));
  for (const point of track.frames) {
    const dot = svgElement('circle', {
      class: `point ${format.kind(point, threshold)}`, cx: x(point.time_s), cy: y(point.score), r: POINT_RADIUS,
      tabindex: 0, role: 'button', 'data-index': point.index, 'data-time': point.time_s,
      'aria-label': `frame ${point.index} at ${point.time_s} s: score ${format.score(point.score)}`,
    });
    const choose = () => {
      figure.ownerDocument.querySelectorAll('.timeline .point.chosen').forEach((c) => c.classList.remove('chosen'));
      dot.classList.add('chosen');
      onPick(point, track);
    };
    dot.addEventListener('click', choose);
    dot.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        choose();
      }
    });
    svg.append(dot);
  }
  const caption = document.createElement('figcaption');
  const segments = (track.segments ?? [])
    .map((s) => `${timeSpan(s)} (peak ${format.score(s.peak_score)})`).join(', ');
  caption.textContent = `${track.title}: ${track.label} (peak ${format.score(track.peak_score)}, mean `
    + `${format.score(track.score)} over ${track.frames.length} frame(s)). Suspicious segments: ${segments || 'none'}.`;
  figure.append(svg, caption);
  return figure;
}
