// The dataloom web console: reads /v1 (state, schemas, rejections, clients) and follows
// /v1/events (server-sent events, read with fetch so the API key can go in a header).
// Everything received is written with textContent: values are never parsed as HTML.
'use strict';

const MAX_STATE_PAGES = 20; // 20 pages of 1000 topics
const MAX_REJECTIONS = 100;
const $ = (id) => document.getElementById(id);
const rows = new Map(); // topic -> <tr>
let key = sessionStorage.getItem('dataloom.key') || '';
let stream = null; // AbortController of the open event stream
let ticks = 0;
let truncated = false; // the state has more topics than the console loaded

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (key) h.Authorization = 'Bearer ' + key;
  return h;
}

async function getJson(path) {
  const r = await fetch(path, { headers: headers(), cache: 'no-store' });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((body.error || r.status) + ': ' + (body.detail || r.statusText));
  return body;
}

function cell(tr, text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function shortValue(item) {
  const text = item.encoding === 'json' ? JSON.stringify(item.value) : String(item.value);
  return text.length > 300 ? text.slice(0, 300) + '…' : text;
}

function when(rfc3339) {
  return rfc3339 ? new Date(rfc3339).toLocaleTimeString() : '';
}

// --- state -----------------------------------------------------------------------------
function setRow(item, flash) {
  let tr = rows.get(item.topic);
  if (tr && item.revision < Number(tr.dataset.revision)) return; // an older view of the topic
  const fresh = document.createElement('tr');
  fresh.dataset.topic = item.topic;
  fresh.dataset.revision = String(item.revision);
  cell(fresh, item.topic, 'mono topic');
  cell(fresh, shortValue(item), 'value');
  cell(fresh, when(item.updated_at), 'updated');
  const badge = cell(fresh, '', 'schema');
  if (item.schema) {
    const b = document.createElement('span');
    b.className = 'badge';
    b.textContent = item.schema.filter + ' v' + item.schema.version;
    badge.appendChild(b);
  }
  if (flash) fresh.className = 'flash';
  const body = $('state').tBodies[0];
  if (tr) {
    body.replaceChild(fresh, tr);
  } else {
    let next = null;
    for (const [t, r] of rows) if (t > item.topic && (!next || t < next.dataset.topic)) next = r;
    body.insertBefore(fresh, next);
  }
  rows.set(item.topic, fresh);
  applyFilter(fresh);
  showCount();
}

function showCount() {
  $('state-count').textContent = truncated ? '(first ' + rows.size + ' topics)' : '(' + rows.size + ')';
}

function deleteRow(topic) {
  const tr = rows.get(topic);
  if (tr) tr.remove();
  rows.delete(topic);
  showCount();
}

function applyFilter(tr) {
  const f = $('state-filter').value;
  tr.hidden = f !== '' && !tr.dataset.topic.includes(f);
}

async function loadState() {
  const seen = new Set();
  let cursor = null;
  let pages = 0;
  do {
    const q = '/v1/state?limit=1000' + (cursor ? '&cursor=' + encodeURIComponent(cursor) : '');
    const page = await getJson(q);
    for (const item of page.items) {
      seen.add(item.topic);
      setRow(item, false);
    }
    cursor = page.next_cursor;
    pages += 1;
  } while (cursor && pages < MAX_STATE_PAGES);
  truncated = Boolean(cursor);
  if (!cursor) for (const topic of [...rows.keys()]) if (!seen.has(topic)) deleteRow(topic);
  showCount();
}

// --- schemas, rejections, clients --------------------------------------------------------
async function loadSchemas() {
  const list = await getJson('/v1/schemas?count_invalid=true');
  const body = $('schemas').tBodies[0];
  body.replaceChildren();
  for (const s of list.items) {
    const tr = document.createElement('tr');
    tr.dataset.filter = s.filter || '';
    cell(tr, s.filter || '', 'mono');
    cell(tr, 'v' + s.version);
    cell(tr, s.invalid_retained === undefined ? '' : String(s.invalid_retained), 'invalid');
    body.appendChild(tr);
  }
}

function addRejection(r) {
  const body = $('rejections').tBodies[0];
  if (body.querySelector('tr[data-seq="' + r.seq + '"]')) return;
  const tr = document.createElement('tr');
  tr.dataset.seq = String(r.seq);
  cell(tr, when(r.at));
  cell(tr, r.schema + ' v' + r.version, 'mono');
  cell(tr, r.pointer || '(root)', 'mono pointer');
  cell(tr, r.error, 'error');
  cell(tr, r.topic, 'mono');
  cell(tr, r.client_id, 'mono client');
  body.insertBefore(tr, body.firstChild);
  while (body.rows.length > MAX_REJECTIONS) body.lastChild.remove();
}

async function loadRejections() {
  const list = await getJson('/v1/rejections');
  for (const r of list.items) addRejection(r);
}

async function loadClients() {
  const body = $('clients').tBodies[0];
  try {
    const list = await getJson('/v1/clients?limit=200');
    $('clients-note').textContent = '';
    $('clients-count').textContent = '(' + list.total + ')';
    body.replaceChildren();
    for (const c of list.items) {
      const tr = document.createElement('tr');
      cell(tr, c.client_id, 'mono');
      cell(tr, c.online ? 'yes' : 'no');
      cell(tr, c.persistent ? 'yes' : 'no');
      cell(tr, String(c.subscriptions));
      cell(tr, String(c.queued));
      cell(tr, c.owner || '');
      body.appendChild(tr);
    }
  } catch (e) {
    body.replaceChildren();
    $('clients-note').textContent = 'Clients: ' + e.message;
  }
}

function showStats(s) {
  $('rate-in').textContent = String(s.rates.messages_received);
  $('rate-out').textContent = String(s.rates.messages_sent);
  $('stat-connections').textContent = String(s.connections);
  $('stat-sessions').textContent = String(s.sessions);
  $('stat-retained').textContent = String(s.retained);
  $('stat-schemas').textContent = String(s.schemas);
  $('stat-revision').textContent = String(s.revision);
  ticks += 1;
  if (ticks % 3 === 0) loadClients();
}

// --- the event stream ------------------------------------------------------------------
function status(on, text) {
  $('status').className = 'status ' + (on ? 'on' : 'off');
  $('status').textContent = text;
}

async function reloadAll() {
  await Promise.all([loadState(), loadSchemas(), loadRejections(), loadClients()]);
}

function onEvent(name, data) {
  const d = JSON.parse(data);
  if (name === 'ready') {
    status(true, 'live');
    reloadAll().catch((e) => status(false, e.message));
  } else if (name === 'state') {
    if (d.deleted) deleteRow(d.topic);
    else setRow(d, true);
  } else if (name === 'schema') {
    loadSchemas().then(loadState).catch(() => {});
  } else if (name === 'rejection') {
    addRejection(d);
  } else if (name === 'stats') {
    showStats(d);
  } else if (name === 'resync') {
    loadState().catch(() => {});
  }
}

async function follow(signal) {
  const r = await fetch('/v1/events', { headers: headers({ Accept: 'text/event-stream' }), signal });
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    throw new Error((body.error || r.status) + ': ' + (body.detail || ''));
  }
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n/g, '\n');
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let name = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) onEvent(name, data.join('\n'));
    }
  }
}

async function connect() {
  if (stream) stream.abort();
  const mine = new AbortController();
  stream = mine;
  let delay = 500;
  while (!mine.signal.aborted) {
    try {
      await follow(mine.signal);
      status(false, 'disconnected, retrying');
    } catch (e) {
      if (mine.signal.aborted) return;
      status(false, e.message);
    }
    await new Promise((ok) => setTimeout(ok, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

// --- writes ----------------------------------------------------------------------------
// `$schema/` topics spell `+`, `#` and `%` of a filter as %2B, %23, %25.
function schemaTopic(filter) {
  return '$schema/' + filter.replace(/%/g, '%25').replace(/\+/g, '%2B').replace(/#/g, '%23');
}

function statePath(topic) {
  return '/v1/state/' + topic.split('/').map(encodeURIComponent).join('/');
}

async function put(topic, body, contentType, out) {
  out.className = 'result';
  out.textContent = '…';
  if (!key) {
    out.className = 'result err';
    out.textContent = 'Writing needs an API key (enter it at the top).';
    return;
  }
  const r = await fetch(statePath(topic), {
    method: 'PUT',
    headers: headers({ 'Content-Type': contentType }),
    body,
  });
  const answer = await r.json().catch(() => ({}));
  out.className = 'result ' + (r.ok ? 'ok' : 'err');
  out.textContent = r.ok
    ? 'revision ' + answer.revision + (answer.note ? ': ' + answer.note : '')
    : r.status + ' ' + answer.error + ': ' + answer.detail;
}

function setKey(k) {
  key = k;
  if (k) sessionStorage.setItem('dataloom.key', k);
  else sessionStorage.removeItem('dataloom.key');
  $('key-state').textContent = k ? 'key ' + k.split(':')[0] : 'anonymous (read-only)';
  connect();
}

document.addEventListener('DOMContentLoaded', () => {
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    setKey($('key').value.trim());
    $('key').value = '';
  });
  $('forget-key').addEventListener('click', () => setKey(''));
  $('state-filter').addEventListener('input', () => rows.forEach(applyFilter));
  $('publish-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const value = $('publish-value').value;
    let type = 'text/plain';
    try { JSON.parse(value); type = 'application/json'; } catch (_) { /* stays text */ }
    put($('publish-topic').value.trim(), value, type, $('publish-result'));
  });
  $('schema-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const topic = schemaTopic($('schema-filter').value.trim());
    put(topic, $('schema-document').value, 'application/schema+json', $('schema-result'));
  });
  setKey(key);
});
