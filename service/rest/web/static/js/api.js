// The public API of the serving host, and nothing else: every request goes to this origin.
//
// The API key, when the server asks for one (401), is held in this module's memory only: never in
// localStorage, sessionStorage or a cookie, so it is gone when the tab is closed or reloaded.
// A 401 asks the person for a key (the callback given to onKeyNeeded) and retries with it.

export class ApiError extends Error {
  constructor(status, reason, message) {
    super(message);
    this.status = status;
    this.reason = reason;
  }
}

const KEY_HEADER = 'x-api-key'; // service/auth.py
let apiKey = null;
let askForKey = async () => null;

/** ``ask(reason, message)`` resolves with a key to try, or null when the person gives up. */
export function onKeyNeeded(ask) {
  askForKey = ask;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch {
    // not the API's JSON error shape
  }
  return { reason: `http_${response.status}`, message: response.statusText || `HTTP ${response.status}` };
}

/** The JSON answer of ``path`` on this origin; ApiError for any non-2xx answer. */
export async function request(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers || {});
    if (apiKey !== null) headers.set(KEY_HEADER, apiKey);
    const response = await fetch(path, { ...options, headers, credentials: 'omit', cache: 'no-store' });
    if (response.status === 401) {
      const error = await errorOf(response);
      const key = await askForKey(error.reason, error.message);
      if (key === null) throw new ApiError(401, error.reason, error.message);
      apiKey = key;
      continue;
    }
    if (!response.ok) {
      const error = await errorOf(response);
      throw new ApiError(response.status, error.reason, error.message);
    }
    return response.json();
  }
}

/** The multipart body of an analysis: the media in ``file`` and each chosen parameter as a form field. */
export function uploadForm(file, params) {
  const body = new FormData();
  body.append('file', file, file.name || 'upload');
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== '') body.append(name, String(value));
  }
  return body;
}

export function analyze(task, file, params) {
  return request(`/v1/${encodeURIComponent(task)}`, { method: 'POST', body: uploadForm(file, params) });
}

export function listModels() {
  return request('/v1/models');
}
