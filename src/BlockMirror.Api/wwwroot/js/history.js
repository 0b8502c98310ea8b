// Finished jobs (GET /api/v1/jobs?include=history): every concluded job the database keeps, also
// after dismissal and across restarts, newest first, paged with the answer's `next` cursor.
import { api } from './api.js';
import { h, reconcile, setText } from './dom.js';
import { formatBytes, formatDuration, formatTime } from './format.js';
import { nodeHref } from './nodes.js';

const PAGE = 20;

const state = { items: [], next: null, pages: 1 };

export function initHistory(ctx) {
  const more = document.getElementById('history-more');
  more.addEventListener('click', (e) => ctx.act(async () => {
    const page = await api('GET', `/jobs?include=history&limit=${PAGE}&after=${encodeURIComponent(state.next)}`);
    state.items = [...state.items, ...page.items];
    state.next = page.next;
    state.pages++;
    render();
  }, e.currentTarget));
}

/** Reloads the pages already shown (a job that just finished goes on top). */
export async function refreshHistory() {
  const page = await api('GET', `/jobs?include=history&limit=${Math.min(500, PAGE * state.pages)}`);
  state.items = page.items;
  state.next = page.next;
  render();
}

/** The outcome as a person says it: "cancelled (soft)" is a point-in-time copy, not a failure. */
export function outcomeText(job) {
  if (!job.outcome) return 'unknown';
  return job.cancelMode ? `${job.outcome} (${job.cancelMode})` : job.outcome;
}

function render() {
  document.getElementById('history-empty').hidden = state.items.length > 0;
  document.getElementById('history-more').hidden = !state.next;
  reconcile(document.getElementById('history-body'), state.items, (j) => `${j.id}\u0000${j.createdAt}`, createRow, updateRow);
}

function createRow(job) {
  const td = (col, cls) => h('td', { 'data-col': col, class: cls });
  return h('tr', { 'data-testid': 'history-row', 'data-job': job.id },
    td('id', 'mono'), td('route'), td('outcome'), td('started'), td('finished'),
    td('duration', 'num'), td('copied', 'num'), td('error'));
}

function updateRow(tr, job) {
  const col = (c) => tr.querySelector(`[data-col="${c}"]`);
  setText(col('id'), job.id);
  const route = col('route');
  if (!route.childElementCount) {
    route.replaceChildren(h('a', { href: nodeHref(job.device) }, job.device), ' → ', job.target ?? '—');
  }
  const outcome = outcomeText(job);
  const cls = job.outcome === 'completed' ? 'good' : job.outcome === 'failed' ? 'bad' : 'warn';
  if (col('outcome').textContent !== outcome) {
    col('outcome').replaceChildren(h('span', { class: `badge ${cls}`, 'data-testid': 'history-outcome' }, outcome));
  }
  tr.dataset.outcome = job.outcome ?? '';
  tr.dataset.cancelMode = job.cancelMode ?? '';
  setText(col('started'), formatTime(job.createdAt));
  setText(col('finished'), formatTime(job.finishedAt));
  setText(col('duration'), formatDuration(job.durationSeconds));
  col('duration').title = `${job.durationSeconds} s`;
  setText(col('copied'), formatBytes(job.bytesCopied));
  col('copied').title = `${job.bytesCopied} bytes`;
  setText(col('error'), job.error ?? '');
}
