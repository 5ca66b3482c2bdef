#!/usr/bin/env node
// portal.mjs drives the edge's consumer portal (GET /portal/) in Debian's
// headless Chromium with playwright-core (pinned in package-lock.json; it
// downloads no browser).
//
//   PORTAL_ORIGIN='http://127.0.0.1:7700' node portal.mjs [--watch-stdin]
//
// CHROMIUM names the browser (default /usr/bin/chromium). The test sends
// one JSON command a line on standard input and reads one JSON answer a
// line on standard output, in order, each with the command's seq. Elements
// are named by "testid" (a data-testid) or "sel" (a CSS selector):
//
//   {"seq": 1, "cmd": "open", "url": "/portal/#link=..."}   load a URL (relative to PORTAL_ORIGIN)
//   {"seq": 2, "cmd": "reload"}                             load the page again
//   {"seq": 2, "cmd": "click", "testid": "sub-create"}      click the first match
//   {"seq": 3, "cmd": "fill", "sel": "#suburl", "value": "..."}
//   {"seq": 4, "cmd": "select", "testid": "sub-ordering", "value": "WEBHOOK_ORDERING_ORDERED"}
//   {"seq": 5, "cmd": "check", "sel": "...", "checked": true}
//   {"seq": 6, "cmd": "wait", "sel": "...", "attrs": {"data-state": "ready"}, "textHas": "...", "min": 1, "timeout": 30000}
//        wait until at least min elements (default 1) have those attribute
//        values and text; answers with every match ("elements")
//   {"seq": 7, "cmd": "read", "sel": "..."}                  the matches now, without waiting
//   {"seq": 8, "cmd": "fetch", "method": "POST", "path": "/portal/rpc/...", "headers": {...}, "body": "..."}
//        fetch from the page (its origin, its cookies): {"status", "contentType", "body"}
//   {"seq": 9, "cmd": "download", "testid": "invoice-csv"}   click a download link: {"filename", "body"}
//   {"seq": 10, "cmd": "cookies"}                            the browser's cookies, with their attributes
//   {"seq": 10, "cmd": "screenshot", "path": "/tmp/x.png"}   the whole page as a PNG
//   {"seq": 11, "cmd": "clearCookies"}
//
// Every answer also carries the page as it stands: {"seq", "kind": "page",
// "url", "state", "view", "message", "notice", "signinError", "who",
// "documentCookie", "foreign": [URLs requested from another origin],
// ...the command's result}; a failed command answers {"kind": "error",
// "error"} with the same. Other lines: {"kind": "ready"} once the browser
// runs, {"kind": "console", "text"} for the page's errors and warnings (a
// Content-Security-Policy violation is one). With --watch-stdin the script
// exits when its standard input closes. Exit code 2: bad usage.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const origin = process.env.PORTAL_ORIGIN;
if (!origin) {
  console.error('portal: set PORTAL_ORIGIN');
  process.exit(2);
}

const profile = mkdtempSync(join(tmpdir(), 'herald-portal-'));
const downloads = mkdtempSync(join(tmpdir(), 'herald-portal-dl-'));
// A fresh profile each run (playwright passes it as --user-data-dir).
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  acceptDownloads: true,
  downloadsPath: downloads,
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
  rmSync(downloads, { recursive: true, force: true });
  process.exit(code);
}

const foreign = [];
page.on('request', (req) => {
  const u = req.url();
  if (u.startsWith('data:') || u === 'about:blank') return;
  if (new URL(u).origin !== origin) foreign.push(u);
});
page.on('console', (msg) => {
  if (msg.type() === 'error' || msg.type() === 'warning') out({ kind: 'console', text: `${msg.type()}: ${msg.text()}` });
});
page.on('pageerror', (err) => out({ kind: 'console', text: 'pageerror: ' + String(err) }));

function selector(c) {
  if (c.testid) return `[data-testid="${c.testid}"]`;
  if (c.sel) return c.sel;
  throw new Error(`${c.cmd}: give testid or sel`);
}

// describe reads the elements matching sel in the page.
async function describe(sel) {
  return page.evaluate((s) => [...document.querySelectorAll(s)].map((e) => {
    const data = {};
    for (const a of e.attributes) if (a.name.startsWith('data-')) data[a.name] = a.value;
    return {
      tag: e.tagName.toLowerCase(),
      text: (e.textContent || '').trim().slice(0, 4000),
      value: 'value' in e ? String(e.value) : '',
      checked: !!e.checked,
      disabled: !!e.disabled,
      visible: !!(e.offsetWidth || e.offsetHeight || e.getClientRects().length),
      href: e.getAttribute('href') || '',
      data,
    };
  }), sel);
}

async function snapshot(seq) {
  const s = await page.evaluate(() => {
    const q = (id) => document.getElementById(id);
    const app = q('app');
    return {
      state: app ? app.dataset.state : '',
      view: app ? app.dataset.view : '',
      message: q('message') ? q('message').textContent : '',
      notice: q('notice') ? q('notice').textContent : '',
      signinError: q('signinerror') ? q('signinerror').textContent : '',
      who: q('who') ? q('who').textContent : '',
      documentCookie: document.cookie,
    };
  }).catch(() => ({}));
  return { seq, kind: 'page', url: page.url(), ...s, foreign };
}

async function run(c) {
  const result = {};
  const timeout = c.timeout || 30000;
  switch (c.cmd) {
    case 'open':
      await page.goto(new URL(c.url, origin).toString());
      break;
    case 'reload':
      await page.reload();
      break;
    case 'click':
      await page.locator(selector(c)).first().click({ timeout });
      break;
    case 'fill':
      await page.locator(selector(c)).first().fill(c.value, { timeout });
      break;
    case 'select':
      await page.locator(selector(c)).first().selectOption(c.value, { timeout });
      break;
    case 'check':
      await page.locator(selector(c)).first().setChecked(c.checked !== false, { timeout });
      break;
    case 'wait': {
      const sel = selector(c);
      await page.waitForFunction((w) => {
        const hits = [...document.querySelectorAll(w.sel)].filter((e) => {
          for (const [k, v] of Object.entries(w.attrs || {})) if (e.getAttribute(k) !== v) return false;
          if (w.textHas && !(e.textContent || '').includes(w.textHas)) return false;
          if (w.visible && !(e.offsetWidth || e.offsetHeight || e.getClientRects().length)) return false;
          return true;
        });
        return hits.length >= (w.min || 1);
      }, { sel, attrs: c.attrs, textHas: c.textHas, min: c.min, visible: c.visible }, { timeout, polling: 50 });
      result.elements = await describe(sel);
      break;
    }
    case 'read':
      result.elements = await describe(selector(c));
      break;
    case 'fetch':
      Object.assign(result, await page.evaluate(async (f) => {
        const res = await fetch(f.path, { method: f.method || 'GET', headers: f.headers || {}, body: f.body, credentials: 'same-origin', cache: 'no-store' });
        return { status: res.status, contentType: res.headers.get('content-type') || '', body: await res.text() };
      }, { path: c.path, method: c.method, headers: c.headers, body: c.body }));
      break;
    case 'download': {
      const [dl] = await Promise.all([page.waitForEvent('download', { timeout }), page.locator(selector(c)).first().click({ timeout })]);
      const path = await dl.path();
      result.filename = dl.suggestedFilename();
      result.body = path ? readFileSync(path, 'utf8') : '';
      result.failure = (await dl.failure()) || '';
      break;
    }
    case 'screenshot':
      await page.screenshot({ path: c.path, fullPage: true });
      break;
    case 'cookies':
      result.cookies = await context.cookies();
      break;
    case 'clearCookies':
      await context.clearCookies();
      break;
    default:
      throw new Error(`unknown command ${c.cmd}`);
  }
  return { ...(await snapshot(c.seq)), ...result };
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
