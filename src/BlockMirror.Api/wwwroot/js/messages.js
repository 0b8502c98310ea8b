// Where errors are shown. An action's error goes next to the action that caused it: into the
// action-error box of the nearest [data-action-scope] around the button or form (a form, a bitmap,
// a job card), scrolled into view. Only errors that belong to no action use the banner at the top.
import { ApiError } from './api.js';
import { h } from './dom.js';

const MAX_MESSAGES = 5;

/** The problem document of an error: the API's own, or one made up for a local input error. */
function problemOf(error) {
  return error instanceof ApiError
    ? error.problem
    : { title: 'Invalid input', detail: String(error?.message ?? error) };
}

/** Title, code, detail and the fields named in the errors map (and a transaction's actionIndex). */
function renderProblem(problem) {
  const fields = [];
  if (problem.errors && typeof problem.errors === 'object') {
    for (const [field, list] of Object.entries(problem.errors)) {
      fields.push(h('li', {}, h('code', {}, field), ': ', [].concat(list).join(' ')));
    }
  }
  if (problem.actionIndex != null) fields.push(h('li', {}, `action #${problem.actionIndex}`));
  return [
    h('span', { class: 'title', 'data-testid': 'message-title' }, problem.title || 'Error'),
    problem.code ? h('span', { class: 'code', 'data-testid': 'message-code' }, problem.code) : null,
    problem.detail ? h('div', { class: 'detail', 'data-testid': 'message-detail' }, problem.detail) : null,
    fields.length ? h('ul', { 'data-testid': 'message-fields' }, fields) : null,
  ];
}

/** The error box for an action started from origin (a button, a form), or null when there is none. */
export function errorBoxFor(origin) {
  const scope = origin?.closest?.('[data-action-scope]');
  if (!scope) return null;
  // The scope's own box, not one of a nested scope.
  return [...scope.querySelectorAll('[data-testid="action-error"]')]
    .find((box) => box.closest('[data-action-scope]') === scope) ?? null;
}

/** Shows error next to origin (or in the banner when origin has no error box), scrolled into view. */
export function showError(error, origin) {
  const problem = problemOf(error);
  const box = errorBoxFor(origin);
  if (!box) {
    showBanner(problem);
    return;
  }
  box.replaceChildren(
    h('div', { class: 'text' }, renderProblem(problem)),
    h('button', { type: 'button', title: 'Dismiss', 'aria-label': 'Dismiss', onclick: () => clearError(origin) }, '×'));
  box.hidden = false;
  box.setAttribute('role', 'alert');
  box.scrollIntoView({ block: 'nearest' });
}

/** Clears the error box of origin's scope (an action that succeeded supersedes its last error). */
export function clearError(origin) {
  const box = errorBoxFor(origin);
  if (box && !box.hidden) {
    box.hidden = true;
    box.replaceChildren();
  }
}

function showBanner(problem) {
  const area = document.getElementById('messages');
  const message = h('div', { class: 'message error', 'data-testid': 'message', role: 'alert' },
    h('div', { class: 'text' }, renderProblem(problem)),
    h('button', { type: 'button', title: 'Dismiss', 'aria-label': 'Dismiss', 'data-testid': 'message-close', onclick: () => message.remove() }, '×'));
  area.prepend(message);
  while (area.children.length > MAX_MESSAGES) area.lastElementChild.remove();
  message.scrollIntoView({ block: 'nearest' });
}
