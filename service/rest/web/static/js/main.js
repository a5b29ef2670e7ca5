// The page's entry: asks for an API key when the server wants one, reads what the server serves
// (/v1/models), then wires the settings, the three views and their tabs, and keeps
// the model line and the demo banner up to date (a demo model's verdicts are not fit for decisions).

import { listModels, onKeyNeeded } from './api.js';
import { Choices } from './choices.js';
import * as format from './format.js';
import { imageView } from './image.js';
import { setStatus } from './ui.js';
import { videoView } from './video.js';
import { webcamView } from './webcam.js';

const KEY_REASONS = {
  missing_api_key: 'This server requires an API key.',
  invalid_api_key: 'That key was not accepted. Try another.',
};

function askForKey(reason, message) {
  const dialog = document.getElementById('key-dialog');
  const input = document.getElementById('key-input');
  const why = document.getElementById('key-why');
  why.textContent = KEY_REASONS[reason] ?? message;
  why.classList.toggle('error', reason === 'invalid_api_key');
  why.dataset.reason = reason;
  input.value = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      const key = dialog.returnValue === 'ok' && input.value ? input.value : null;
      input.value = ''; // the key lives on in api.js's memory only
      resolve(key);
    }, { once: true });
    dialog.returnValue = '';
    dialog.showModal();
    input.focus();
  });
}

/** The model line and the demo banner, for a model reference ({name, version, task, demo, notice}). */
function showModel(ref) {
  document.getElementById('model-line').textContent = `Model: ${format.model(ref)}`;
  const banner = document.getElementById('demo-banner');
  banner.hidden = !ref.demo;
  document.getElementById('demo-notice').textContent = ref.demo ? (ref.notice ?? '') : '';
}

function tabs() {
  const list = [...document.querySelectorAll('[role="tab"]')];
  const select = (chosen) => {
    for (const tab of list) {
      const selected = tab === chosen;
      tab.setAttribute('aria-selected', String(selected));
      tab.tabIndex = selected ? 0 : -1;
      document.getElementById(tab.getAttribute('aria-controls')).hidden = !selected;
    }
    chosen.focus();
  };
  list.forEach((tab, index) => {
    tab.addEventListener('click', () => select(tab));
    tab.addEventListener('keydown', (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (step) select(list[(index + step + list.length) % list.length]);
      if (event.key === 'Home') select(list[0]);
      if (event.key === 'End') select(list[list.length - 1]);
    });
  });
}

async function start() {
  onKeyNeeded(askForKey);
  tabs();
  const line = document.getElementById('model-line');
  let listing;
  try {
    listing = await listModels();
  } catch (error) {
    setStatus(line, `Cannot read the served models (${error.reason ?? 'error'}): ${error.message}`, true);
    return;
  }
  if (!listing.models.length) {
    setStatus(line, 'This server serves no model.', true);
    return;
  }
  const choices = new Choices(document.getElementById('choices'), listing, (entry) => {
    if (entry) showModel({ ...entry.manifest, notice: entry.manifest.description || undefined });
  });
  imageView(document.getElementById('view-image'), choices, showModel);
  videoView(document.getElementById('view-video'), choices, showModel);
  webcamView(document.getElementById('view-webcam'), choices, showModel);
  document.body.dataset.ready = 'true';
}

start();
