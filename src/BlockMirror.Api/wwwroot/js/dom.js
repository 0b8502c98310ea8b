// Tiny DOM helpers: an element builder and a keyed list update that reuses elements, so inputs
// inside a list (a job's speed field, a node's bitmap form) keep focus and text across refreshes.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/**
 * Makes container's children mirror items, in order: an element per key, created once by
 * create(item) and brought up to date by update(el, item) on every call; stale ones are removed.
 */
export function reconcile(container, items, keyOf, create, update) {
  const existing = new Map();
  for (const el of [...container.children]) existing.set(el.dataset.key, el);
  let previous = null;
  for (const item of items) {
    const key = keyOf(item);
    let el = existing.get(key);
    if (el) existing.delete(key);
    else {
      el = create(item);
      el.dataset.key = key;
    }
    update(el, item);
    const expected = previous ? previous.nextElementSibling : container.firstElementChild;
    if (el !== expected) container.insertBefore(el, expected);
    previous = el;
  }
  for (const el of existing.values()) el.remove();
}

/** Sets text only when it changed: avoids needless layout work on every poll. */
export function setText(el, text) {
  const t = String(text);
  if (el.textContent !== t) el.textContent = t;
}

/** Replaces a select's options, keeping the current choice when it still exists. */
export function setOptions(select, options) {
  const current = select.value;
  const wanted = options.map((o) => `${o.value}\u0000${o.label}`).join('\u0001');
  if (select.dataset.options !== wanted) {
    select.replaceChildren(...options.map((o) => h('option', { value: o.value }, o.label)));
    select.dataset.options = wanted;
  }
  if (options.some((o) => o.value === current)) select.value = current;
}
