// Small helpers every view uses: the drop zone, the status line, and an error in words.

/** A drop zone around a file input: a file dropped on it, or chosen with the input (keyboard and
 * screen readers use the input itself), is handed to ``onFile``. */
export function dropZone(zone, input, onFile) {
  input.addEventListener('change', () => {
    if (input.files.length) onFile(input.files[0]);
  });
  zone.addEventListener('dragover', (event) => {
    event.preventDefault();
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('over');
    if (event.dataTransfer.files.length) onFile(event.dataTransfer.files[0]);
  });
}

/** Show ``message`` in a status line; errors are marked as such (colour and words). */
export function setStatus(element, message, isError = false) {
  element.textContent = message;
  element.classList.toggle('error', isError);
}

export function errorMessage(error) {
  return error.reason ? `Failed (${error.reason}): ${error.message}` : `Failed: ${error.message}`;
}
