// Jobs: live cards with progress and verbs, and the start-mirror form.
import { api, seg } from './api.js';
import { h, reconcile, setOptions, setText } from './dom.js';
import { formatBytes, formatDuration, formatRate, parseSize } from './format.js';

// QEMU's job verb table (job.c, JobVerbTable): the statuses in which each verb is accepted.
const MUTABLE = ['created', 'running', 'paused', 'ready', 'standby'];
export const VERBS = {
  cancel: ['created', 'running', 'paused', 'ready', 'standby', 'waiting', 'pending'],
  pause: MUTABLE,
  resume: MUTABLE,
  'set-speed': MUTABLE,
  complete: ['ready', 'standby'],
  finalize: ['pending'],
  dismiss: ['concluded'],
};

export const isActive = (job) => job.status !== 'concluded';

export function initJobs(ctx) {
  const form = document.getElementById('mirror-form');
  const device = form.querySelector('#mirror-device');
  device.addEventListener('change', () => ctx.renderMirrorChoices());
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    ctx.act(async () => {
      const value = (id) => form.querySelector(`#${id}`).value.trim();
      const checked = (id) => form.querySelector(`#${id}`).checked;
      await api('POST', '/jobs/mirror', {
        id: value('mirror-id') || null,
        device: value('mirror-device'),
        target: value('mirror-target'),
        sync: value('mirror-sync'),
        bitmap: value('mirror-bitmap') || null,
        bitmapMode: value('mirror-bitmap-mode') || null,
        granularity: parseSize(value('mirror-granularity'), 'Granularity'),
        bufSize: parseSize(value('mirror-buf-size'), 'Buffer size'),
        speed: parseSize(value('mirror-speed'), 'Speed') ?? 0,
        copyMode: value('mirror-copy-mode'),
        onSourceError: value('mirror-on-source-error'),
        onTargetError: value('mirror-on-target-error'),
        autoFinalize: checked('mirror-auto-finalize'),
        autoDismiss: checked('mirror-auto-dismiss'),
        unmap: checked('mirror-unmap'),
      });
      form.querySelector('#mirror-id').value = '';
    });
  });
}

/** Device and target choices from the nodes; the bitmap choice from the chosen device's bitmaps. */
export function renderMirrorChoices(nodes) {
  const form = document.getElementById('mirror-form');
  const names = nodes.map((n) => ({ value: n.name, label: n.busy ? `${n.name} (busy)` : n.name }));
  const device = form.querySelector('#mirror-device');
  const target = form.querySelector('#mirror-target');
  setOptions(device, names);
  setOptions(target, names);
  // A fresh form suggests a target other than the device.
  if (target.value === device.value && !target.dataset.touched) {
    const other = nodes.find((n) => n.name !== device.value);
    if (other) target.value = other.name;
  }
  target.onchange = () => { target.dataset.touched = '1'; };
  const chosen = nodes.find((n) => n.name === device.value);
  setOptions(form.querySelector('#mirror-bitmap'),
    [{ value: '', label: '(none)' }, ...(chosen?.bitmaps ?? []).map((b) => ({ value: b, label: b }))]);
}

export function renderJobs(ctx, jobs) {
  document.getElementById('jobs-empty').hidden = jobs.length > 0;
  reconcile(document.getElementById('jobs'), jobs, (j) => j.id, (j) => createJob(ctx, j), updateJob);
}

function createJob(ctx, job) {
  const base = `/jobs/${seg(job.id)}`;
  const verb = (name, label, run, cls) => h('button', {
    type: 'button', 'data-testid': `job-${name}`, 'data-verb': name, class: cls, onclick: () => ctx.act(run),
  }, label);
  const speed = h('input', { 'data-testid': 'job-speed', placeholder: 'bytes/s', title: 'New speed: 0 = unlimited; 4M = 4 MiB/s' });
  const setSpeed = h('button', {
    type: 'button', 'data-testid': 'job-set-speed', 'data-verb': 'set-speed',
    onclick: () => ctx.act(async () => {
      await api('PATCH', base, { speed: parseSize(speed.value, 'Speed') ?? 0 });
      speed.value = '';
    }),
  }, 'Set speed');
  const stat = (label, role) => h('div', {}, h('dt', {}, label), h('dd', { 'data-role': role, 'data-testid': `job-${role}` }));
  return h('article', { class: 'card job', 'data-testid': 'job', 'data-job': job.id },
    h('header', {},
      h('h3', { class: 'mono' }, job.id),
      h('span', { class: 'badge', 'data-testid': 'job-status' }),
      h('span', { class: 'badges', 'data-role': 'badges' })),
    h('div', { class: 'route muted', 'data-role': 'route' }),
    h('div', { class: 'progress', 'data-testid': 'job-progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100 },
      h('div', { class: 'bar' }), h('span', { class: 'label' })),
    h('dl', { class: 'stats' },
      stat('copied', 'copied'), stat('remaining', 'remaining'), stat('copy rate', 'copy-rate'),
      stat('dirty rate', 'dirty-rate'), stat('ETA', 'eta'), stat('speed limit', 'speed-limit')),
    h('p', { class: 'job-error', 'data-testid': 'job-error', hidden: true }),
    h('div', { class: 'actions' },
      verb('pause', 'Pause', () => api('POST', `${base}/pause`)),
      verb('resume', 'Resume', () => api('POST', `${base}/resume`)),
      verb('complete', 'Complete', () => api('POST', `${base}/complete`)),
      verb('cancel', 'Cancel', () => api('POST', `${base}/cancel`, { force: false }), 'danger'),
      verb('finalize', 'Finalize', () => api('POST', `${base}/finalize`)),
      verb('dismiss', 'Dismiss', () => api('POST', `${base}/dismiss`)),
      h('span', { class: 'sep' }),
      speed, setSpeed));
}

function updateJob(card, job) {
  card.dataset.status = job.status;
  const status = card.querySelector('[data-testid="job-status"]');
  setText(status, job.status);
  status.className = `badge ${statusClass(job)}`;

  const badges = [
    job.ready && ['ready', 'good'],
    job.activelySynced && ['actively-synced', 'good'],
    job.paused && ['paused', 'warn'],
    job.ioStatus !== 'ok' && [`io: ${job.ioStatus}`, 'bad'],
  ].filter(Boolean);
  const holder = card.querySelector('[data-role="badges"]');
  const key = badges.map(([t]) => t).join(',');
  if (holder.dataset.badges !== key) {
    holder.replaceChildren(...badges.map(([t, cls]) => h('span', { class: `badge ${cls}`, 'data-testid': `job-badge-${t.split(':')[0]}` }, t), ' '));
    holder.dataset.badges = key;
  }

  const details = [job.sync && `sync ${job.sync}`, job.copyMode, `granularity ${formatBytes(job.granularity)}`,
    job.bitmap && `bitmap ${job.bitmap} (${job.bitmapMode})`].filter(Boolean).join(' · ');
  setText(card.querySelector('[data-role="route"]'), `${job.device} → ${job.target ?? '—'} · ${details}`);

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
  stat('eta', job.etaSeconds == null ? 'not converging' : formatDuration(job.etaSeconds));
  stat('speed-limit', job.speed ? formatRate(job.speed) : 'unlimited');

  const error = card.querySelector('[data-testid="job-error"]');
  error.hidden = !job.error;
  setText(error, job.error ? `Error: ${job.error}` : '');

  for (const [verb, statuses] of Object.entries(VERBS)) {
    for (const button of card.querySelectorAll(`button[data-verb="${verb}"]`)) button.disabled = !statuses.includes(job.status);
  }
  card.querySelector('[data-testid="job-speed"]').disabled = !VERBS['set-speed'].includes(job.status);
}

function statusClass(job) {
  if (job.error) return 'bad';
  switch (job.status) {
    case 'ready': case 'concluded': return 'good';
    case 'paused': case 'standby': case 'pending': case 'waiting': case 'aborting': return 'warn';
    default: return 'info';
  }
}
