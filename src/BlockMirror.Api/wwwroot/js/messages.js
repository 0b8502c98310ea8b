// The message area: API problems (title, detail, code, validation errors) and local input errors.
import { ApiError } from './api.js';
import { h } from './dom.js';

const MAX_MESSAGES = 5;

export function showError(error) {
  const problem = error instanceof ApiError
    ? error.problem
    : { title: 'Invalid input', detail: String(error?.message ?? error) };
  const details = [];
  if (problem.errors && typeof problem.errors === 'object') {
    for (const [field, list] of Object.entries(problem.errors)) {
      details.push(h('li', {}, `${field}: ${[].concat(list).join(' ')}`));
    }
  }
  if (problem.actionIndex != null) details.push(h('li', {}, `action #${problem.actionIndex}`));
  add('error', problem.title || 'Error', problem.detail, problem.code, details);
}

export function showInfo(title, detail) {
  add('info', title, detail, null, []);
}

function add(kind, title, detail, code, details) {
  const area = document.getElementById('messages');
  const message = h('div', { class: `message ${kind}`, 'data-testid': 'message', role: kind === 'error' ? 'alert' : 'status' },
    h('div', { class: 'text' },
      h('span', { class: 'title', 'data-testid': 'message-title' }, title),
      code ? h('span', { class: 'code', 'data-testid': 'message-code' }, code) : null,
      detail ? h('div', { class: 'detail', 'data-testid': 'message-detail' }, detail) : null,
      details.length ? h('ul', {}, details) : null),
    h('button', { type: 'button', title: 'Dismiss', 'aria-label': 'Dismiss', 'data-testid': 'message-close', onclick: () => message.remove() }, '×'));
  area.prepend(message);
  while (area.children.length > MAX_MESSAGES) area.lastElementChild.remove();
}
