// Nodes: the overview table, the node list in the sidebar, and the add-node form (a new raw or
// qcow2 image, an existing one, or a remote NBD export).
import { api, seg } from './api.js';
import { h, reconcile, setText } from './dom.js';
import { formatBytes, parseSize } from './format.js';

export const nodeHref = (name) => `#/nodes/${seg(name)}`;

export function initNodes(ctx) {
  const form = document.getElementById('node-form');
  const kind = () => form.querySelector('input[name="kind"]:checked').value;
  const format = () => form.querySelector('#node-format').value;
  const showKind = () => {
    for (const el of form.querySelectorAll('[data-kinds]')) {
      el.hidden = !el.dataset.kinds.split(' ').includes(kind()) || (el.dataset.formats != null && !el.dataset.formats.split(' ').includes(format()));
    }
    form.dataset.kind = kind();
  };
  for (const radio of form.querySelectorAll('input[name="kind"]')) radio.addEventListener('change', showKind);
  form.querySelector('#node-format').addEventListener('change', () => {
    showKind();
    path.placeholder = defaultPath(name.value.trim() || 'disk0');
  });
  showKind();
  const name = form.querySelector('#node-name');
  const path = form.querySelector('#node-path');
  const defaultPath = (n) => `${n}.${format() === 'qcow2' ? 'qcow2' : 'img'}`;
  name.addEventListener('input', () => { path.placeholder = defaultPath(name.value.trim() || 'disk0'); });
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    ctx.act(async () => {
      const value = (id) => form.querySelector(`#${id}`).value.trim();
      const readOnly = form.querySelector('#node-read-only').checked;
      // cache.direct is a raw node's option only; sent only when asked for.
      const cache = () => (format() === 'raw' && form.querySelector('#node-direct').checked ? { cache: { direct: true } } : {});
      const n = value('node-name');
      let body;
      switch (kind()) {
        case 'create': {
          const create = { size: parseSize(value('node-size'), 'Size') };
          if (format() === 'qcow2') {
            if (value('node-backing')) create.backing = value('node-backing');
            if (value('node-cluster-size')) create.clusterSize = parseSize(value('node-cluster-size'), 'Cluster size');
          }
          body = { name: n, driver: format(), path: value('node-path') || defaultPath(n), create, ...cache() };
          break;
        }
        case 'open':
          body = { name: n, driver: format(), path: value('node-path') || defaultPath(n), readOnly, ...cache() };
          break;
        default:
          body = { name: n, driver: 'nbd', uri: value('node-uri'), readOnly };
      }
      const node = await api('POST', '/nodes', body);
      form.reset();
      showKind();
      ctx.navigate(nodeHref(node.name));
    }, form);
  });

  const filter = document.getElementById('node-filter');
  filter.addEventListener('input', () => ctx.rerender());
}

/** The overview table (#/nodes) and the sidebar list. */
export function renderNodes(ctx, nodes, current) {
  document.getElementById('nodes-empty').hidden = nodes.length > 0;
  reconcile(document.getElementById('nodes-body'), nodes, (n) => n.name, createRow, updateRow);

  const text = document.getElementById('node-filter').value.trim().toLowerCase();
  const shown = text ? nodes.filter((n) => n.name.toLowerCase().includes(text) || (n.path ?? n.uri ?? '').toLowerCase().includes(text)) : nodes;
  document.getElementById('node-nav-empty').hidden = shown.length > 0;
  document.getElementById('node-nav-empty').textContent = nodes.length ? 'No node matches.' : 'No nodes yet.';
  reconcile(document.getElementById('node-nav'), shown, (n) => n.name,
    (n) => h('li', { 'data-testid': 'node-nav-item', 'data-node': n.name },
      h('a', { href: nodeHref(n.name) }, h('span', { class: 'name' }, n.name), h('span', { class: 'muted size' }), h('span', { class: 'dot' }))),
    (li, n) => {
      setText(li.querySelector('.size'), formatBytes(n.size));
      li.classList.toggle('current', n.name === current);
      li.dataset.state = stateOf(n);
      li.querySelector('.dot').title = stateText(n);
    });
}

/** The one word the sidebar's dot shows: what an operator must notice first. */
function stateOf(n) {
  if (n.imageReplaced) return 'replaced';
  if (n.busy) return 'busy';
  return n.exports.length ? 'exported' : 'idle';
}

function stateText(n) {
  if (n.imageReplaced) return `image replaced: ${n.imageReplacedReason ?? ''}`;
  if (n.busy) return `busy: job ${n.jobId ?? ''}`;
  return n.exports.length ? `exported as ${n.exports.join(', ')}` : 'idle';
}

/** The badges of a node's state: used in the table and on the node's page. */
export function nodeBadges(n) {
  return [
    n.busy ? [n.jobId ? `busy · ${n.jobId}` : 'busy', 'warn', 'busy'] : ['idle', '', 'idle'],
    n.readOnly && ['read-only', 'info', 'read-only'],
    n.device && ['block device', 'info', 'device'],
    n.cache?.direct && ['direct I/O', 'info', 'direct'],
    n.imageReplaced && ['image replaced', 'bad', 'replaced'],
  ].filter(Boolean);
}

export function badgeElements(badges) {
  return badges.map(([t, cls, id]) => h('span', { class: `badge ${cls}`, 'data-testid': `node-badge-${id}` }, t));
}

function createRow(node) {
  const cell = (col, cls) => h('td', { 'data-col': col, class: cls });
  return h('tr', { 'data-testid': 'node-row', 'data-node': node.name },
    h('td', { 'data-col': 'name' }, h('a', { href: nodeHref(node.name), 'data-testid': 'node-link' }, node.name)),
    cell('driver'), cell('location', 'mono'), cell('size', 'num'), cell('allocated', 'num'),
    cell('busy'), cell('exports'), cell('bitmaps'));
}

function updateRow(tr, node) {
  const col = (c) => tr.querySelector(`[data-col="${c}"]`);
  setText(col('driver'), node.device ? `${node.driver} · device` : node.driver);
  setText(col('location'), node.path ?? node.uri ?? '');
  setText(col('size'), formatBytes(node.size));
  col('size').title = `${node.size} bytes`;
  setText(col('allocated'), node.driver === 'nbd' ? '—' : formatBytes(node.allocatedBytes));
  col('allocated').title = `${node.allocatedBytes} bytes`;
  const badges = nodeBadges(node);
  const key = badges.map(([t]) => t).join(',');
  const busy = col('busy');
  if (busy.dataset.key !== key) {
    busy.replaceChildren(...badgeElements(badges).flatMap((b) => [b, ' ']));
    busy.dataset.key = key;
  }
  // A file replaced under the open node: writes are refused until it is removed and added again.
  busy.title = node.imageReplaced ? node.imageReplacedReason ?? '' : '';
  setText(col('exports'), node.exports.length ? node.exports.join(', ') : '—');
  setText(col('bitmaps'), node.bitmaps.length ? node.bitmaps.join(', ') : '—');
  tr.dataset.busy = String(node.busy);
}
