#!/usr/bin/env node
// validate.mjs checks an AsyncAPI document with the official parser
// (@asyncapi/parser, pinned in package.json) and prints its diagnostics.
//
//   node validate.mjs [--strict] [--quiet] [FILE | -]
//
// With no FILE, or "-", the document is read from standard input. The exit
// code is 0 when the parser reports no error, 1 when it reports errors (or,
// with --strict, warnings too), 2 on bad usage or an unreadable file.
import { readFile } from 'node:fs/promises';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const severityName = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'info',
  [DiagnosticSeverity.Hint]: 'hint',
};

function usage(msg) {
  if (msg) console.error(`validate: ${msg}`);
  console.error('usage: node validate.mjs [--strict] [--quiet] [FILE | -]');
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
  if (files.length > 1) usage('give at most one document');
  const source = files[0] ?? '-';

  let text;
  try {
    text = source === '-' ? await readStdin() : await readFile(source, 'utf8');
  } catch (err) {
    console.error(`validate: read ${source}: ${err.message}`);
    process.exit(2);
  }

  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(text, source === '-' ? {} : { source });

  let errors = 0;
  let warnings = 0;
  for (const d of diagnostics) {
    if (d.severity === DiagnosticSeverity.Error) errors++;
    else if (d.severity === DiagnosticSeverity.Warning) warnings++;
    if (quiet && d.severity !== DiagnosticSeverity.Error && !(strict && d.severity === DiagnosticSeverity.Warning)) continue;
    const where = Array.isArray(d.path) && d.path.length > 0 ? `/${d.path.join('/')}` : '/';
    const line = d.range ? `:${d.range.start.line + 1}` : '';
    console.error(`${severityName[d.severity] ?? d.severity} ${d.code} at ${where}${line}: ${d.message}`);
  }

  const failed = errors > 0 || (strict && warnings > 0) || document === undefined;
  const name = source === '-' ? '<stdin>' : source;
  if (failed) {
    console.error(`${name}: INVALID: ${errors} error(s), ${warnings} warning(s)`);
    process.exit(1);
  }
  if (!quiet) {
    console.log(`${name}: valid AsyncAPI ${document.version()}: ${document.channels().length} channel(s), ` +
      `${document.operations().length} operation(s), ${document.allMessages().length} message(s); ${warnings} warning(s)`);
  }
}

main().catch((err) => {
  console.error(`validate: ${err.stack ?? err}`);
  process.exit(2);
});
