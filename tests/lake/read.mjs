// Reads the lake bridge's Parquet files with DuckDB and prints one JSON
// object on standard output: {"columns":[{"name","type"}],"rows":[{...}]}.
//
//   node read.mjs <lake dir> [sql]
//
// The default query is
//   SELECT * FROM read_parquet('<dir>/**/*.parquet', hive_partitioning=true)
// A given sql may use {files} for that read_parquet(...) call.
//
// Values: BLOB as base64, timestamps as microseconds since the epoch (a
// string), BIGINT/HUGEINT as a string, NULL as null, everything else as
// DuckDB's own JSON form.
import { DuckDBInstance, DuckDBBlobValue, DuckDBTimestampTZValue, DuckDBTimestampValue, JsonDuckDBValueConverter } from '@duckdb/node-api';

const [dir, sqlArg] = process.argv.slice(2);
if (!dir) {
  console.error('usage: node read.mjs <lake dir> [sql]');
  process.exit(2);
}
const quoted = `${dir.replace(/\/+$/, '')}/**/*.parquet`.replaceAll("'", "''");
const files = `read_parquet('${quoted}', hive_partitioning=true)`;
const sql = sqlArg ? sqlArg.replaceAll('{files}', files) : `SELECT * FROM ${files}`;

function convert(v) {
  if (v === null || v === undefined) return null;
  if (v instanceof DuckDBBlobValue) return Buffer.from(v.bytes).toString('base64');
  if (v instanceof DuckDBTimestampTZValue || v instanceof DuckDBTimestampValue) return v.micros.toString();
  if (typeof v === 'bigint') return v.toString();
  return null;
}

const instance = await DuckDBInstance.create(':memory:');
const conn = await instance.connect();
try {
  const reader = await conn.runAndReadAll(sql);
  const names = reader.columnNames();
  const columns = names.map((name, i) => ({ name, type: reader.columnType(i).toString() }));
  const rows = [];
  for (let r = 0; r < reader.currentRowCount; r++) {
    const row = {};
    for (let c = 0; c < names.length; c++) {
      const v = reader.value(c, r);
      const mine = convert(v);
      if (mine !== null || v === null) {
        row[names[c]] = mine;
      } else {
        row[names[c]] = JsonDuckDBValueConverter(v, reader.columnType(c), JsonDuckDBValueConverter);
      }
    }
    rows.push(row);
  }
  process.stdout.write(JSON.stringify({ columns, rows }) + '\n');
} finally {
  conn.closeSync();
  instance.closeSync();
}
