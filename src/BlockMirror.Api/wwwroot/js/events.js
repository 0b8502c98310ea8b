// The event stream as a list a person reads: local time, the event's name and what it says about
// which job, newest first. Events carry a timestamp (UTC) from the service.
import { h } from './dom.js';
import { formatBytes, formatClock, formatTime } from './format.js';

const MAX_EVENTS = 200;

export const JOB_EVENTS = ['JOB_STATUS_CHANGE', 'BLOCK_JOB_READY', 'BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED',
  'BLOCK_JOB_PENDING', 'BLOCK_JOB_ERROR'];

/** One sentence per event, from its data (QEMU's members). */
export function describe(name, d) {
  const at = d.len != null ? ` at ${formatBytes(d.offset)} of ${formatBytes(d.len)}` : '';
  switch (name) {
    // 'null' is QEMU's status of a job that left the list (dismissed).
    case 'JOB_STATUS_CHANGE': return d.status === 'null' ? `${d.id} was dismissed (status null)` : `${d.id} is now ${d.status}`;
    case 'BLOCK_JOB_READY': return `${d.id} is ready: ${formatBytes(d.len)} in sync, complete or cancel it`;
    case 'BLOCK_JOB_COMPLETED': return d.error ? `${d.id} failed${at}: ${d.error}` : `${d.id} completed${at}`;
    case 'BLOCK_JOB_CANCELLED': return `${d.id} was cancelled${at}`;
    case 'BLOCK_JOB_PENDING': return `${d.id} is pending: waiting for finalize`;
    case 'BLOCK_JOB_ERROR': return `${d.id}: I/O error on ${d.operation}, action ${d.action}`;
    default: return JSON.stringify(d);
  }
}

const kind = (name, d) => {
  if (name === 'BLOCK_JOB_ERROR' || (name === 'BLOCK_JOB_COMPLETED' && d.error)) return 'bad';
  if (name === 'BLOCK_JOB_READY' || name === 'BLOCK_JOB_COMPLETED') return 'good';
  if (name === 'BLOCK_JOB_CANCELLED' || name === 'BLOCK_JOB_PENDING') return 'warn';
  return '';
};

/** Adds an event (an EventSource MessageEvent) on top of the list. */
export function addEvent(name, message) {
  let data;
  try {
    data = JSON.parse(message.data);
  } catch {
    data = { raw: message.data };
  }
  const log = document.getElementById('event-log');
  const time = data.timestamp;
  log.prepend(h('li', { 'data-testid': 'event', 'data-event': name, 'data-id': message.lastEventId, 'data-job': data.id ?? '' },
    h('time', { datetime: time ?? '', title: time ? `${formatTime(time)} (${time})` : 'no timestamp', 'data-testid': 'event-time' }, formatClock(time)),
    h('span', { class: `badge ${kind(name, data)}`, 'data-testid': 'event-name' }, name),
    h('span', { class: 'text', 'data-testid': 'event-text' }, describe(name, data)),
    h('span', { class: 'muted id' }, `#${message.lastEventId}`)));
  while (log.children.length > MAX_EVENTS) log.lastElementChild.remove();
}
