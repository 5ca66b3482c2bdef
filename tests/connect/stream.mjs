#!/usr/bin/env node
// stream.mjs calls an edge's herald.edge.v1.EdgeService/StreamEvents from
// Node.js with @connectrpc/connect-node (pinned in package-lock.json), over
// the Connect protocol and over gRPC, both on HTTP/2 without TLS (h2c, prior
// knowledge). No message is written by hand and no code is generated: the
// service and its messages come from a google.protobuf.FileDescriptorSet
// that the test writes, loaded with @bufbuild/protobuf's createFileRegistry.
//
//   EDGE_URL=http://127.0.0.1:7700 EDGE_KEY=hk_... EDGE_DESCRIPTORS=/tmp/edge.binpb \
//   node stream.mjs [--watch-stdin]
//
// The key travels in the environment, where ps does not show it. The test
// sends one JSON command a line on standard input:
//
//   {"cmd": "stream", "call": "a", "transport": "connect" | "grpc" | "connect-http1",
//    "types": ["billing.*"], "cursor": "...", "filter": "...", "key": true, "resume": false}
//        start a call (key: send Authorization: Bearer EDGE_KEY). With
//        resume, a call that ends cleanly, with Unavailable (no connection),
//        with Aborted (a connection reset; also how the edge ends a stream
//        that fell behind) or with a Canceled it did not ask for (Node's
//        http2 closes the streams of a connection closed under them with
//        CANCEL) is followed, 100ms later, by a new call
//        resuming after the last cursor received (the request's own cursor
//        while none was), as a consumer that keeps following the log does;
//        any other end stops it
//   {"cmd": "cancel", "call": "a"}   abort it (its end is then canceled)
//
// and reads JSON lines on standard output:
//
//   {"kind": "ready"}                                         descriptors loaded
//   {"call": "a", "kind": "call", "attempt": 1, "cursor": "...", "contentType": "application/connect+proto"}
//        an RPC starts (attempt counts the calls of one command; cursor is
//        what it asks to resume after; contentType is the request's)
//   {"call": "a", "kind": "header", "attempt": 1, "contentType": "application/grpc+proto"}
//        the response headers arrived
//   {"call": "a", "kind": "message", "attempt": 1, "cursor": "...",
//    "event": {"id", "type", "source", "text"} | null, "gap": {...} | null, "lagged": {...} | null}
//   {"call": "a", "kind": "end", "attempt": 1, "code": "OK" | "Unauthenticated" | ..., "message": "..."}
//        an RPC ended (code: the name of connect's Code, "OK" for a clean end)
//   {"call": "a", "kind": "stopped", "delivered": 7}           the command is over (messages in all)
//   {"kind": "fatal", "message": "..."}                       a bad command
//
// With --watch-stdin the script exits when its standard input closes.
// Exit code 2: bad usage.
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { create, createFileRegistry, fromBinary, toJson } from '@bufbuild/protobuf';
import { FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError, createClient, createContextKey, createContextValues } from '@connectrpc/connect';
import { createConnectTransport, createGrpcTransport } from '@connectrpc/connect-node';

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const baseUrl = process.env.EDGE_URL;
const key = process.env.EDGE_KEY ?? '';
const descriptors = process.env.EDGE_DESCRIPTORS;
if (!baseUrl || !descriptors) {
  console.error('stream: set EDGE_URL and EDGE_DESCRIPTORS (and EDGE_KEY)');
  process.exit(2);
}

const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descriptors)));
const service = registry.getService('herald.edge.v1.EdgeService');
const requestSchema = registry.getMessage('herald.edge.v1.StreamEventsRequest');
if (!service || !requestSchema) {
  console.error(`stream: ${descriptors} does not describe herald.edge.v1.EdgeService`);
  process.exit(2);
}

// The interceptor of every transport reports each RPC as it goes out, with
// the content type the transport gave it.
const callKey = createContextKey(null);
const report = (next) => async (req) => {
  const info = req.contextValues.get(callKey);
  if (info) out({ ...info, kind: 'call', contentType: req.header.get('content-type') ?? '' });
  return next(req);
};

// Each kind of transport is made once, so that later calls reuse its
// connection (an HTTP/2 session), as a long-lived client does.
const transports = {};
function transport(kind) {
  if (!transports[kind]) {
    switch (kind) {
      case 'connect':
        transports[kind] = createConnectTransport({ baseUrl, httpVersion: '2', interceptors: [report] });
        break;
      case 'connect-http1':
        transports[kind] = createConnectTransport({ baseUrl, httpVersion: '1.1', interceptors: [report] });
        break;
      case 'grpc':
        transports[kind] = createGrpcTransport({ baseUrl, httpVersion: '2', interceptors: [report] });
        break;
      default:
        throw new Error(`unknown transport ${kind}`);
    }
  }
  return transports[kind];
}

const calls = new Map(); // call name -> AbortController

function eventOf(ev) {
  if (!ev) return null;
  let text = null;
  if (ev.data?.case === 'textData') text = ev.data.value;
  else if (ev.data?.case === 'binaryData') text = new TextDecoder().decode(ev.data.value);
  return { id: ev.id, type: ev.type, source: ev.source, text };
}

async function stream(c) {
  const abort = new AbortController();
  calls.set(c.call, abort);
  let cursor = c.cursor ?? '';
  let delivered = 0;
  const kind = c.transport ?? 'connect';
  const client = createClient(service, transport(kind));
  for (let attempt = 1; ; attempt++) {
    const headers = new Headers();
    if (c.key) headers.set('Authorization', `Bearer ${key}`);
    const req = create(requestSchema, { types: c.types ?? [], cursor, filter: c.filter ?? '' });
    let code = 'OK';
    let message = '';
    try {
      const res = client.streamEvents(req, {
        signal: abort.signal,
        headers,
        onHeader: (h) => out({ call: c.call, kind: 'header', attempt, contentType: h.get('content-type') ?? '' }),
        contextValues: createContextValues().set(callKey, { call: c.call, attempt, cursor }),
      });
      for await (const m of res) {
        delivered++;
        if (m.cursor) cursor = m.cursor;
        out({
          call: c.call, kind: 'message', attempt, cursor: m.cursor, event: eventOf(m.event),
          gap: m.gap ? toJson(registry.getMessage('herald.edge.v1.Gap'), m.gap) : null,
          lagged: m.lagged ? { cursor: m.lagged.cursor } : null,
        });
      }
    } catch (e) {
      const err = ConnectError.from(e);
      code = Code[err.code];
      message = err.rawMessage;
    }
    out({ call: c.call, kind: 'end', attempt, code, message });
    if (!c.resume || abort.signal.aborted || !['OK', 'Unavailable', 'Aborted', 'Canceled'].includes(code)) break;
    await new Promise((r) => setTimeout(r, 100));
    if (abort.signal.aborted) break;
  }
  calls.delete(c.call);
  out({ call: c.call, kind: 'stopped', delivered });
}

out({ kind: 'ready' });

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  let c;
  try {
    c = JSON.parse(line);
  } catch (e) {
    out({ kind: 'fatal', message: `not JSON: ${line}` });
    return;
  }
  if (c.cmd === 'stream') {
    stream(c).catch((e) => out({ kind: 'fatal', message: String(e?.stack ?? e) }));
  } else if (c.cmd === 'cancel') {
    calls.get(c.call)?.abort();
  } else {
    out({ kind: 'fatal', message: `unknown command ${c.cmd}` });
  }
});
if (process.argv.includes('--watch-stdin')) {
  lines.on('close', () => process.exit(0));
}
