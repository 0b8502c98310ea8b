// A node's dirty bitmaps: badges, counts, the dirty map strip and the bitmap commands, plus the
// form that adds one. Rendered on the node's page.
import { api, seg } from './api.js';
import { h, reconcile, setOptions, setText } from './dom.js';
import { drawDirtyMap } from './dirtymap.js';
import { formatBytes, parseSize } from './format.js';

export function createBitmapsCard(ctx, node) {
  const name = h('input', { 'data-testid': 'bitmap-name', placeholder: 'b0', size: 10, required: true });
  const granularity = h('input', { 'data-testid': 'bitmap-granularity', placeholder: '64K', size: 6 });
  const persistent = h('input', { type: 'checkbox', 'data-testid': 'bitmap-persistent' });
  const disabled = h('input', { type: 'checkbox', 'data-testid': 'bitmap-disabled' });
  const form = h('form', { class: 'inline-form', 'data-testid': 'bitmap-form', 'data-action-scope': true, autocomplete: 'off' },
    h('strong', {}, 'New bitmap'),
    h('label', {}, 'Name ', name),
    h('label', {}, 'Granularity ', granularity),
    h('label', { title: 'Survives restarts and crashes (journaled)' }, persistent, ' persistent'),
    h('label', { title: 'Created not recording' }, disabled, ' disabled'),
    h('button', { type: 'submit', 'data-testid': 'bitmap-add' }, 'Add bitmap'),
    h('div', { class: 'action-error', 'data-testid': 'action-error', hidden: true }));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    ctx.act(async () => {
      await api('POST', `/nodes/${seg(node)}/bitmaps`, {
        name: name.value.trim(),
        granularity: parseSize(granularity.value, 'Granularity'),
        persistent: persistent.checked,
        disabled: disabled.checked,
      });
      form.reset();
    }, form);
  });
  return h('section', { class: 'card', 'data-testid': 'node-bitmaps', 'data-node': node },
    h('header', {}, h('h3', {}, 'Dirty bitmaps')),
    h('p', { class: 'muted hint' }, 'Each strip spans the whole node; red marks dirty granules. Counts and maps refresh every second.'),
    h('div', { class: 'bitmap-list' }),
    h('p', { class: 'muted empty', 'data-role': 'empty' }, 'No bitmaps on this node.'),
    form);
}

/**
 * card: from createBitmapsCard; node: the Node; bitmaps: its Bitmap list; nodes: every Node (merge
 * sources may be bitmaps of other nodes of the same size).
 */
export function renderBitmaps(ctx, card, node, bitmaps, nodes) {
  card.querySelector('[data-role="empty"]').hidden = bitmaps.length > 0;
  const sources = [
    ...bitmaps.map((b) => ({ node: node.name, name: b.name })),
    ...nodes.filter((n) => n.name !== node.name && n.size === node.size)
      .flatMap((n) => n.bitmaps.map((b) => ({ node: n.name, name: b }))),
  ];
  reconcile(card.querySelector('.bitmap-list'), bitmaps, (b) => b.name, (b) => createBitmap(ctx, b),
    (row, b) => updateBitmap(row, b, sources));
}

/** Redraws every map whose bitmap content changed since it was last drawn (its SHA-256 differs). */
export async function refreshMaps(card, size) {
  const canvases = [...card.querySelectorAll('canvas.dirty-map')];
  await Promise.all(canvases.map(async (canvas) => {
    const { node, bitmap } = canvas.dataset;
    const base = `/nodes/${seg(node)}/bitmaps/${seg(bitmap)}`;
    try {
      const { sha256 } = await api('GET', `${base}/sha256`);
      const width = String(Math.max(64, Math.floor(canvas.clientWidth || 600)));
      if (canvas.dataset.sha === sha256 && canvas.dataset.size === String(size) && canvas.dataset.width === width) return;
      const { items } = await api('GET', `${base}/extents`);
      drawDirtyMap(canvas, size, items);
      canvas.dataset.sha = sha256;
      canvas.dataset.size = String(size);
    } catch {
      // Removed since the list was read (or a blip): the next refresh redraws or drops it.
    }
  }));
}

function createBitmap(ctx, b) {
  const base = `/nodes/${seg(b.node)}/bitmaps/${seg(b.name)}`;
  const button = (verb, label, run, cls) => h('button', {
    type: 'button', 'data-testid': `bitmap-${verb}`, 'data-verb': verb, class: cls, onclick: (e) => ctx.act(run, e.currentTarget),
  }, label);
  const source = h('select', { 'data-testid': 'bitmap-merge-source', title: 'Bitmap to OR into this one' });
  return h('div', { class: 'bitmap', 'data-testid': 'bitmap', 'data-node': b.node, 'data-bitmap': b.name, 'data-action-scope': true },
    h('div', { class: 'bitmap-head' },
      h('strong', { class: 'mono' }, b.name),
      h('span', { class: 'muted', 'data-role': 'granularity' }),
      h('span', { 'data-testid': 'bitmap-count' }),
      h('span', { class: 'badges', 'data-role': 'badges' })),
    h('p', { class: 'reason', 'data-testid': 'bitmap-inconsistent-reason', hidden: true }),
    h('canvas', { class: 'dirty-map', 'data-testid': 'dirty-map', 'data-node': b.node, 'data-bitmap': b.name, height: 18 }),
    h('div', { class: 'actions' },
      button('clear', 'Clear', () => api('POST', `${base}/clear`)),
      button('enable', 'Enable', () => api('POST', `${base}/enable`)),
      button('disable', 'Disable', () => api('POST', `${base}/disable`)),
      h('span', { class: 'sep' }),
      h('label', {}, 'merge from ', source),
      button('merge', 'Merge', () => {
        const [node, ...rest] = source.value.split('/');
        return api('POST', `${base}/merge`, { sources: [{ node, name: rest.join('/') }] });
      }),
      h('span', { class: 'sep' }),
      button('remove', 'Remove', () => api('DELETE', base), 'danger')),
    h('div', { class: 'action-error', 'data-testid': 'action-error', hidden: true }));
}

function updateBitmap(row, b, sources) {
  setText(row.querySelector('[data-role="granularity"]'), `granularity ${formatBytes(b.granularity)}`);
  const count = row.querySelector('[data-testid="bitmap-count"]');
  setText(count, `${formatBytes(b.count)} dirty`);
  count.dataset.count = String(b.count);
  count.title = `${b.count} bytes`;

  const badges = [
    b.recording ? ['recording', 'good'] : ['disabled', ''],
    b.busy && ['busy', 'warn'],
    b.persistent && ['persistent', 'info'],
    b.inconsistent && ['inconsistent', 'bad'],
  ].filter(Boolean);
  const badgeKey = badges.map(([t]) => t).join(',');
  const holder = row.querySelector('[data-role="badges"]');
  if (holder.dataset.badges !== badgeKey) {
    holder.replaceChildren(...badges.map(([t, cls]) => h('span', { class: `badge ${cls}`, 'data-testid': `badge-${t}` }, t), ' '));
    holder.dataset.badges = badgeKey;
  }
  // Why it cannot be trusted (a damaged journal, a replaced image, ...), in words on the page: such
  // a bitmap can only be removed, and the operator must know what happened before doing so.
  const reason = row.querySelector('[data-testid="bitmap-inconsistent-reason"]');
  reason.hidden = !b.inconsistent;
  setText(reason, b.inconsistent ? `Inconsistent: ${b.inconsistentReason ?? 'no reason recorded'}. It can only be removed.` : '');
  const inconsistentBadge = holder.querySelector('[data-testid="badge-inconsistent"]');
  if (inconsistentBadge) inconsistentBadge.title = b.inconsistentReason ?? '';
  Object.assign(row.dataset, {
    recording: String(b.recording), busy: String(b.busy), persistent: String(b.persistent), inconsistent: String(b.inconsistent),
  });

  // Guards as the service checks them (docs/concepts.md): the buttons only offer what would be accepted.
  const blocked = b.busy || b.inconsistent;
  const options = sources.filter((s) => !(s.node === b.node && s.name === b.name))
    .map((s) => ({ value: `${s.node}/${s.name}`, label: s.node === b.node ? s.name : `${s.node}/${s.name}` }));
  const select = row.querySelector('[data-testid="bitmap-merge-source"]');
  setOptions(select, options);
  const set = (verb, disabled, why) => {
    const button = row.querySelector(`[data-verb="${verb}"]`);
    button.disabled = disabled;
    button.title = disabled ? why : '';
  };
  const whyBlocked = b.busy ? 'Busy: a job or an export uses it' : 'Inconsistent: it can only be removed';
  set('clear', blocked, whyBlocked);
  set('enable', blocked || b.recording, blocked ? whyBlocked : 'Already recording');
  set('disable', blocked || !b.recording, blocked ? whyBlocked : 'Already disabled');
  set('merge', blocked || options.length === 0, blocked ? whyBlocked : 'No other bitmap of a node of this size');
  select.disabled = options.length === 0;
  set('remove', b.busy, 'Busy: a job or an export uses it');
}
