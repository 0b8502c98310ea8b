// Job cards: status, progress, rates, a live chart and the verbs. Used by the jobs view (every
// listed job) and by a node's page (the jobs using that node).
import { api, seg } from './api.js';
import { h, reconcile, setText } from './dom.js';
import { drawChart, SERIES } from './chart.js';
import { formatBytes, formatDuration, formatRate, formatTime, parseSize } from './format.js';

// QEMU's job verb table (job.c JobVerbTable, as src/BlockMirror.Core/Jobs/Job.cs has it): the
// statuses in which each verb is accepted at all.
const MUTABLE = ['created', 'running', 'paused', 'ready', 'standby'];
export const VERBS = {
  cancel: ['created', 'running', 'paused', 'ready', 'standby', 'waiting', 'pending'],
  pause: MUTABLE,
  resume: MUTABLE,
  'set-speed': MUTABLE,
  change: MUTABLE,
  complete: ['ready', 'standby'],
  finalize: ['pending'],
  dismiss: ['concluded'],
};

export const isActive = (job) => job.status !== 'concluded';

/**
 * Which buttons a job offers, and why the others are off. The table says which statuses accept a
 * verb; the pause state narrows it as the service does: pause refuses a job already paused
 * (job-already-paused), resume one that is not (job-not-paused), and a soft cancel refuses a paused
 * job (job-paused: QEMU's qmp_block_job_cancel), so only the force cancel is offered then.
 */
export function verbStates(job) {
  const allowed = (verb) => VERBS[verb].includes(job.status);
  const notIn = (verb) => `Not accepted in status '${job.status}'`;
  const state = (ok, why) => ({ enabled: ok, why: ok ? '' : why });
  return {
    pause: allowed('pause') ? state(!job.paused, 'Already paused') : state(false, notIn('pause')),
    resume: allowed('resume') ? state(job.paused, 'Not paused') : state(false, notIn('resume')),
    complete: state(allowed('complete'), 'Only in ready: wait until the copy is in sync'),
    cancel: allowed('cancel')
      ? state(!job.paused, 'A paused job refuses a soft cancel (job-paused): resume it first, or use Force cancel')
      : state(false, notIn('cancel')),
    force: state(allowed('cancel'), notIn('cancel')),
    finalize: state(allowed('finalize'), 'Only in pending (a job started without auto-finalize)'),
    dismiss: state(allowed('dismiss'), 'Only once concluded (a job started without auto-dismiss)'),
    'set-speed': state(allowed('set-speed'), notIn('set-speed')),
    'write-blocking': allowed('change')
      ? state(job.copyMode === 'background', 'Already write-blocking (the mode cannot go back)')
      : state(false, notIn('change')),
  };
}

/** What a cancel does now, for its tooltip: in ready it keeps a point-in-time copy, elsewhere it aborts. */
const cancelHint = (job) => (job.status === 'ready' || job.status === 'standby'
  ? 'Soft cancel: finish without pivot, the target keeps a point-in-time copy'
  : 'Cancel: outside ready every cancel aborts the job (the device keeps its image)');

export function renderJobs(ctx, container, jobs) {
  reconcile(container, jobs, (j) => `${j.id}\u0000${j.createdAt}`, (j) => createJob(ctx, j), updateJob);
}

/** Redraws the charts in container (the samples were taken by the jobs refresh). */
export function drawCharts(container) {
  for (const canvas of container.querySelectorAll('canvas.job-chart')) drawChart(canvas, canvas.dataset.job);
}

function createJob(ctx, job) {
  const base = `/jobs/${seg(job.id)}`;
  const verb = (name, label, run, cls) => h('button', {
    type: 'button', 'data-testid': `job-${name}`, 'data-verb': name, class: cls,
    onclick: (e) => ctx.act(run, e.currentTarget),
  }, label);
  const speed = h('input', { 'data-testid': 'job-speed', placeholder: 'e.g. 4M', size: 7, title: 'New speed in bytes/s: 0 = unlimited; 4M = 4 MiB/s' });
  const setSpeed = h('button', {
    type: 'button', 'data-testid': 'job-set-speed', 'data-verb': 'set-speed',
    onclick: (e) => ctx.act(async () => {
      await api('PATCH', base, { speed: parseSize(speed.value, 'Speed') ?? 0 });
      speed.value = '';
    }, e.currentTarget),
  }, 'Set speed');
  const stat = (label, role) => h('div', {}, h('dt', {}, label), h('dd', { 'data-role': role, 'data-testid': `job-${role}` }));
  const legend = (key) => h('span', { class: 'legend-item', 'data-testid': `job-legend-${key}` },
    h('i', { style: `background:${SERIES[key].color}` }), SERIES[key].label, ' ', h('b', { 'data-role': `legend-${key}` }));
  return h('article', { class: 'card job', 'data-testid': 'job', 'data-job': job.id, 'data-action-scope': true },
    h('header', {},
      h('h3', { class: 'mono' }, job.id),
      h('span', { class: 'badge', 'data-testid': 'job-status' }),
      h('span', { class: 'badges', 'data-role': 'badges' })),
    h('div', { class: 'route muted', 'data-role': 'route' }),
    h('div', { class: 'progress', 'data-testid': 'job-progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100 },
      h('div', { class: 'bar' }), h('span', { class: 'label' })),
    h('dl', { class: 'stats' },
      stat('copied', 'copied'), stat('remaining', 'remaining'), stat('copy rate', 'copy-rate'),
      stat('dirty rate', 'dirty-rate'), stat('ETA', 'eta'), stat('speed limit', 'speed-limit'),
      stat('started', 'started'), stat('duration', 'duration')),
    h('div', { class: 'chart' },
      h('canvas', { class: 'job-chart', 'data-testid': 'job-chart', 'data-job': job.id, height: 140 }),
      h('div', { class: 'legend' }, legend('progress'), legend('copy'), legend('dirty'))),
    h('p', { class: 'job-error', 'data-testid': 'job-error', hidden: true }),
    h('div', { class: 'actions' },
      verb('pause', 'Pause', () => api('POST', `${base}/pause`)),
      verb('resume', 'Resume', () => api('POST', `${base}/resume`)),
      verb('complete', 'Complete', () => api('POST', `${base}/complete`)),
      verb('cancel', 'Cancel', () => api('POST', `${base}/cancel`, { force: false }), 'danger'),
      verb('force', 'Force cancel', () => api('POST', `${base}/cancel`, { force: true }), 'danger'),
      verb('finalize', 'Finalize', () => api('POST', `${base}/finalize`)),
      verb('dismiss', 'Dismiss', () => api('POST', `${base}/dismiss`)),
      h('span', { class: 'sep' }),
      speed, setSpeed,
      verb('write-blocking', 'Write-blocking', () => api('PATCH', base, { copyMode: 'write-blocking' }))),
    h('div', { class: 'action-error', 'data-testid': 'action-error', hidden: true }));
}

function updateJob(card, job) {
  card.dataset.status = job.status;
  card.dataset.paused = String(job.paused);
  const status = card.querySelector('[data-testid="job-status"]');
  setText(status, job.status);
  status.className = `badge ${statusClass(job)}`;

  // One badge per fact the status does not already say: 'paused' and 'standby' say the job is
  // paused; a pause asked for but not yet in force (requests in flight) shows as 'pausing'.
  const badges = [
    job.paused && job.status !== 'paused' && job.status !== 'standby' && isActive(job) && ['pausing', 'warn'],
    job.activelySynced && ['actively-synced', 'good'],
    job.ioStatus !== 'ok' && [`io: ${job.ioStatus}`, 'bad'],
    job.outcome && [job.cancelMode ? `${job.outcome} (${job.cancelMode})` : job.outcome, job.outcome === 'completed' ? 'good' : (job.outcome === 'failed' ? 'bad' : 'warn')],
  ].filter(Boolean);
  const holder = card.querySelector('[data-role="badges"]');
  const key = badges.map(([t]) => t).join(',');
  if (holder.dataset.badges !== key) {
    holder.replaceChildren(...badges.map(([t, cls]) => h('span', { class: `badge ${cls}`, 'data-testid': `job-badge-${t.split(/[: ]/)[0]}` }, t), ' '));
    holder.dataset.badges = key;
  }

  const route = card.querySelector('[data-role="route"]');
  const routeKey = `${job.device}|${job.target}|${job.sync}|${job.copyMode}|${job.granularity}|${job.bitmap}|${job.bitmapMode}`;
  if (route.dataset.key !== routeKey) {
    const link = (n) => (n ? h('a', { href: `#/nodes/${seg(n)}` }, n) : '—');
    const details = [job.sync && `sync ${job.sync}`, job.copyMode, `granularity ${formatBytes(job.granularity)}`,
      job.bitmap && `bitmap ${job.bitmap} (${job.bitmapMode})`].filter(Boolean).join(' · ');
    route.replaceChildren(link(job.device), ' → ', link(job.target), ` · ${details}`);
    route.dataset.key = routeKey;
  }

  // currentProgress never decreases; totalProgress may move both ways (QEMU's progress).
  const fraction = job.totalProgress > 0 ? Math.min(1, job.currentProgress / job.totalProgress) : (job.ready ? 1 : 0);
  const progress = card.querySelector('[data-testid="job-progress"]');
  progress.dataset.progress = fraction.toFixed(4);
  progress.dataset.status = job.status;
  progress.setAttribute('aria-valuenow', String(Math.round(fraction * 100)));
  progress.querySelector('.bar').style.width = `${(fraction * 100).toFixed(1)}%`;
  setText(progress.querySelector('.label'),
    `${(fraction * 100).toFixed(0)}% · ${formatBytes(job.currentProgress)} / ${formatBytes(job.totalProgress)}`);

  const stat = (role, text) => setText(card.querySelector(`[data-role="${role}"]`), text);
  stat('copied', formatBytes(job.bytesCopied));
  stat('remaining', formatBytes(job.remaining));
  stat('copy-rate', formatRate(job.copyRate));
  stat('dirty-rate', formatRate(job.dirtyRate));
  stat('eta', etaText(job));
  stat('speed-limit', job.speed ? formatRate(job.speed) : 'unlimited');
  stat('started', formatTime(job.createdAt));
  stat('duration', formatDuration(job.durationSeconds));
  setText(card.querySelector('[data-role="legend-progress"]'), `${(fraction * 100).toFixed(0)}%`);
  setText(card.querySelector('[data-role="legend-copy"]'), formatRate(job.copyRate));
  setText(card.querySelector('[data-role="legend-dirty"]'), formatRate(job.dirtyRate));

  const error = card.querySelector('[data-testid="job-error"]');
  error.hidden = !job.error;
  setText(error, job.error ? `Error: ${job.error}` : '');

  const states = verbStates(job);
  for (const [name, s] of Object.entries(states)) {
    for (const button of card.querySelectorAll(`button[data-verb="${name}"]`)) {
      button.disabled = !s.enabled;
      button.title = s.enabled ? '' : s.why;
    }
  }
  const cancel = card.querySelector('[data-verb="cancel"]');
  if (states.cancel.enabled) cancel.title = cancelHint(job);
  const force = card.querySelector('[data-verb="force"]');
  if (states.force.enabled) force.title = 'Abort now: no pivot, the job ends with "Operation canceled"';
  card.querySelector('[data-testid="job-speed"]').disabled = !states['set-speed'].enabled;
}

function etaText(job) {
  if (!isActive(job)) return '—';
  if (job.paused) return 'paused';
  if (job.ready) return 'in sync';
  return job.etaSeconds == null ? 'not converging' : formatDuration(job.etaSeconds);
}

function statusClass(job) {
  if (job.error && job.outcome !== 'cancelled') return 'bad';
  switch (job.status) {
    case 'ready': case 'concluded': return 'good';
    case 'paused': case 'standby': case 'pending': case 'waiting': case 'aborting': return 'warn';
    default: return 'info';
  }
}
