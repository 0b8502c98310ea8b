// A node's NBD exports: the URI clients connect to, what they may do, and the form that adds one.
import { api, seg } from './api.js';
import { h, reconcile, setText } from './dom.js';

export function createExportsCard(ctx, node) {
  const name = h('input', { 'data-testid': 'export-name', value: node, size: 12, required: true, title: 'The name NBD clients ask for' });
  const writable = h('input', { type: 'checkbox', 'data-testid': 'export-writable', checked: true });
  const bitmaps = h('span', { class: 'choices', 'data-testid': 'export-bitmaps' });
  const form = h('form', { class: 'inline-form', 'data-testid': 'export-form', 'data-action-scope': true, autocomplete: 'off' },
    h('strong', {}, 'New export'),
    h('label', {}, 'Name ', name),
    h('label', { title: 'Writes through the export take the node\'s write path: its bitmaps record them' }, writable, ' writable'),
    h('span', { class: 'muted' }, 'bitmaps: '), bitmaps,
    h('button', { type: 'submit', 'data-testid': 'export-add' }, 'Export'),
    h('div', { class: 'action-error', 'data-testid': 'action-error', hidden: true }));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    ctx.act(async () => {
      const chosen = [...bitmaps.querySelectorAll('input:checked')].map((c) => c.value);
      await api('POST', '/exports', { name: name.value.trim(), node, writable: writable.checked, bitmaps: chosen });
      for (const c of bitmaps.querySelectorAll('input:checked')) c.checked = false;
    }, form);
  });
  const table = h('table', { 'data-testid': 'exports-table' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Export'), h('th', {}, 'URI'), h('th', {}, 'Access'), h('th', {}, 'Bitmaps'), h('th', {}))),
    h('tbody', { 'data-role': 'rows' }));
  return h('section', { class: 'card', 'data-testid': 'node-exports', 'data-node': node },
    h('header', {}, h('h3', {}, 'NBD exports')),
    h('p', { class: 'muted hint' }, 'Served on the NBD server (Nbd:Listen); clients such as qemu-io, qemu-img and nbdinfo connect to the URI. Listed bitmaps are offered as qemu:dirty-bitmap:<name>.'),
    h('div', { class: 'table-wrap', 'data-role': 'wrap' }, table),
    h('p', { class: 'muted empty', 'data-role': 'empty' }, 'Not exported.'),
    form);
}

/** exports: every Export of the service (this card shows the node's); node: the Node. */
export function renderExports(ctx, card, node, exports) {
  const mine = exports.filter((e) => e.node === node.name);
  card.querySelector('[data-role="empty"]').hidden = mine.length > 0;
  card.querySelector('[data-role="wrap"]').hidden = mine.length === 0;
  reconcile(card.querySelector('[data-role="rows"]'), mine, (e) => e.name, (e) => createRow(ctx, e), updateRow);

  // One checkbox per bitmap of the node, kept across refreshes (and their ticks with them).
  const choices = card.querySelector('[data-testid="export-bitmaps"]');
  reconcile(choices, node.bitmaps.map((b) => ({ name: b })), (b) => b.name,
    (b) => h('label', { 'data-testid': 'export-bitmap' }, h('input', { type: 'checkbox', value: b.name }), ` ${b.name}`),
    () => {});
}

function createRow(ctx, e) {
  const remove = h('button', {
    type: 'button', class: 'danger', 'data-testid': 'export-remove', title: 'Remove the export: its clients are disconnected',
    onclick: (ev) => ctx.act(() => api('DELETE', `/exports/${seg(e.name)}`), ev.currentTarget),
  }, 'Remove');
  return h('tr', { 'data-testid': 'export-row', 'data-export': e.name, 'data-action-scope': true },
    h('td', { class: 'mono', 'data-col': 'name' }),
    h('td', { class: 'mono', 'data-col': 'uri' }),
    h('td', { 'data-col': 'access' }),
    h('td', { 'data-col': 'bitmaps' }),
    h('td', {}, remove, h('div', { class: 'action-error', 'data-testid': 'action-error', hidden: true })));
}

function updateRow(tr, e) {
  const col = (c) => tr.querySelector(`[data-col="${c}"]`);
  setText(col('name'), e.name);
  // A stored export that could not be served again at the last start says why (its URI is null then too).
  setText(col('uri'), e.served === false ? `not served (${e.notServedCode}): ${e.notServedReason}` : (e.uri ?? 'NBD server off (Nbd:Listen is empty)'));
  setText(col('access'), e.writable ? 'read-write' : 'read-only');
  setText(col('bitmaps'), e.bitmaps.length ? e.bitmaps.join(', ') : '—');
}
