// The analysis settings: task (whatever /v1/models serves), model version, threshold or target
// false-positive rate (the chosen model's calibrated operating points), and evidence options.
// ``params()`` gives the parameters every analysis request carries (docs/api.md, POST /v1/{task}).

function option(value, text) {
  const element = document.createElement('option');
  element.value = value;
  element.textContent = text;
  return element;
}

export class Choices {
  constructor(form, listing, onChange) {
    this.form = form;
    this.entries = listing.models;
    this.onChange = onChange;
    this.task = form.querySelector('#task');
    this.model = form.querySelector('#model');
    this.thresholdValue = form.querySelector('#threshold-value');
    this.fprValue = form.querySelector('#fpr-value');
    this.heatmap = form.querySelector('#evidence-heatmap');
    const tasks = [...new Set(this.entries.map((entry) => entry.manifest.task))]; // in the listing's order
    this.task.replaceChildren(...tasks.map((task) => option(task, task)));
    this.task.addEventListener('change', () => this.fillModels());
    this.model.addEventListener('change', () => this.fillThresholds());
    this.thresholdValue.addEventListener('input', () => this.pick('threshold'));
    this.fprValue.addEventListener('change', () => this.pick('target_fpr'));
    form.addEventListener('change', () => this.onChange(this.chosenEntry()));
    form.addEventListener('submit', (event) => event.preventDefault());
    this.fillModels();
  }

  pick(mode) {
    this.form.querySelector(`input[name="threshold-mode"][value="${mode}"]`).checked = true;
  }

  fillModels() {
    const task = this.task.value;
    const entries = this.entries.filter((entry) => entry.manifest.task === task);
    const fallback = entries.find((entry) => entry.default_for_task) ?? entries[0];
    this.model.replaceChildren(
      option('', `default (${fallback ? fallback.ref : 'none'})`),
      ...entries.map((entry) => option(entry.ref, `${entry.ref}${entry.manifest.demo ? ' (demo)' : ''}`)),
    );
    this.fillThresholds();
  }

  /** The model a request with these choices gets: the chosen one, or the task's default. */
  chosenEntry() {
    const task = this.task.value;
    const entries = this.entries.filter((entry) => entry.manifest.task === task);
    return entries.find((entry) => entry.ref === this.model.value)
      ?? entries.find((entry) => entry.default_for_task) ?? entries[0] ?? null;
  }

  fillThresholds() {
    const entry = this.chosenEntry();
    const thresholds = entry?.manifest.thresholds;
    this.form.querySelector('#threshold-default-value').textContent = thresholds ? `(${thresholds.default})` : '';
    const points = (thresholds?.operating_points ?? []).filter((point) => point.target_fpr !== null);
    this.fprValue.replaceChildren(...points.map((point) => option(
      String(point.target_fpr), `${point.target_fpr * 100}% (${point.name}, threshold ${point.threshold.toFixed(3)})`,
    )));
    this.form.querySelector('#fpr-row').hidden = points.length === 0; // no calibrated operating point
    if (points.length === 0 && this.form.querySelector('#threshold-fpr').checked) this.pick('default');
    this.onChange(entry);
  }

  /** The chosen task's name. */
  taskName() {
    return this.task.value;
  }

  /** The parameters of an analysis request. */
  params() {
    const mode = this.form.querySelector('input[name="threshold-mode"]:checked').value;
    const params = {};
    if (this.model.value) params.model = this.model.value;
    if (mode === 'threshold') params.threshold = this.thresholdValue.value;
    if (mode === 'target_fpr' && this.fprValue.value) params.target_fpr = this.fprValue.value;
    const evidence = [...this.form.querySelectorAll('input[name="evidence"]:checked')].map((box) => box.value);
    if (evidence.length) params.evidence = evidence.join(',');
    return params;
  }

  /** The manifest's class names for the attack and genuine side of a model reference's threshold. */
  labelsOf(ref) {
    const entry = this.entries.find((candidate) => candidate.ref === `${ref.name}:${ref.version}`);
    const classes = entry?.manifest.classes;
    if (!classes) return { attack: 'above threshold', genuine: 'below threshold' };
    const genuine = classes.names.find((_, index) => index !== classes.attack_index);
    return { attack: classes.names[classes.attack_index], genuine };
  }
}
