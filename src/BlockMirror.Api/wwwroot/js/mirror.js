// The start-a-mirror form on a node's page: the node is the device. The target defaults to a node
// of the device's size (a mirror needs one: size-mismatch otherwise); when none is free the form
// offers to create one with the device's size, and creates it only when the mirror is started.
import { api, seg } from './api.js';
import { h, setOptions } from './dom.js';
import { formatBytes, parseSize } from './format.js';

const NEW_TARGET = '\u0000new';

const select = (testid, options) => h('select', { 'data-testid': testid },
  options.map(([value, label]) => h('option', { value }, label ?? value)));
const errorPolicies = [['report'], ['ignore'], ['stop'], ['enospc']];

export function createMirrorForm(ctx, device) {
  const f = {
    id: h('input', { 'data-testid': 'mirror-id', placeholder: device, size: 12 }),
    target: h('select', { 'data-testid': 'mirror-target' }),
    newName: h('input', { 'data-testid': 'mirror-new-name', value: `${device}-copy`, size: 14 }),
    newPath: h('input', { 'data-testid': 'mirror-new-path', value: `${device}-copy.img`, size: 18, title: 'Relative to the image root' }),
    sync: select('mirror-sync', [['full'], ['top'], ['none']]),
    bitmap: h('select', { 'data-testid': 'mirror-bitmap' }),
    bitmapMode: select('mirror-bitmap-mode', [['', '(default: always)'], ['always'], ['never'], ['on-success']]),
    granularity: h('input', { 'data-testid': 'mirror-granularity', placeholder: 'default', size: 8 }),
    bufSize: h('input', { 'data-testid': 'mirror-buf-size', placeholder: '16M', size: 8 }),
    speed: h('input', { 'data-testid': 'mirror-speed', placeholder: '0 = unlimited', size: 10 }),
    copyMode: select('mirror-copy-mode', [['background'], ['write-blocking']]),
    onSourceError: select('mirror-on-source-error', errorPolicies),
    onTargetError: select('mirror-on-target-error', errorPolicies),
    autoFinalize: h('input', { type: 'checkbox', 'data-testid': 'mirror-auto-finalize', checked: true }),
    autoDismiss: h('input', { type: 'checkbox', 'data-testid': 'mirror-auto-dismiss', checked: true }),
    unmap: h('input', { type: 'checkbox', 'data-testid': 'mirror-unmap', checked: true }),
  };
  const newTarget = h('div', { class: 'new-target', 'data-testid': 'mirror-new-target' },
    h('label', {}, 'New node ', f.newName), h('label', {}, 'Path ', f.newPath),
    h('span', { class: 'muted', 'data-role': 'new-size' }));
  const busyNote = h('p', { class: 'muted hint', 'data-testid': 'mirror-busy', hidden: true });
  const start = h('button', { type: 'submit', 'data-testid': 'mirror-start' }, 'Start mirror');
  const form = h('form', { class: 'mirror-form', 'data-testid': 'mirror-form', 'data-action-scope': true, autocomplete: 'off' },
    h('h3', {}, 'Start a mirror from ', h('span', { class: 'mono' }, device)),
    h('div', { class: 'grid' },
      h('label', {}, 'Target ', f.target),
      h('label', {}, 'Sync ', f.sync),
      h('label', {}, 'Bitmap ', f.bitmap),
      h('label', {}, 'Bitmap mode ', f.bitmapMode),
      h('label', {}, 'Job id ', f.id),
      h('label', {}, 'Speed (bytes/s) ', f.speed)),
    newTarget,
    h('details', {},
      h('summary', {}, 'More options'),
      h('div', { class: 'grid' },
        h('label', {}, 'Granularity ', f.granularity),
        h('label', {}, 'Buffer size ', f.bufSize),
        h('label', {}, 'Copy mode ', f.copyMode),
        h('label', {}, 'On source error ', f.onSourceError),
        h('label', {}, 'On target error ', f.onTargetError)),
      h('div', { class: 'checks' },
        h('label', {}, f.autoFinalize, ' auto-finalize'),
        h('label', {}, f.autoDismiss, ' auto-dismiss'),
        h('label', {}, f.unmap, ' unmap'))),
    busyNote,
    h('div', { class: 'form-actions' }, start),
    h('div', { class: 'action-error', 'data-testid': 'action-error', hidden: true }));

  f.target.addEventListener('change', () => {
    f.target.dataset.touched = '1';
    newTarget.hidden = f.target.value !== NEW_TARGET;
  });
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    ctx.act(() => startMirror(f, device, Number(form.dataset.size)), form);
  });
  form.update = (nodes) => updateForm(form, f, newTarget, busyNote, start, device, nodes);
  return form;
}

/** Target choices: every other node, those that cannot be a target shown with the reason and off. */
function updateForm(form, f, newTarget, busyNote, start, device, nodes) {
  const me = nodes.find((n) => n.name === device);
  if (!me) return;
  form.dataset.size = String(me.size);
  const why = (n) => {
    if (n.size !== me.size) return `size ${formatBytes(n.size)} ≠ ${formatBytes(me.size)}`;
    if (n.busy) return `busy: ${n.jobId ?? 'in use'}`;
    if (n.readOnly) return 'read-only';
    if (n.exports.length) return 'exported';
    return null;
  };
  const others = nodes.filter((n) => n.name !== device);
  const options = [
    { value: NEW_TARGET, label: `+ new node (${formatBytes(me.size)})` },
    ...others.map((n) => ({ value: n.name, label: why(n) ? `${n.name} (${why(n)})` : n.name, disabled: !!why(n) })),
  ];
  setOptions(f.target, options);
  for (const o of f.target.options) o.disabled = options.find((x) => x.value === o.value)?.disabled ?? false;
  // A fresh form picks a free node of the device's size, else offers to create one.
  const current = options.find((o) => o.value === f.target.value);
  if (!f.target.dataset.touched || !current || current.disabled) {
    const free = options.find((o) => o.value !== NEW_TARGET && !o.disabled);
    f.target.value = free ? free.value : NEW_TARGET;
  }
  newTarget.hidden = f.target.value !== NEW_TARGET;
  newTarget.querySelector('[data-role="new-size"]').textContent = `size ${formatBytes(me.size)} (the device's)`;
  setOptions(f.bitmap, [{ value: '', label: '(none)' }, ...me.bitmaps.map((b) => ({ value: b, label: b }))]);
  busyNote.hidden = !me.busy;
  busyNote.textContent = me.busy ? `The node is in use by job ${me.jobId ?? ''}: a node takes part in one job at a time.` : '';
  start.disabled = me.busy;
  start.title = me.busy ? 'The node is busy (node-busy)' : '';
}

async function startMirror(f, device, size) {
  const value = (el) => el.value.trim();
  // Every field is read (and sizes parsed) before anything is created: a typo changes nothing.
  const body = {
    id: value(f.id) || null,
    device,
    target: f.target.value === NEW_TARGET ? value(f.newName) : f.target.value,
    sync: f.sync.value,
    bitmap: f.bitmap.value || null,
    bitmapMode: f.bitmapMode.value || null,
    granularity: parseSize(f.granularity.value, 'Granularity'),
    bufSize: parseSize(f.bufSize.value, 'Buffer size'),
    speed: parseSize(f.speed.value, 'Speed') ?? 0,
    copyMode: f.copyMode.value,
    onSourceError: f.onSourceError.value,
    onTargetError: f.onTargetError.value,
    autoFinalize: f.autoFinalize.checked,
    autoDismiss: f.autoDismiss.checked,
    unmap: f.unmap.checked,
  };
  let created = null;
  if (f.target.value === NEW_TARGET) {
    created = body.target;
    await api('POST', '/nodes', { name: created, driver: 'raw', path: value(f.newPath) || `${created}.img`, create: { size } });
  }
  try {
    await api('POST', '/jobs/mirror', body);
  } catch (e) {
    // The mirror was refused: the node made for it goes too, so a refused start changes nothing.
    if (created) await api('DELETE', `/nodes/${seg(created)}?deleteImage=true`).catch(() => {});
    throw e;
  }
  f.id.value = '';
  delete f.target.dataset.touched;
}
