// Number formatting and parsing for sizes, rates and durations.

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

export function formatBytes(n) {
  if (n == null) return '—';
  let v = Number(n);
  let u = 0;
  while (Math.abs(v) >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  const text = u === 0 || Number.isInteger(v) ? String(v) : v.toFixed(v < 10 ? 2 : 1);
  return `${text} ${UNITS[u]}`;
}

export const formatRate = (n) => (n ? `${formatBytes(n)}/s` : '0 B/s');

export function formatDuration(seconds) {
  if (seconds == null) return '—';
  // Short jobs are common (a small incremental copy): tenths say more than "0 s".
  if (seconds < 10) return `${Math.max(0, seconds).toFixed(1)} s`;
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/**
 * Parses "65536", "64K", "64KiB", "1.5G" (binary multiples) to a whole number of bytes.
 * Empty input is null (the API's default); anything else unparseable throws.
 */
export function parseSize(text, label) {
  const t = String(text ?? '').trim();
  if (!t) return null;
  const m = /^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?$/i.exec(t);
  if (!m) throw new Error(`${label}: "${t}" is not a size (try 65536, 64K or 1G)`);
  const power = ' kmgtp'.indexOf(m[2].toLowerCase() || ' ');
  const value = Number(m[1]) * 1024 ** power;
  if (!Number.isSafeInteger(value)) throw new Error(`${label}: "${t}" is not a whole number of bytes`);
  return value;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

/** A UTC timestamp from the API as local time, "2026-12-02 06:03:58" (seconds: what an operator compares). */
export function formatTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** The time of day with milliseconds, "06:03:58.526": events of one job are often milliseconds apart. */
export function formatClock(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
