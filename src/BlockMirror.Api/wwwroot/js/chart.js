// A job's live chart on a <canvas>, no library: progress (left axis, 0–100 %) and the copy and
// dirty rates (right axis, bytes/s) over the last minutes. The samples are what this page saw on
// each refresh of GET /api/v1/jobs (the API keeps no time series), so a chart starts when the page
// first sees the job. The canvas carries what it drew in data attributes, for tests and tools.
import { formatRate } from './format.js';

export const SERIES = {
  progress: { color: '#2563eb', label: 'progress' },
  copy: { color: '#15803d', label: 'copy rate' },
  dirty: { color: '#dc2626', label: 'dirty rate' },
};

const WINDOW_MS = 5 * 60 * 1000;
const MIN_SPAN_MS = 30 * 1000;
const MAX_SAMPLES = 1200;
const MARGIN = { left: 38, right: 70, top: 8, bottom: 18 };

/** Per job id, the samples seen so far: { t, progress, copyRate, dirtyRate }. */
const history = new Map();

/** Records one observation of a job (called on every jobs refresh). */
export function sample(job, now = Date.now()) {
  let list = history.get(job.id);
  // A new job that reuses an id (the device's name is the default id) starts a new chart.
  if (!list || list.createdAt !== job.createdAt) {
    list = [];
    list.createdAt = job.createdAt;
    history.set(job.id, list);
  }
  const progress = job.totalProgress > 0 ? Math.min(1, job.currentProgress / job.totalProgress) : (job.ready ? 1 : 0);
  list.push({ t: now, progress, copyRate: job.copyRate, dirtyRate: job.dirtyRate });
  if (list.length > MAX_SAMPLES) list.splice(0, list.length - MAX_SAMPLES);
}

/** Forgets jobs that are no longer listed. */
export function forget(ids) {
  for (const id of [...history.keys()]) if (!ids.has(id)) history.delete(id);
}

/** The rate axis' top: the next power of two of bytes/s at or above v (1 MiB/s while nothing moves). */
function niceMax(v) {
  if (v <= 0) return 1024 * 1024;
  let top = 1024;
  while (top < v) top *= 2;
  return top;
}

export function drawChart(canvas, jobId, now = Date.now()) {
  const samples = history.get(jobId) ?? [];
  const ratio = window.devicePixelRatio || 1;
  const cssWidth = Math.max(200, Math.floor(canvas.clientWidth || 600));
  const cssHeight = Math.max(80, Math.floor(canvas.clientHeight || 140));
  if (canvas.width !== cssWidth * ratio) canvas.width = cssWidth * ratio;
  if (canvas.height !== cssHeight * ratio) canvas.height = cssHeight * ratio;
  const g = canvas.getContext('2d');
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, cssWidth, cssHeight);

  const plot = {
    x: MARGIN.left, y: MARGIN.top,
    w: cssWidth - MARGIN.left - MARGIN.right, h: cssHeight - MARGIN.top - MARGIN.bottom,
  };
  const start = Math.max(samples.length ? samples[0].t : now, now - WINDOW_MS);
  const span = Math.max(MIN_SPAN_MS, now - start);
  const from = now - span;
  const shown = samples.filter((s) => s.t >= from);
  const maxRate = niceMax(Math.max(0, ...shown.map((s) => Math.max(s.copyRate, s.dirtyRate))));

  // Frame, grid and axes labels.
  g.font = '10px system-ui, sans-serif';
  g.fillStyle = '#6b7280';
  g.strokeStyle = '#e5e7eb';
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = Math.round(plot.y + plot.h - (plot.h * i) / 4) + 0.5;
    g.beginPath();
    g.moveTo(plot.x, y);
    g.lineTo(plot.x + plot.w, y);
    g.stroke();
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    g.fillText(`${i * 25}%`, plot.x - 4, y);
    g.textAlign = 'left';
    g.fillText(formatRate((maxRate * i) / 4), plot.x + plot.w + 4, y);
  }
  g.textBaseline = 'top';
  g.textAlign = 'left';
  g.fillText(`−${Math.round(span / 1000)} s`, plot.x, plot.y + plot.h + 4);
  g.textAlign = 'right';
  g.fillText('now', plot.x + plot.w, plot.y + plot.h + 4);

  const xOf = (t) => plot.x + ((t - from) / span) * plot.w;
  const line = (color, yOf) => {
    if (shown.length === 0) return 0;
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.lineJoin = 'round';
    g.beginPath();
    // Steps, not slopes: each value holds until the next sample (rates are per refresh).
    shown.forEach((s, i) => {
      const x = xOf(s.t);
      const y = yOf(s);
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
      const next = shown[i + 1];
      g.lineTo(next ? xOf(next.t) : xOf(now), y);
    });
    g.stroke();
    return shown.length;
  };
  const rateY = (v) => plot.y + plot.h - (Math.min(v, maxRate) / maxRate) * (plot.h - 1) - 1;
  line(SERIES.dirty.color, (s) => rateY(s.dirtyRate));
  line(SERIES.copy.color, (s) => rateY(s.copyRate));
  line(SERIES.progress.color, (s) => plot.y + plot.h - s.progress * (plot.h - 1) - 1);

  const last = shown[shown.length - 1];
  Object.assign(canvas.dataset, {
    samples: String(shown.length),
    maxRate: String(maxRate),
    progress: last ? last.progress.toFixed(4) : '',
    peakCopyRate: String(Math.max(0, ...shown.map((s) => s.copyRate))),
    peakDirtyRate: String(Math.max(0, ...shown.map((s) => s.dirtyRate))),
  });
  canvas.title = `${shown.length} samples over the last ${Math.round(span / 1000)} s`;
}
