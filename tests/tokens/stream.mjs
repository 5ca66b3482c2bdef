#!/usr/bin/env node
// stream.mjs mints Herald browser tokens with the npm jose library (pinned
// in package-lock.json), the way an application's backend mints them for
// its users, and opens an SSE stream on a real edge with each one, the way
// a browser does: GET /v1/stream?types=...&access_token=<token> (or the
// herald_token cookie).
//
//   TOKEN_CASES='{"edge":"http://127.0.0.1:7700","cases":[...]}' node stream.mjs [--watch-stdin]
//
// Each case is
//
//   {"name": "hs256", "alg": "HS256" | "ES256",
//    "secret": "hts_..." (HS256: its UTF-8 bytes are the key) | "jwk": {...private JWK} (ES256),
//    "kid": "...", "iss": "app_...", "sub": "user-1", "aud": "herald",
//    "exp": "10m" (a jose time span from now, or epoch seconds),
//    "herald": {"types": ["billing.*"], "filter": "..."},
//    "types": "billing.invoice.paid", "via": "query" | "cookie"}
//
// The cases travel in the environment, where ps does not show the secrets.
// Every happening is one JSON line on standard output:
//
//   {"case": name, "kind": "status", "status": 200, "body": "..."}   (body only when not 200)
//   {"case": name, "kind": "event", "id": cursor, "type": type, "data": json}
//   {"case": name, "kind": "comment", "text": "..."}                 (not heartbeats)
//   {"case": name, "kind": "end"}                                     the server ended the stream
//   {"case": name, "kind": "error", "message": "..."}
//
// With --watch-stdin the script exits when its standard input closes, so it
// never outlives the test that started it. Exit code 2: bad usage.
import { SignJWT, importJWK } from 'jose';

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

let spec;
try {
  spec = JSON.parse(process.env.TOKEN_CASES ?? '');
} catch (e) {
  console.error(`stream: TOKEN_CASES is not JSON: ${e.message}`);
  process.exit(2);
}
if (!spec.edge || !Array.isArray(spec.cases)) {
  console.error('stream: TOKEN_CASES needs {"edge": url, "cases": [...]}');
  process.exit(2);
}

if (process.argv.includes('--watch-stdin')) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('close', () => process.exit(0));
  process.stdin.resume();
}

// mint signs one case's token with jose.
async function mint(c) {
  const key = c.alg === 'HS256' ? new TextEncoder().encode(c.secret) : await importJWK(c.jwk, c.alg);
  const header = { alg: c.alg, typ: 'JWT' };
  if (c.kid) header.kid = c.kid;
  const jwt = new SignJWT({ herald: c.herald })
    .setProtectedHeader(header)
    .setIssuer(c.iss)
    .setAudience(c.aud ?? 'herald')
    .setIssuedAt()
    .setExpirationTime(c.exp ?? '10m');
  if (c.sub) jwt.setSubject(c.sub);
  return jwt.sign(key);
}

// stream opens one case's SSE stream and reports what arrives.
async function stream(c) {
  const token = await mint(c);
  const url = new URL('/v1/stream', spec.edge);
  url.searchParams.set('types', c.types);
  const headers = { Accept: 'text/event-stream' };
  if (c.via === 'cookie') {
    headers.Cookie = `herald_token=${token}`;
  } else {
    url.searchParams.set('access_token', token);
  }
  const res = await fetch(url, { headers });
  if (res.status !== 200) {
    out({ case: c.name, kind: 'status', status: res.status, body: await res.text() });
    return;
  }
  out({ case: c.name, kind: 'status', status: 200 });
  const decoder = new TextDecoder();
  let buf = '';
  let ev = {};
  for await (const chunk of res.body) {
    buf += decoder.decode(chunk, { stream: true });
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      if (line === '') {
        if (ev.id !== undefined) out({ case: c.name, kind: 'event', ...ev });
        ev = {};
      } else if (line.startsWith(':')) {
        const text = line.slice(1).trim();
        if (text !== 'heartbeat') out({ case: c.name, kind: 'comment', text });
      } else if (line.startsWith('id: ')) {
        ev.id = line.slice(4);
      } else if (line.startsWith('event: ')) {
        ev.type = line.slice(7);
      } else if (line.startsWith('data: ')) {
        ev.data = line.slice(6);
      }
    }
  }
  out({ case: c.name, kind: 'end' });
}

await Promise.all(
  spec.cases.map((c) =>
    stream(c).catch((e) => out({ case: c.name, kind: 'error', message: String(e?.message ?? e) })),
  ),
);
// Every stream is over; stay until stdin closes when asked to, so the
// test reads everything first.
if (!process.argv.includes('--watch-stdin')) process.exit(0);
