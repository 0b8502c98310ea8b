// Dirty bitmaps per node: badges, counts, the dirty map strip and the bitmap commands.
import { api, seg } from './api.js';
import { h, reconcile, setOptions, setText } from './dom.js';
import { drawDirtyMap } from './dirtymap.js';
import { formatBytes, parseSize } from './format.js';

/** nodes: Node[]; bitmaps: Map(nodeName → Bitmap[]). */
export function renderBitmaps(ctx, nodes, bitmaps) {
  const groups = document.getElementById('bitmap-groups');
  document.getElementById('bitmaps-empty').hidden = nodes.length > 0;
  const all = nodes.flatMap((n) => (bitmaps.get(n.name) ?? []).map((b) => ({ ...b, size: n.size })));
  reconcile(groups, nodes, (n) => n.name, (n) => createGroup(ctx, n), (el, n) => {
    setText(el.querySelector('[data-role="size"]'), formatBytes(n.size));
    const list = el.querySelector('.bitmap-list');
    const items = bitmaps.get(n.name) ?? [];
    el.querySelector('[data-role="empty"]').hidden = items.length > 0;
    reconcile(list, items, (b) => b.name, (b) => createBitmap(ctx, b), (row, b) => updateBitmap(row, b, n, all));
  });
}

/** Redraws every map whose bitmap content changed since it was last drawn (its SHA-256 differs). */
export async function refreshMaps(nodes) {
  const sizes = new Map(nodes.map((n) => [n.name, n.size]));
  const canvases = [...document.querySelectorAll('#bitmap-groups canvas.dirty-map')];
  await Promise.all(canvases.map(async (canvas) => {
    const { node, bitmap } = canvas.dataset;
    const size = sizes.get(node);
    if (size == null) return;
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

function createGroup(ctx, node) {
  const name = h('input', { 'data-testid': 'bitmap-name', placeholder: 'b0', size: 10, required: true });
  const granularity = h('input', { 'data-testid': 'bitmap-granularity', placeholder: '64K', size: 6 });
  const persistent = h('input', { type: 'checkbox', 'data-testid': 'bitmap-persistent' });
  const disabled = h('input', { type: 'checkbox', 'data-testid': 'bitmap-disabled' });
  const form = h('form', { class: 'inline-form', 'data-testid': 'bitmap-form', autocomplete: 'off' },
    h('strong', {}, 'New bitmap'),
    h('label', {}, 'Name ', name),
    h('label', {}, 'Granularity ', granularity),
    h('label', {}, persistent, ' persistent'),
    h('label', {}, disabled, ' disabled'),
    h('button', { type: 'submit', 'data-testid': 'bitmap-add' }, 'Add bitmap'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    ctx.act(async () => {
      await api('POST', `/nodes/${seg(node.name)}/bitmaps`, {
        name: name.value.trim(),
        granularity: parseSize(granularity.value, 'Granularity'),
        persistent: persistent.checked,
        disabled: disabled.checked,
      });
      form.reset();
    });
  });
  return h('article', { class: 'card', 'data-testid': 'node-bitmaps', 'data-node': node.name },
    h('header', {}, h('h3', {}, node.name), h('span', { class: 'muted', 'data-role': 'size' })),
    h('div', { class: 'bitmap-list' }),
    h('p', { class: 'muted empty', 'data-role': 'empty' }, 'No bitmaps on this node.'),
    form);
}

function createBitmap(ctx, b) {
  const base = `/nodes/${seg(b.node)}/bitmaps/${seg(b.name)}`;
  const button = (verb, label, run, cls) => h('button', {
    type: 'button', 'data-testid': `bitmap-${verb}`, 'data-verb': verb, class: cls, onclick: () => ctx.act(run),
  }, label);
  const source = h('select', { 'data-testid': 'bitmap-merge-source', title: 'Bitmap to OR into this one' });
  return h('div', { class: 'bitmap', 'data-testid': 'bitmap', 'data-node': b.node, 'data-bitmap': b.name },
    h('div', { class: 'bitmap-head' },
      h('strong', { class: 'mono' }, b.name),
      h('span', { class: 'muted', 'data-role': 'granularity' }),
      h('span', { 'data-testid': 'bitmap-count' }),
      h('span', { class: 'badges', 'data-role': 'badges' })),
    h('canvas', { class: 'dirty-map', 'data-testid': 'dirty-map', 'data-node': b.node, 'data-bitmap': b.name, height: 18 }),
    h('div', { class: 'actions' },
      button('clear', 'Clear', () => api('POST', `${base}/clear`)),
      button('enable', 'Enable', () => api('POST', `${base}/enable`)),
      button('disable', 'Disable', () => api('POST', `${base}/disable`)),
      h('span', { class: 'sep' }),
      h('label', {}, 'merge from ', source),
      button('merge', 'Merge', () => {
        const [node, name] = source.value.split('/');
        return api('POST', `${base}/merge`, { sources: [{ node, name }] });
      }),
      h('span', { class: 'sep' }),
      button('remove', 'Remove', () => api('DELETE', base), 'danger')));
}

function updateBitmap(row, b, node, all) {
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
  // Why it cannot be trusted (a damaged journal, a replaced image, ...): the badge's tooltip.
  const inconsistentBadge = holder.querySelector('[data-testid="badge-inconsistent"]');
  if (inconsistentBadge) inconsistentBadge.title = b.inconsistentReason ?? '';
  Object.assign(row.dataset, {
    recording: String(b.recording), busy: String(b.busy), persistent: String(b.persistent), inconsistent: String(b.inconsistent),
  });

  // Guards as the service checks them (API.md): the buttons only offer what would be accepted.
  const blocked = b.busy || b.inconsistent;
  const sources = all.filter((s) => s.size === node.size && !(s.node === b.node && s.name === b.name))
    .map((s) => ({ value: `${s.node}/${s.name}`, label: s.node === b.node ? s.name : `${s.node}/${s.name}` }));
  const select = row.querySelector('[data-testid="bitmap-merge-source"]');
  setOptions(select, sources);
  const set = (verb, disabled) => { row.querySelector(`[data-verb="${verb}"]`).disabled = disabled; };
  set('clear', blocked);
  set('enable', blocked || b.recording);
  set('disable', blocked || !b.recording);
  set('merge', blocked || sources.length === 0);
  select.disabled = sources.length === 0;
  set('remove', b.busy);
}
