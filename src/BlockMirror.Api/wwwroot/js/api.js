// The REST contract (docs/api.md) over fetch. Every non-2xx answer becomes an ApiError carrying the
// RFC 9457 problem document, so the page can show its title, detail and code.

const BASE = '/api/v1';
const KEY_STORAGE = 'blockmirror.apiKey';

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || '';
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export async function api(method, path, body) {
  const headers = { Accept: 'application/json, application/problem+json' };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(BASE + path, init);
  } catch (e) {
    throw new ApiError(0, { title: 'Service unreachable', detail: String(e.message || e), code: 'network-error' });
  }
  const text = await response.text();
  let doc = null;
  if (text) {
    try {
      doc = JSON.parse(text);
    } catch {
      doc = null;
    }
  }
  if (!response.ok) {
    throw new ApiError(response.status, doc && typeof doc === 'object'
      ? doc
      : { title: response.statusText || `HTTP ${response.status}`, detail: text, status: response.status });
  }
  return doc;
}

/** A path segment: names are [A-Za-z0-9._:-] but escape anyway, the page must not build odd URLs. */
export const seg = (s) => encodeURIComponent(s);
