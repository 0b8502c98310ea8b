// Nodes: the table and the create form.
import { api, seg } from './api.js';
import { h, reconcile, setText } from './dom.js';
import { formatBytes, parseSize } from './format.js';

export function initNodes(ctx) {
  const form = document.getElementById('node-form');
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    ctx.act(async () => {
      const name = form.querySelector('#node-name').value.trim();
      const path = form.querySelector('#node-path').value.trim() || `${name}.img`;
      const size = parseSize(form.querySelector('#node-size').value, 'Size');
      await api('POST', '/nodes', { name, driver: 'raw', path, create: { size } });
      form.reset();
    });
  });
}

export function renderNodes(ctx, nodes) {
  const body = document.getElementById('nodes-body');
  document.getElementById('nodes-empty').hidden = nodes.length > 0;
  reconcile(body, nodes, (n) => n.name, (n) => createRow(ctx, n), updateRow);
}

function createRow(ctx, node) {
  const cell = (col, cls) => h('td', { 'data-col': col, class: cls });
  const remove = h('button', {
    type: 'button', class: 'danger', 'data-testid': 'node-delete', title: 'Remove the node (the image file is kept)',
    onclick: () => ctx.act(() => api('DELETE', `/nodes/${seg(node.name)}`)),
  }, 'Delete');
  return h('tr', { 'data-testid': 'node-row', 'data-node': node.name },
    cell('name'), cell('driver'), cell('location', 'mono'), cell('size', 'num'), cell('allocated', 'num'),
    cell('busy'), cell('exports'), cell('bitmaps'), h('td', {}, remove));
}

function updateRow(tr, node) {
  const col = (c) => tr.querySelector(`[data-col="${c}"]`);
  setText(col('name'), node.name);
  setText(col('driver'), node.driver + (node.readOnly ? ' (read-only)' : ''));
  // A file replaced under the open node: writes are refused until it is removed and added again.
  setText(col('location'), (node.path ?? node.uri ?? '') + (node.imageReplaced ? ' (replaced)' : ''));
  col('location').title = node.imageReplacedReason ?? '';
  setText(col('size'), formatBytes(node.size));
  col('size').title = `${node.size} bytes`;
  setText(col('allocated'), formatBytes(node.allocatedBytes));
  col('allocated').title = `${node.allocatedBytes} bytes`;
  const busy = col('busy');
  const busyText = node.busy ? `busy${node.jobId ? ` · ${node.jobId}` : ''}` : 'idle';
  if (busy.textContent !== busyText) {
    busy.replaceChildren(h('span', { class: `badge ${node.busy ? 'warn' : ''}` }, busyText));
  }
  setText(col('exports'), node.exports.length ? node.exports.join(', ') : '—');
  setText(col('bitmaps'), node.bitmaps.length ? node.bitmaps.join(', ') : '—');
  tr.dataset.busy = String(node.busy);
  tr.querySelector('[data-testid="node-delete"]').disabled = node.busy;
}
