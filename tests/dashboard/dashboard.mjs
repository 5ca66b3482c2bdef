#!/usr/bin/env node
// dashboard.mjs drives metering's operator dashboard (GET /dashboard) in
// Debian's headless Chromium with playwright-core (pinned in
// package-lock.json; it downloads no browser).
//
//   DASHBOARD_URL='http://127.0.0.1:7703/dashboard' node dashboard.mjs [--watch-stdin]
//
// CHROMIUM names the browser (default /usr/bin/chromium). The test sends
// one JSON command a line on standard input and reads one JSON answer a
// line on standard output, in order, each with the command's seq:
//
//   {"seq": 1, "cmd": "open"}                        load DASHBOARD_URL
//   {"seq": 2, "cmd": "signin", "key": "..."}        type the key into the form and submit it
//   {"seq": 3, "cmd": "signout"}
//   {"seq": 4, "cmd": "wait", "state": "ready", "refreshes": 2, "live": 5, "polls": 3, "messageHas": "..."}
//        wait (30s at most) until the page's state is this (and, with
//        "probed": true, it has tried its session cookie), it refreshed
//        at least that often, its live counter is at least live, it polled
//        at least polls times, and its message holds messageHas (each optional)
//   {"seq": 5, "cmd": "snapshot"}
//
// Every answer is the page as it stands, read from its data- attributes:
//
//   {"seq": n, "kind": "page", "state", "message", "signinVisible", "refreshes", "start", "granularity",
//    "live": {"count", "polls", "since"}, "series": {"PUBLISHED": total, "DELIVERED": total},
//    "points": {"PUBLISHED": [{"start", "events"}], ...} (buckets with events only),
//    "top": {"consumers": [{"value", "events"}], "producers": [...], "types": [...]},
//    "deliveries": [{"channel", "delivered", "failed", "retried", "refused", "errorRate", "retryRate", "p50", "p90", "p99"}],
//    "quotas": [{"id", "used", "limit", "percent", "state"}], "invoices": {"state", "count", "rows": [{"id", "totalMinor", "currency", "status", "total"}]},
//    "documentCookie": document.cookie, "foreign": [URLs the page requested from another origin]}
//   {"seq": n, "kind": "error", "error": "...", ...the page as above, when it can be read}
//
// Other lines: {"kind": "ready"} once the browser runs, {"kind": "console",
// "text"} for the page's errors. With --watch-stdin the script exits when
// its standard input closes. Exit code 2: bad usage.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const pageURL = process.env.DASHBOARD_URL;
if (!pageURL) {
  console.error('dashboard: set DASHBOARD_URL');
  process.exit(2);
}
const origin = new URL(pageURL).origin;

const profile = mkdtempSync(join(tmpdir(), 'herald-dashboard-'));
// A fresh profile each run (playwright passes it as --user-data-dir).
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
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

const foreign = [];
page.on('request', (req) => {
  const u = req.url();
  if (u.startsWith('data:') || u === 'about:blank') return;
  if (new URL(u).origin !== origin) foreign.push(u);
});
page.on('console', (msg) => {
  if (msg.type() === 'error') out({ kind: 'console', text: msg.text() });
});
page.on('pageerror', (err) => out({ kind: 'console', text: String(err) }));

async function snapshot(seq) {
  const s = await page.evaluate(() => {
    const q = (sel) => document.querySelector(sel);
    const all = (sel) => [...document.querySelectorAll(sel)];
    const n = (v) => Number(v || 0);
    const app = q('[data-testid="app"]');
    const live = q('[data-testid="live"]');
    const series = {};
    const points = {};
    for (const g of all('[data-testid="chart"] g[data-series]')) {
      series[g.dataset.series] = n(g.dataset.total);
      points[g.dataset.series] = [...g.querySelectorAll('rect')]
        .filter((r) => n(r.dataset.events) > 0)
        .map((r) => ({ start: r.dataset.start, events: n(r.dataset.events) }));
    }
    const top = (id) => all(`[data-testid="${id}"] li[data-value]`).map((li) => ({ value: li.dataset.value, events: n(li.dataset.events) }));
    const inv = q('[data-testid="invoices"]');
    return {
      state: app.dataset.state,
      message: q('[data-testid="message"]').textContent,
      signinVisible: !q('[data-testid="signin"]').hidden,
      refreshes: n(app.dataset.refreshes),
      start: app.dataset.start || '',
      granularity: app.dataset.granularity || '',
      live: { count: n(live.dataset.count), polls: n(live.dataset.polls), since: live.dataset.since || '' },
      series,
      points,
      top: { consumers: top('top-consumers'), producers: top('top-producers'), types: top('top-types') },
      deliveries: all('[data-testid="deliveries"] tr[data-channel]').map((tr) => ({
        channel: tr.dataset.channel, delivered: n(tr.dataset.delivered), failed: n(tr.dataset.failed),
        retried: n(tr.dataset.retried), refused: n(tr.dataset.refused),
        errorRate: Number(tr.dataset.errorRate), retryRate: Number(tr.dataset.retryRate),
        p50: n(tr.dataset.p50), p90: n(tr.dataset.p90), p99: n(tr.dataset.p99),
      })),
      quotas: all('[data-testid="quotas"] tr[data-id]').map((tr) => ({
        id: tr.dataset.id, used: n(tr.dataset.used), limit: n(tr.dataset.limit), percent: n(tr.dataset.percent), state: tr.dataset.state,
      })),
      invoices: {
        state: inv.dataset.state, count: n(inv.dataset.count),
        rows: all('[data-testid="invoices"] tr[data-id]').map((tr) => ({
          id: tr.dataset.id, totalMinor: tr.dataset.totalMinor, currency: tr.dataset.currency, status: tr.dataset.status,
          total: tr.querySelector('td:last-child').textContent,
        })),
      },
      documentCookie: document.cookie,
    };
  });
  return { seq, kind: 'page', ...s, foreign };
}

async function run(c) {
  switch (c.cmd) {
    case 'open':
      await page.goto(pageURL);
      break;
    case 'signin':
      await page.getByTestId('key').fill(c.key);
      await page.getByTestId('signin-button').click();
      break;
    case 'signout':
      await page.getByTestId('signout').click();
      break;
    case 'wait':
      await page.waitForFunction((w) => {
        const app = document.querySelector('[data-testid="app"]');
        const live = document.querySelector('[data-testid="live"]');
        if (w.probed && app.dataset.probed !== 'true') return false;
        if (w.state && app.dataset.state !== w.state) return false;
        if (w.refreshes && Number(app.dataset.refreshes) < w.refreshes) return false;
        if (w.live && Number(live.dataset.count) < w.live) return false;
        if (w.polls && Number(live.dataset.polls) < w.polls) return false;
        if (w.messageHas && !document.querySelector('[data-testid="message"]').textContent.includes(w.messageHas)) return false;
        return true;
      }, { probed: c.probed, state: c.state, refreshes: c.refreshes, live: c.live, polls: c.polls, messageHas: c.messageHas }, { timeout: 30000, polling: 50 });
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
