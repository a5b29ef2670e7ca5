// How scores, labels and faces are written on the page: one place, so every view says it alike.

export function score(value) {
  return value === null || value === undefined ? '–' : value.toFixed(3);
}

/** "attack", "genuine" or "unjudged": the class that colours a face, a point or a verdict. */
export function kind(item, threshold) {
  if (item.score === null || item.score === undefined) return 'unjudged';
  const limit = item.threshold ?? threshold;
  return limit !== undefined && limit !== null && item.score >= limit ? 'attack' : 'genuine';
}

/** The words drawn next to a face's box. */
export function caption(face) {
  if (face.judged === false || face.score === null || face.score === undefined) {
    return `not judged: ${face.reason ?? 'unknown'}`;
  }
  return `${face.label} ${score(face.score)}`;
}

export function model(ref) {
  return `${ref.name} v${ref.version} (${ref.task})${ref.demo ? ', demo' : ''}`;
}

/** "fake 0.731" or "no verdict: no_face", as a fragment with the kind's colour. */
export function verdict(element, prefix, result) {
  const v = result.verdict;
  element.replaceChildren(`${prefix}: `);
  const span = document.createElement('span');
  if (v.label === null || v.label === undefined) {
    span.className = 'unjudged';
    span.textContent = `no verdict (${v.reason ?? 'no judged face'})`;
  } else {
    span.className = kind(v, result.threshold);
    span.textContent = `${v.label} ${score(v.score)}`;
  }
  element.append(span, ` at threshold ${score(result.threshold)} (${result.threshold_source})`);
}
