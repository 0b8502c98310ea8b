// Dashboard entry point. Data comes only from the public REST API and the SSE event stream.
//
// Refresh strategy (why both events and polling):
// - Jobs publish events (API.md "Events"), so every event refreshes jobs and nodes at once.
//   Events do not carry progress, so while any job is not concluded GET /jobs is also polled
//   every 500 ms for live progress, rates and ETA.
// - Writes, node and bitmap changes publish no events, so nodes and their bitmaps are polled
//   every second while the page is visible. A dirty map is refetched only when the bitmap's
//   SHA-256 changed, so an idle map costs one small request per second.
// - EventSource reconnects by itself and sends Last-Event-ID, so no event is missed; if the
//   stream is unavailable (e.g. API keys are configured: EventSource cannot send them), jobs are
//   polled with the nodes instead.
import { api, apiKey, setApiKey } from './api.js';
import { h } from './dom.js';
import { showError } from './messages.js';
import { initNodes, renderNodes } from './nodes.js';
import { refreshMaps, renderBitmaps } from './bitmaps.js';
import { initJobs, isActive, renderJobs, renderMirrorChoices } from './jobs.js';

const RESOURCE_POLL_MS = 1000;
const JOB_POLL_MS = 500;
const EVENT_LOG_SIZE = 50;
const JOB_EVENTS = ['JOB_STATUS_CHANGE', 'BLOCK_JOB_READY', 'BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED',
  'BLOCK_JOB_PENDING', 'BLOCK_JOB_ERROR'];

const state = { nodes: [], jobs: [], events: null };

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

const refreshNodes = coalesced(async () => {
  try {
    const { items: nodes } = await api('GET', '/nodes');
    const lists = await Promise.all(nodes.map((n) => api('GET', `/nodes/${encodeURIComponent(n.name)}/bitmaps`)
      .then((r) => [n.name, r.items], () => [n.name, []])));
    state.nodes = nodes;
    const bitmaps = new Map(lists);
    renderNodes(ctx, nodes);
    renderBitmaps(ctx, nodes, bitmaps);
    renderMirrorChoices(nodes);
    await refreshMaps(nodes);
    setOffline(null);
  } catch (e) {
    setOffline(e);
  }
});

const refreshJobs = coalesced(async () => {
  try {
    const { items: jobs } = await api('GET', '/jobs');
    state.jobs = jobs;
    renderJobs(ctx, jobs);
    scheduleJobPoll();
    setOffline(null);
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

/** A user action: errors go to the message area; the page refreshes either way. */
async function act(fn) {
  try {
    await fn();
  } catch (e) {
    showError(e);
  } finally {
    await refreshAll();
  }
}

const ctx = { act, renderMirrorChoices: () => renderMirrorChoices(state.nodes) };

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
  const log = document.getElementById('event-log');
  for (const name of JOB_EVENTS) {
    source.addEventListener(name, (e) => {
      status.dataset.lastEventId = e.lastEventId;
      log.prepend(h('li', { value: e.lastEventId }, `${name} ${e.data}`));
      while (log.children.length > EVENT_LOG_SIZE) log.lastElementChild.remove();
      refreshJobs();
      refreshNodes();
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
initJobs(ctx);
connectEvents();
refreshAll();
setInterval(() => {
  if (document.hidden) return;
  refreshNodes();
  if (state.events?.readyState !== EventSource.OPEN) refreshJobs();
}, RESOURCE_POLL_MS);
document.addEventListener('visibilitychange', () => {
  if (!document.hidden) refreshAll();
});
