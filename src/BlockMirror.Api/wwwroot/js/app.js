// Dashboard entry point: the views, the router and the refresh loops. Data comes only from the
// public REST API and the SSE event stream.
//
// Views (the URL's hash, so the browser's back button and links work):
//   #/nodes         every node, and the form that adds one
//   #/nodes/{name}  one node: its bitmaps, exports and jobs, and the mirror form
//   #/jobs          every listed job with its chart, and the finished jobs (history)
//   #/events        the event stream as a readable list
//
// Refresh strategy (why both events and polling):
// - Jobs publish events, so every event refreshes jobs and nodes at once. Events do not carry
//   progress, so while any job is not concluded GET /jobs is also polled every 500 ms: progress,
//   rates and the charts' samples.
// - Writes, node and bitmap changes publish no events, so nodes are polled every second while the
//   page is visible, and the shown node's bitmaps and exports with them. A dirty map is refetched
//   only when the bitmap's SHA-256 changed, so an idle map costs one small request per second.
// - EventSource reconnects by itself and sends Last-Event-ID, so no event is missed; if the
//   stream is unavailable (e.g. API keys are configured: EventSource cannot send them), jobs are
//   polled with the nodes instead.
import { api, apiKey, seg, setApiKey } from './api.js';
import { clearError, showError } from './messages.js';
import { initNodes, renderNodes } from './nodes.js';
import { createNodePage, refreshNodeMaps, updateNodePage } from './nodedetail.js';
import { drawCharts, isActive, renderJobs } from './jobs.js';
import { forget, sample } from './chart.js';
import { initHistory, refreshHistory } from './history.js';
import { JOB_EVENTS, addEvent } from './events.js';
import { setText } from './dom.js';

const RESOURCE_POLL_MS = 1000;
const JOB_POLL_MS = 500;
const JOB_END_EVENTS = new Set(['BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED']);

const state = { nodes: [], jobs: [], exports: [], bitmaps: [], events: null, route: { view: 'nodes' }, page: null };

/** Runs fn at most once at a time; calls made meanwhile fold into one more run afterwards. */
function coalesced(fn) {
  let running = null;
  let again = false;
  return () => {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      try {
        do {
          again = false;
          await fn();
        } while (again);
      } finally {
        running = null;
      }
    })();
    return running;
  };
}

/** Background refreshes report a broken connection once, in the header, not as a message per poll. */
function setOffline(error) {
  document.body.dataset.offline = error ? 'true' : 'false';
  document.title = error ? 'BlockMirror (offline)' : 'BlockMirror';
}

// ---- routing -----------------------------------------------------------------------------

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'nodes' && parts[1]) return { view: 'node', node: parts[1] };
  if (parts[0] === 'jobs' || parts[0] === 'events') return { view: parts[0] };
  return { view: 'nodes' };
}

function route() {
  state.route = parseRoute();
  const { view } = state.route;
  for (const section of document.querySelectorAll('main > .view')) section.hidden = section.dataset.view !== view;
  for (const link of document.querySelectorAll('[data-view-link]')) {
    link.classList.toggle('current', link.dataset.viewLink === view || (view === 'node' && link.dataset.viewLink === 'nodes'));
  }
  document.body.dataset.view = view;
  if (view !== 'node') state.page = null;
  renderAll();
  refreshAll();
  if (view === 'jobs') refreshHistoryNow();
  window.scrollTo(0, 0);
}

// ---- rendering ---------------------------------------------------------------------------

function renderAll() {
  renderNodes(ctx, state.nodes, state.route.node);
  renderJobList();
  renderNodePage();
}

function renderJobList() {
  const container = document.getElementById('jobs');
  document.getElementById('jobs-empty').hidden = state.jobs.length > 0;
  renderJobs(ctx, container, state.jobs);
  if (state.route.view === 'jobs') drawCharts(container);
  const active = state.jobs.filter(isActive).length;
  setText(document.querySelector('[data-testid="nav-jobs-count"]'), active ? String(active) : '');
}

function renderNodePage() {
  if (state.route.view !== 'node') return;
  const name = state.route.node;
  const node = state.nodes.find((n) => n.name === name);
  const missing = document.getElementById('node-missing');
  const container = document.getElementById('node-detail');
  if (!node) {
    // Not loaded yet, removed, or consumed by a completed mirror (the target node goes away).
    if (state.loaded) {
      missing.hidden = false;
      missing.textContent = `There is no node '${name}' (removed, or consumed as the target of a completed mirror).`;
      container.replaceChildren();
      state.page = null;
    }
    return;
  }
  missing.hidden = true;
  if (!state.page || state.page.name !== name) {
    state.page = createNodePage(ctx, container, name);
    state.bitmaps = [];
  }
  updateNodePage(ctx, state.page, {
    node, nodes: state.nodes, bitmaps: state.bitmaps, exports: state.exports, jobs: state.jobs,
  });
}

// ---- refreshing --------------------------------------------------------------------------

const refreshNodes = coalesced(async () => {
  try {
    const { items: nodes } = await api('GET', '/nodes');
    state.nodes = nodes;
    state.loaded = true;
    const { view, node } = state.route;
    const shown = view === 'node' ? nodes.find((n) => n.name === node) : null;
    if (shown) {
      const [bitmaps, exports] = await Promise.all([
        api('GET', `/nodes/${seg(node)}/bitmaps`).then((r) => r.items, () => []),
        api('GET', '/exports').then((r) => r.items),
      ]);
      state.bitmaps = bitmaps;
      state.exports = exports;
    }
    renderNodes(ctx, nodes, state.route.node);
    renderNodePage();
    if (shown && state.page) await refreshNodeMaps(state.page, shown);
    setOffline(null);
  } catch (e) {
    setOffline(e);
  }
});

const refreshJobs = coalesced(async () => {
  try {
    const { items: jobs } = await api('GET', '/jobs');
    const now = Date.now();
    for (const job of jobs) sample(job, now);
    forget(new Set(jobs.map((j) => j.id)));
    state.jobs = jobs;
    renderJobList();
    renderNodePage();
    setOffline(null);
  } catch (e) {
    setOffline(e);
  } finally {
    // Also after a failed refresh: a blip must not stop the live progress until the next event.
    scheduleJobPoll();
  }
});

const refreshHistoryNow = coalesced(async () => {
  if (state.route.view !== 'jobs') return;
  try {
    await refreshHistory();
  } catch (e) {
    setOffline(e);
  }
});

let jobTimer = null;
function scheduleJobPoll() {
  if (jobTimer || !state.jobs.some(isActive)) return;
  jobTimer = setTimeout(() => {
    jobTimer = null;
    if (!document.hidden) refreshJobs();
    else scheduleJobPoll();
  }, JOB_POLL_MS);
}

const refreshAll = () => Promise.all([refreshNodes(), refreshJobs()]);

/**
 * A user action started from origin (a button, a form): its error is shown next to it, a success
 * clears the last one there; the page refreshes either way.
 */
async function act(fn, origin) {
  try {
    await fn();
    clearError(origin);
  } catch (e) {
    showError(e, origin);
  } finally {
    await refreshAll();
    if (state.route.view === 'jobs') await refreshHistoryNow();
  }
}

const ctx = {
  act,
  navigate: (href) => {
    if (location.hash === href) route();
    else location.hash = href;
  },
  rerender: () => renderNodes(ctx, state.nodes, state.route.node),
};

function connectEvents() {
  const status = document.getElementById('events-status');
  const show = (s, text) => {
    status.dataset.state = s;
    status.textContent = text;
  };
  const source = new EventSource('/api/v1/events');
  state.events = source;
  source.onopen = () => {
    show('open', 'events: live');
    // Whatever happened while disconnected is in the replay, but state may have moved without events.
    refreshAll();
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) show('closed', 'events: unavailable (polling)');
    else show('connecting', 'events: reconnecting');
  };
  for (const name of JOB_EVENTS) {
    source.addEventListener(name, (e) => {
      status.dataset.lastEventId = e.lastEventId;
      addEvent(name, e);
      refreshJobs();
      refreshNodes();
      if (JOB_END_EVENTS.has(name)) refreshHistoryNow();
    });
  }
}

function initApiKey() {
  const input = document.getElementById('api-key');
  input.value = apiKey();
  input.addEventListener('change', () => {
    setApiKey(input.value.trim());
    refreshAll();
  });
}

initApiKey();
initNodes(ctx);
initHistory(ctx);
window.addEventListener('hashchange', route);
route();
connectEvents();
setInterval(() => {
  if (document.hidden) return;
  refreshNodes();
  if (state.events?.readyState !== EventSource.OPEN) refreshJobs();
  // Charts move with time even when no sample arrives (a paused job).
  if (state.route.view === 'jobs') drawCharts(document.getElementById('jobs'));
}, RESOURCE_POLL_MS);
document.addEventListener('visibilitychange', () => {
  if (!document.hidden) refreshAll();
});
