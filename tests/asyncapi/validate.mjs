#!/usr/bin/env node
// validate.mjs checks an AsyncAPI document with the official parser
// (@asyncapi/parser, pinned in package.json) and prints its diagnostics.
//
//   node validate.mjs [--strict] [--quiet] [FILE | -]...
//
// With no FILE, or "-", the document is read from standard input; several
// files are checked one after the other. The exit code is 0 when the parser
// reports no error in any of them, 1 when it reports errors (or, with
// --strict, warnings too), 2 on bad usage or an unreadable file.
import { readFile } from 'node:fs/promises';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';
import { AvroSchemaParser } from '@asyncapi/avro-schema-parser';
import { ProtoBuffSchemaParser } from '@asyncapi/protobuf-schema-parser';

const severityName = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'info',
  [DiagnosticSeverity.Hint]: 'hint',
};

function usage(msg) {
  if (msg) console.error(`validate: ${msg}`);
  console.error('usage: node validate.mjs [--strict] [--quiet] [FILE | -]...');
  process.exit(2);
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function main() {
  let strict = false;
  let quiet = false;
  const files = [];
  for (const arg of process.argv.slice(2)) {
    if (arg === '--strict') strict = true;
    else if (arg === '--quiet') quiet = true;
    else if (arg === '-h' || arg === '--help') usage();
    else if (arg.startsWith('--')) usage(`unknown flag ${arg}`);
    else files.push(arg);
  }
  if (files.length === 0) files.push('-');
  if (files.filter((f) => f === '-').length > 1) usage('standard input can be read only once');

  // Herald exports Protobuf and Avro payloads with their schemaFormat: the
  // official schema parsers check them.
  const parser = new Parser({ schemaParsers: [AvroSchemaParser(), ProtoBuffSchemaParser()] });
  let failures = 0;
  for (const source of files) {
    if (!(await validate(parser, source, { strict, quiet }))) failures++;
  }
  process.exit(failures > 0 ? 1 : 0);
}

// validate checks one document and reports whether it passed.
async function validate(parser, source, { strict, quiet }) {
  let text;
  try {
    text = source === '-' ? await readStdin() : await readFile(source, 'utf8');
  } catch (err) {
    console.error(`validate: read ${source}: ${err.message}`);
    process.exit(2);
  }

  const { document, diagnostics } = await parser.parse(text, source === '-' ? {} : { source });
  const name = source === '-' ? '<stdin>' : source;

  let errors = 0;
  let warnings = 0;
  for (const d of diagnostics) {
    if (d.severity === DiagnosticSeverity.Error) errors++;
    else if (d.severity === DiagnosticSeverity.Warning) warnings++;
    if (quiet && d.severity !== DiagnosticSeverity.Error && !(strict && d.severity === DiagnosticSeverity.Warning)) continue;
    const where = Array.isArray(d.path) && d.path.length > 0 ? `/${d.path.join('/')}` : '/';
    const line = d.range ? `:${d.range.start.line + 1}` : '';
    console.error(`${name}: ${severityName[d.severity] ?? d.severity} ${d.code} at ${where}${line}: ${d.message}`);
  }

  if (errors > 0 || (strict && warnings > 0) || document === undefined) {
    console.error(`${name}: INVALID: ${errors} error(s), ${warnings} warning(s)`);
    return false;
  }
  if (!quiet) {
    console.log(`${name}: valid AsyncAPI ${document.version()}: ${document.channels().length} channel(s), ` +
      `${document.operations().length} operation(s), ${document.allMessages().length} message(s); ${warnings} warning(s)`);
  }
  return true;
}

main().catch((err) => {
  console.error(`validate: ${err.stack ?? err}`);
  process.exit(2);
});
