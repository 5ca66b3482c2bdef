#!/usr/bin/env node
// read.mjs reads a Kafka topic from the beginning with the kafkajs client
// (pinned in package-lock.json), the way a Node.js consumer of Herald's
// Kafka sink would, and prints every record as one JSON line:
//
//   KAFKA_BROKERS=127.0.0.1:9092 KAFKA_TOPIC=orders KAFKA_COUNT=60 node read.mjs [--watch-stdin]
//
//   {"kind": "record", "partition": 0, "offset": "12", "key": "k1" | null,
//    "value": "<base64>", "headers": {"ce_id": "...", "content-type": "..."}}
//   {"kind": "done"}                     KAFKA_COUNT records were read
//   {"kind": "error", "message": "..."}
//
// It consumes in a group of its own (kafkajs consumes only in groups), so
// it never moves the offsets of anyone else. kafkajs' logs go to standard
// error. With --watch-stdin the script exits when its standard input
// closes, so it never outlives the test that started it. Exit code 2: bad
// usage.
import { Kafka, logLevel } from 'kafkajs';

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const brokers = (process.env.KAFKA_BROKERS ?? '').split(',').filter(Boolean);
const topic = process.env.KAFKA_TOPIC ?? '';
const count = Number(process.env.KAFKA_COUNT ?? '0');
if (brokers.length === 0 || topic === '' || !(count > 0)) {
  console.error('read: set KAFKA_BROKERS, KAFKA_TOPIC and KAFKA_COUNT (> 0)');
  process.exit(2);
}

if (process.argv.includes('--watch-stdin')) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('close', () => process.exit(0));
  process.stdin.resume();
}

const kafka = new Kafka({
  clientId: 'herald-kafka-reader',
  brokers,
  logLevel: logLevel.WARN,
  logCreator: () => ({ namespace, level, log }) => {
    console.error(JSON.stringify({ namespace, level, ...log }));
  },
});
const consumer = kafka.consumer({ groupId: `herald-kafka-reader-${process.pid}-${Date.now()}` });

let n = 0;
try {
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      const headers = {};
      for (const [k, v] of Object.entries(message.headers ?? {})) {
        headers[k] = Buffer.isBuffer(v) ? v.toString('utf8') : String(v);
      }
      out({
        kind: 'record',
        partition,
        offset: message.offset,
        key: message.key === null ? null : message.key.toString('utf8'),
        value: (message.value ?? Buffer.alloc(0)).toString('base64'),
        headers,
      });
      n++;
      if (n === count) {
        out({ kind: 'done' });
      }
    },
  });
} catch (e) {
  out({ kind: 'error', message: String(e?.message ?? e) });
  await consumer.disconnect().catch(() => {});
  process.exit(1);
}
