#!/usr/bin/env node
// receiver.mjs is a webhook receiver that checks every request with the
// official Standard Webhooks library for JavaScript (standardwebhooks,
// pinned in package-lock.json), the way a partner's Node service would.
//
//   node receiver.mjs [--watch-stdin] [whsec_SECRET]...
//
// Secrets come from the arguments and from WEBHOOK_SECRETS (separated by
// white space or commas); a test passes them in the environment, where ps
// does not show them. The server listens on 127.0.0.1, on a port the system
// picks, and prints {"port":N} as its first line of standard output.
//
//   POST <any path>  verified with new Webhook(secret).verify(body, headers)
//                    for each secret in turn: 204 when one verifies, else 400
//                    and the library's message. Every POST is recorded.
//   GET /results     the records, in arrival order, as a JSON array of
//                    {id, timestamp, valid, secret, error, path, body}:
//                    secret is the index of the secret that verified (-1
//                    when none did), body the request body as UTF-8.
//
// With --watch-stdin the receiver exits when its standard input closes, so
// it never outlives the test that started it. Exit code 2: bad usage or a
// secret the library refuses.
import http from 'node:http';
import { Webhook } from 'standardwebhooks';

const maxBody = 10 << 20;

function usage(msg) {
  if (msg) console.error(`receiver: ${msg}`);
  console.error('usage: WEBHOOK_SECRETS="whsec_..." node receiver.mjs [--watch-stdin] [whsec_SECRET]...');
  process.exit(2);
}

let watchStdin = false;
const secrets = [];
for (const arg of process.argv.slice(2)) {
  if (arg === '--watch-stdin') watchStdin = true;
  else if (arg === '-h' || arg === '--help') usage();
  else if (arg.startsWith('--')) usage(`unknown flag ${arg}`);
  else secrets.push(arg);
}
for (const s of (process.env.WEBHOOK_SECRETS ?? '').split(/[\s,]+/)) {
  if (s !== '') secrets.push(s);
}
if (secrets.length === 0) usage('no secret: give whsec_ secrets as arguments or in WEBHOOK_SECRETS');

// One Webhook per secret, made once: a secret the library cannot decode is
// a usage error, reported before the port line, not a failure per request.
const hooks = secrets.map((s, i) => {
  try {
    return new Webhook(s);
  } catch (err) {
    usage(`secret ${i + 1}: the library refuses it: ${err.message}`);
  }
});

const results = [];

// verify checks one request with every secret; the first that verifies
// wins. The library's own JSON parsing of the payload is turned off: the
// signature is what is checked here, and a CloudEvents binary-mode body need
// not be JSON.
function verify(body, headers) {
  const errors = [];
  for (let i = 0; i < hooks.length; i++) {
    try {
      hooks[i].verify(body, headers, { jsonParse: false });
      return { valid: true, secret: i, error: '' };
    } catch (err) {
      const msg = err?.message ?? String(err);
      if (!errors.includes(msg)) errors.push(msg);
    }
  }
  return { valid: false, secret: -1, error: errors.join('; ') };
}

function reply(res, status, type, text) {
  res.writeHead(status, type ? { 'Content-Type': type } : {});
  res.end(text);
}

const server = http.createServer((req, res) => {
  const path = (req.url ?? '/').split('?')[0];
  if (req.method === 'GET' && path === '/results') {
    reply(res, 200, 'application/json', JSON.stringify(results));
    return;
  }
  if (req.method !== 'POST') {
    res.setHeader('Allow', 'POST');
    reply(res, 405, 'text/plain; charset=utf-8', 'POST a webhook, or GET /results\n');
    return;
  }
  const chunks = [];
  let size = 0;
  let tooLarge = false;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > maxBody) tooLarge = true;
    else chunks.push(chunk);
  });
  req.on('end', () => {
    if (tooLarge) {
      reply(res, 413, 'text/plain; charset=utf-8', `body over ${maxBody} bytes\n`);
      return;
    }
    const body = Buffer.concat(chunks);
    const r = verify(body, req.headers);
    results.push({
      id: req.headers['webhook-id'] ?? '',
      timestamp: req.headers['webhook-timestamp'] ?? '',
      valid: r.valid,
      secret: r.secret,
      error: r.error,
      path,
      body: body.toString('utf8'),
    });
    if (r.valid) reply(res, 204);
    else reply(res, 400, 'text/plain; charset=utf-8', r.error);
  });
  req.on('error', () => res.destroy());
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});

if (watchStdin) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
