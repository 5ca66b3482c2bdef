#!/usr/bin/env node
// stream.mjs follows an edge's SSE stream with the npm eventsource library
// (pinned in package-lock.json), the way a Node.js consumer does: an
// application key in the Authorization header (through the library's
// fetch option), and the library's own reconnection with Last-Event-ID.
//
//   ES_URL='http://127.0.0.1:7700/v1/stream?types=billing.*' ES_KEY=hk_... \
//   ES_EVENTS='billing.invoice.paid,herald.gap' node stream.mjs [--watch-stdin]
//
// ES_EVENTS names the SSE event names to listen for (Herald's event: is the
// CloudEvents type, so onmessage alone sees nothing). The key travels in
// the environment, where ps does not show it. Every happening is one JSON
// line on standard output:
//
//   {"kind": "request", "n": 1, "lastEventId": "...", "authorization": true}
//        the library fetches the stream (n counts its requests; lastEventId
//        is the Last-Event-ID header it sent, "" when none)
//   {"kind": "response", "n": 1, "status": 200, "body": "..."}   (body only when not 200)
//   {"kind": "open", "readyState": 1}
//   {"kind": "event", "type": "...", "id": "...", "data": "..."}  id: the event's lastEventId
//   {"kind": "error", "code": 401 | null, "message": "..." | null,
//    "readyState": 0 | 2, "reconnectIn": 2000 | null}
//        the library's error event; reconnectIn is the delay the library
//        gave its reconnection timer (set from the stream's retry: field,
//        3000 without one), null when it does not reconnect (readyState 2)
//
// With --watch-stdin the script exits when its standard input closes, so it
// never outlives the test that started it. Exit code 2: bad usage.
import { EventSource } from 'eventsource';

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const url = process.env.ES_URL;
const key = process.env.ES_KEY ?? '';
const names = (process.env.ES_EVENTS ?? '').split(',').filter(Boolean);
if (!url || names.length === 0) {
  console.error('stream: set ES_URL and ES_EVENTS (and ES_KEY)');
  process.exit(2);
}

let es;
const stop = () => {
  es?.close();
  process.exit(0);
};
if (process.argv.includes('--watch-stdin')) {
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.resume();
}

// The library schedules its reconnection with setTimeout right after it
// dispatches the error event, with the interval the stream's retry: field
// set. While an error listener runs, the next timer is that one.
let armed = null;
const realSetTimeout = globalThis.setTimeout;
globalThis.setTimeout = function (fn, delay, ...args) {
  if (armed) {
    armed.reconnectIn = delay;
    armed = null;
  }
  return realSetTimeout.call(this, fn, delay, ...args);
};

let requests = 0;
async function withKey(input, init) {
  const n = ++requests;
  const headers = new Headers(init?.headers);
  if (key) headers.set('Authorization', `Bearer ${key}`);
  out({ kind: 'request', n, lastEventId: headers.get('Last-Event-ID') ?? '', authorization: headers.has('Authorization') });
  const res = await fetch(input, { ...init, headers });
  if (res.status === 200) {
    out({ kind: 'response', n, status: 200 });
  } else {
    out({ kind: 'response', n, status: res.status, body: await res.clone().text() });
  }
  return res;
}

es = new EventSource(url, { fetch: withKey });
es.addEventListener('open', () => out({ kind: 'open', readyState: es.readyState }));
es.addEventListener('error', (ev) => {
  const line = { kind: 'error', code: ev.code ?? null, message: ev.message ?? null, readyState: es.readyState, reconnectIn: null };
  if (es.readyState === EventSource.CONNECTING) armed = line;
  // The timer is set in the same task; print once it is known.
  queueMicrotask(() => {
    armed = null;
    out(line);
  });
});
for (const name of names) {
  es.addEventListener(name, (ev) => out({ kind: 'event', type: ev.type, id: ev.lastEventId, data: ev.data }));
}
