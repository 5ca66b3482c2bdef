#!/usr/bin/env node
// subscriber.mjs is a WebSub subscriber, written the way a partner's Node
// service would be, against Herald's hub:
//
//   HERALD_URL=http://127.0.0.1:7700 HERALD_KEY=hk_... TOPIC_TYPE=billing.invoice.paid \
//   WEBSUB_SECRET=... SHORT_LEASE=2 node subscriber.mjs [--watch-stdin]
//
// It listens on 127.0.0.1 (a port the system picks), discovers the hub and
// the topic URL from the Link headers of GET /v1/topics/<type> (parsed with
// http-link-header, RFC 8288), then subscribes two callbacks to the topic
// with hub.secret: /short with a lease of SHORT_LEASE seconds, /long with an
// hour. It answers each verification of intent by echoing hub.challenge
// (checking hub.mode, hub.topic and hub.lease_seconds first), and checks
// every content distribution: X-Hub-Signature against its own HMAC-SHA256
// of the body (node:crypto), the Link headers, the content type.
//
// Standard output is one JSON object per line: first {"port":N}, then
//   {"event":"discovered","hub":...,"self":...}
//   {"event":"requested","path":...,"status":N}       the hub's answer (202)
//   {"event":"verified","path":...,"mode":...,"topic":...,"lease":N,"ok":bool,"why":...}
//   {"event":"delivery","path":...,"id":...,"signature":bool,"links":bool,"contentType":...}
//   {"event":"error","message":...}                   then exit code 1
// With --watch-stdin it exits when its standard input closes, so that it
// never outlives the test that started it.
import crypto from 'node:crypto';
import http from 'node:http';
import LinkHeader from 'http-link-header';

const env = (name) => {
  const v = process.env[name];
  if (!v) fail(`${name} is not set`);
  return v;
};

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function fail(message) {
  emit({ event: 'error', message });
  process.exit(1);
}

const heraldURL = env('HERALD_URL');
const key = env('HERALD_KEY');
const type = env('TOPIC_TYPE');
const secret = env('WEBSUB_SECRET');
const shortLease = Number(env('SHORT_LEASE'));
const leases = { '/short': shortLease, '/long': 3600 };

let hub;
let self;

// checkLinks reports whether a Link header names the hub and the topic.
function checkLinks(value) {
  if (!value) return false;
  const link = LinkHeader.parse(value);
  return link.rel('hub').some((r) => r.uri === hub) && link.rel('self').some((r) => r.uri === self);
}

// signatureValid compares X-Hub-Signature with our own HMAC of the body, in
// constant time.
function signatureValid(header, body) {
  if (!header || !header.startsWith('sha256=')) return false;
  const want = Buffer.from('sha256=' + crypto.createHmac('sha256', secret).update(body).digest('hex'));
  const got = Buffer.from(header);
  return got.length === want.length && crypto.timingSafeEqual(got, want);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  const path = url.pathname;
  if (!(path in leases)) {
    res.writeHead(404).end();
    return;
  }
  if (req.method === 'GET') {
    const q = url.searchParams;
    const mode = q.get('hub.mode');
    const lease = Number(q.get('hub.lease_seconds'));
    let why = '';
    if (mode !== 'subscribe') why = `unexpected hub.mode ${mode}`;
    else if (q.get('hub.topic') !== self) why = `hub.topic ${q.get('hub.topic')} is not ${self}`;
    else if (lease !== leases[path]) why = `hub.lease_seconds ${lease}, asked for ${leases[path]}`;
    else if (!q.get('hub.challenge')) why = 'no hub.challenge';
    emit({ event: 'verified', path, mode, topic: q.get('hub.topic'), lease, ok: why === '', why });
    if (why !== '') {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/plain' }).end(q.get('hub.challenge'));
    return;
  }
  if (req.method === 'POST') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      let id = '';
      try {
        id = JSON.parse(body.toString('utf8')).id;
      } catch {
        id = '';
      }
      emit({
        event: 'delivery', path, id,
        signature: signatureValid(req.headers['x-hub-signature'], body),
        links: checkLinks(req.headers.link),
        contentType: req.headers['content-type'] ?? '',
      });
      res.writeHead(204).end();
    });
    return;
  }
  res.writeHead(405).end();
});

async function main() {
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  emit({ port });

  const auth = { Authorization: `Bearer ${key}` };
  const topic = await fetch(`${heraldURL}/v1/topics/${type}`, { headers: auth });
  if (topic.status !== 200) fail(`topic discovery answered ${topic.status}: ${await topic.text()}`);
  const link = LinkHeader.parse(topic.headers.get('link') ?? '');
  hub = link.rel('hub')[0]?.uri;
  self = link.rel('self')[0]?.uri;
  if (!hub || !self) fail(`no rel=hub and rel=self in ${topic.headers.get('link')}`);
  emit({ event: 'discovered', hub, self });

  for (const [path, lease] of Object.entries(leases)) {
    const form = new URLSearchParams({
      'hub.mode': 'subscribe',
      'hub.topic': self,
      'hub.callback': `http://127.0.0.1:${port}${path}`,
      'hub.lease_seconds': String(lease),
      'hub.secret': secret,
    });
    const res = await fetch(hub, { method: 'POST', headers: auth, body: form });
    emit({ event: 'requested', path, status: res.status, body: await res.text() });
  }
}

if (process.argv.includes('--watch-stdin')) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}
main().catch((err) => fail(err.message));
