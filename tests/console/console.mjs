#!/usr/bin/env node
// console.mjs drives the edge's live event console (GET /) in Debian's
// headless Chromium with playwright-core (pinned in package-lock.json; it
// downloads no browser): the page's own EventSource streams from the edge.
//
//   CONSOLE_URL='http://127.0.0.1:7700/#token=...&types=...' node console.mjs [--watch-stdin]
//
// CHROMIUM names the browser (default /usr/bin/chromium). The test sends
// one JSON command a line on standard input and reads one JSON answer a
// line on standard output, in order, each with the command's seq:
//
//   {"seq": 1, "cmd": "open"}                                load CONSOLE_URL
//   {"seq": 2, "cmd": "fill", "field": "types", "value": "..."}
//   {"seq": 3, "cmd": "click", "button": "connect" | "pause" | "resume" | "clear"}
//   {"seq": 4, "cmd": "wait", "state": "open", "opens": 2, "count": 5}
//        wait (30s at most) until the page's state, connection count and
//        event count are these (each optional; opens and count at least),
//        and its message holds messageHas (optional)
//   {"seq": 5, "cmd": "snapshot"}
//
// Every answer is the page as it stands:
//
//   {"seq": n, "kind": "page", "state": "open", "message": "", "count": 5,
//    "notices": 0, "opens": 1, "cursor": "...",
//    "events": [{"kind": "event" | "notice", "cursor", "type", "id"}],
//    "requests": [{"lastEventId": "...", "query": {...}, "status": 200}],
//    "protocols": ["h2", ...]}
//   {"seq": n, "kind": "error", "error": "...", ...the page as above, when it can be read}
//
// requests are the stream requests the browser made so far (the token left
// out), with the Last-Event-ID header each carried and the status of its
// answer (0: none; Chromium shows the headers of a request that never got
// an answer without Last-Event-ID); protocols are the protocols of the
// stream responses (h2, http/1.1), as Chromium's network stack saw them. Other lines: {"kind":
// "ready"} once the browser runs, {"kind": "console", "text"} for the
// page's errors. With --watch-stdin the script exits when its standard input
// closes. Exit code 2: bad usage.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const pageURL = process.env.CONSOLE_URL;
if (!pageURL) {
  console.error('console: set CONSOLE_URL');
  process.exit(2);
}

const profile = mkdtempSync(join(tmpdir(), 'herald-console-'));
// A fresh profile each run (playwright passes it as --user-data-dir).
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  ignoreHTTPSErrors: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const page = context.pages()[0] ?? await context.newPage();

let finished = false;
async function finish(code) {
  if (finished) return;
  finished = true;
  try { await context.close(); } catch (_) { /* already gone */ }
  rmSync(profile, { recursive: true, force: true });
  process.exit(code);
}

const requests = [];
const entries = new Map(); // request -> its entry in requests
page.on('request', async (req) => {
  const url = new URL(req.url());
  if (url.pathname !== '/v1/stream') return;
  const entry = { lastEventId: '', query: {}, status: 0 };
  requests.push(entry);
  entries.set(req, entry);
  for (const [k, v] of url.searchParams) {
    if (k !== 'access_token') entry.query[k] = v;
  }
  const headers = await req.allHeaders();
  entry.lastEventId = headers['last-event-id'] ?? '';
});
page.on('response', (res) => {
  const entry = entries.get(res.request());
  if (entry) entry.status = res.status();
});
// The protocol of every stream response (h2, http/1.1), as Chromium's
// network stack saw it.
const protocols = [];
const cdp = await context.newCDPSession(page);
cdp.on('Network.responseReceived', (ev) => {
  if (new URL(ev.response.url).pathname === '/v1/stream') protocols.push(ev.response.protocol ?? '');
});
await cdp.send('Network.enable');
page.on('console', (msg) => {
  if (msg.type() === 'error') out({ kind: 'console', text: msg.text() });
});
page.on('pageerror', (err) => out({ kind: 'console', text: String(err) }));

async function snapshot(seq) {
  const s = await page.evaluate(() => {
    const text = (id) => document.querySelector(`[data-testid="${id}"]`).textContent;
    return {
      state: document.querySelector('[data-testid="state"]').dataset.state,
      message: text('message'),
      count: Number(text('count')),
      notices: Number(text('notices')),
      opens: Number(text('opens')),
      cursor: text('cursor'),
      events: [...document.querySelectorAll('[data-testid="events"] > [data-testid="event"], [data-testid="events"] > [data-testid="notice"]')]
        .map((li) => ({ kind: li.dataset.testid, cursor: li.dataset.cursor, type: li.dataset.type, id: li.dataset.eventId ?? '' })),
    };
  });
  return { seq, kind: 'page', ...s, requests, protocols };
}

async function run(c) {
  switch (c.cmd) {
    case 'open':
      await page.goto(pageURL);
      break;
    case 'fill':
      await page.getByTestId(c.field).fill(c.value);
      break;
    case 'click':
      await page.getByTestId(c.button).click();
      break;
    case 'wait':
      await page.waitForFunction((w) => {
        const get = (id) => document.querySelector(`[data-testid="${id}"]`);
        if (w.state && get('state').dataset.state !== w.state) return false;
        if (w.opens && Number(get('opens').textContent) < w.opens) return false;
        if (w.count && Number(get('count').textContent) < w.count) return false;
        if (w.messageHas && !get('message').textContent.includes(w.messageHas)) return false;
        return true;
      }, { state: c.state, opens: c.opens, count: c.count, messageHas: c.messageHas }, { timeout: 30000, polling: 50 });
      break;
    case 'snapshot':
      break;
    default:
      throw new Error(`unknown command ${c.cmd}`);
  }
  return snapshot(c.seq);
}

// Commands run one at a time, in order.
let chain = Promise.resolve();
const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  chain = chain.then(async () => {
    let c = {};
    try {
      c = JSON.parse(line);
      out(await run(c));
    } catch (err) {
      let extra = {};
      try { extra = await snapshot(c.seq); } catch (_) { /* the page is gone */ }
      out({ ...extra, seq: c.seq, kind: 'error', error: String(err && err.message ? err.message : err) });
    }
  });
});
if (process.argv.includes('--watch-stdin')) {
  rl.on('close', () => { chain.then(() => finish(0)); });
}
out({ kind: 'ready' });
