// A node's page (#/nodes/{name}): what it is, its bitmaps, its exports and its jobs, and the
// mirror form with the node as the device. Built once per node shown, then brought up to date.
import { api, seg } from './api.js';
import { h, setText } from './dom.js';
import { formatBytes, formatTime } from './format.js';
import { badgeElements, nodeBadges } from './nodes.js';
import { createBitmapsCard, refreshMaps, renderBitmaps } from './bitmaps.js';
import { createExportsCard, renderExports } from './exports.js';
import { drawCharts, renderJobs } from './jobs.js';
import { createMirrorForm } from './mirror.js';

/** Builds the page of node name into container. */
export function createNodePage(ctx, container, name) {
  const deleteImage = h('input', { type: 'checkbox', 'data-testid': 'node-delete-image' });
  const remove = h('button', {
    type: 'button', class: 'danger', 'data-testid': 'node-delete',
    onclick: (e) => ctx.act(async () => {
      await api('DELETE', `/nodes/${seg(name)}${deleteImage.checked ? '?deleteImage=true' : ''}`);
      ctx.navigate('#/nodes');
    }, e.currentTarget),
  }, 'Remove node');
  const info = (label, role) => h('div', {}, h('dt', {}, label), h('dd', { 'data-role': role, 'data-testid': `node-${role}` }));
  const summary = h('section', { class: 'card node-summary', 'data-testid': 'node-summary', 'data-action-scope': true },
    h('header', {},
      h('h2', { class: 'mono' }, name),
      h('span', { class: 'badges', 'data-role': 'badges' })),
    h('p', { class: 'reason', 'data-testid': 'node-replaced', hidden: true }),
    h('dl', { class: 'stats' },
      info('driver', 'driver'), info('format', 'format'), info('path / URI', 'location'), info('backing chain', 'backing'), info('size', 'size'),
      info('allocated', 'allocated'), info('cache', 'cache'), info('added', 'created'),
      info('transport', 'tls'), info('server identity', 'peer')),
    h('div', { class: 'actions' },
      h('label', { 'data-role': 'delete-image-label', title: 'Also delete the image file (never its backing chain; refused when the path no longer names the node\'s file)' },
        deleteImage, ' also delete the image file'),
      remove),
    h('div', { class: 'action-error', 'data-testid': 'action-error', hidden: true }));

  const bitmaps = createBitmapsCard(ctx, name);
  const exports = createExportsCard(ctx, name);
  const jobs = h('div', { class: 'groups', 'data-testid': 'node-jobs' });
  const mirror = createMirrorForm(ctx, name);
  const jobsCard = h('section', { class: 'card', 'data-testid': 'node-jobs-card' },
    h('header', {}, h('h3', {}, 'Jobs')),
    jobs,
    h('p', { class: 'muted empty', 'data-role': 'no-jobs' }, 'No job uses this node.'),
    mirror);
  container.replaceChildren(summary, bitmaps, exports, jobsCard);
  container.dataset.node = name;
  return { name, summary, bitmaps, exports, jobs, jobsCard, mirror, deleteImage, remove };
}

/** Brings the page up to date; data: { node, nodes, bitmaps, exports, jobs }. */
export function updateNodePage(ctx, page, data) {
  const { node, nodes } = data;
  const s = page.summary;
  const badges = [[node.driver, 'info', 'driver'], ...nodeBadges(node),
    ...node.exports.map((e) => [`exported: ${e}`, 'good', 'exported'])];
  const holder = s.querySelector('[data-role="badges"]');
  const key = badges.map(([t]) => t).join(',');
  if (holder.dataset.key !== key) {
    holder.replaceChildren(...badgeElements(badges).flatMap((b) => [b, ' ']));
    holder.dataset.key = key;
  }
  const replaced = s.querySelector('[data-testid="node-replaced"]');
  replaced.hidden = !node.imageReplaced;
  setText(replaced, node.imageReplaced
    ? `Image replaced: ${node.imageReplacedReason ?? 'the path no longer names the open file'}. Writes are refused (image-replaced); remove the node and add it again.`
    : '');
  const set = (role, text, title) => {
    const el = s.querySelector(`[data-role="${role}"]`);
    setText(el, text);
    if (title != null) el.title = title;
  };
  set('driver', node.driver + (node.device ? ' · host block device' : '') + (node.readOnly ? ' (read-only)' : ''));
  set('location', node.path ?? node.uri ?? '');
  set('format', node.format);
  // Nearest first, as the API lists it: what this node reads through to where it holds nothing.
  const chain = node.backing ?? [];
  set('backing', chain.length ? chain.map((b) => `${b.path} (${b.format})`).join(' → ') : '—',
    chain.length ? 'Opened read-only with the node; unallocated ranges read from the nearest image first' : '');
  set('size', formatBytes(node.size), `${node.size} bytes`);
  // A device is all data: its whole size is the image's, whatever was written.
  set('allocated', node.driver === 'nbd' ? '—' : node.device ? 'whole device' : formatBytes(node.allocatedBytes), `${node.allocatedBytes} bytes`);
  set('created', formatTime(node.createdAt));
  // cache.direct: whether the image's I/O goes through the host's page cache (nbd nodes have no local file).
  s.querySelector('[data-role="cache"]').parentElement.hidden = node.driver === 'nbd';
  set('cache', node.cache?.direct ? 'direct (O_DIRECT, bypasses the page cache)' : 'host page cache',
    node.cache?.direct ? 'cache.direct: opened with O_DIRECT; unaligned requests are widened to whole blocks' : 'cache.direct off: reads and writes go through the host\'s page cache');
  // A remote node: whether its connection is encrypted, and whose certificate the server showed.
  const remote = node.driver === 'nbd';
  s.querySelector('[data-role="tls"]').parentElement.hidden = !remote;
  s.querySelector('[data-role="peer"]').parentElement.hidden = !remote || !node.tls;
  set('tls', node.tls ? 'TLS (encrypted, server verified)' : 'plain TCP (not encrypted)',
    node.tls ? 'NBD over TLS 1.3, checked against Nbd:Client:Tls:CaPath' : 'Use an nbds:// URI or "tls": true to encrypt');
  set('peer', node.peerSubject ?? '');
  // Devices are never deleted (device-not-deletable): no box to tick.
  s.querySelector('[data-role="delete-image-label"]').hidden = node.driver === 'nbd' || node.device;
  const blocked = node.busy ? `In use by job ${node.jobId ?? ''} (node-busy)` : (node.exports.length ? 'Exported: remove its exports first (node-busy)' : '');
  page.remove.disabled = !!blocked;
  page.remove.title = blocked || 'Remove the node and its bitmaps (the image file stays unless ticked)';

  renderBitmaps(ctx, page.bitmaps, node, data.bitmaps, nodes);
  renderExports(ctx, page.exports, node, data.exports);
  const mine = data.jobs.filter((j) => j.device === node.name || j.target === node.name);
  page.jobsCard.querySelector('[data-role="no-jobs"]').hidden = mine.length > 0;
  renderJobs(ctx, page.jobs, mine);
  drawCharts(page.jobs);
  page.mirror.update(nodes);
}

export const refreshNodeMaps = (page, node) => refreshMaps(page.bitmaps, node.size);
