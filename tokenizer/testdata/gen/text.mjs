// Writes ../text/*.parquet with DuckDB (an independent Parquet writer) for the
// tests of "rankzip calib import --tokenizer": the texts of ../corpus.json
// 60 times over (4560 rows) in row groups of 2048 rows (DuckDB's smallest), with a null text, a numeric and
// a list column next to it; and an empty file of the same schema.
// Run: npm ci && node text.mjs
import { DuckDBInstance } from '@duckdb/node-api';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.join(here, '..', 'text');
fs.mkdirSync(out, { recursive: true });
const corpus = JSON.parse(fs.readFileSync(path.join(here, '..', 'corpus.json'), 'utf8'));
const rows = [];
for (let k = 0; k < 60; k++) corpus.forEach((t, i) => rows.push({ id: rows.length, text: t, score: i / 7, tags: ['a', String(k)] }));
rows[5].text = null;
const jsonl = path.join(out, 'rows.jsonl');
fs.writeFileSync(jsonl, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');

const db = await DuckDBInstance.create(':memory:');
const c = await db.connect();
const q = (s) => c.run(s);
await q(`create table t as select id::BIGINT as id, text::VARCHAR as text, score::DOUBLE as score, tags::VARCHAR[] as tags
         from read_json('${jsonl}', columns={id: 'BIGINT', text: 'VARCHAR', score: 'DOUBLE', tags: 'VARCHAR[]'}, format='newline_delimited') order by id`);
await q(`copy t to '${path.join(out, 'texts.parquet')}' (format parquet, row_group_size 2048)`);
await q(`copy (select * from t where false) to '${path.join(out, 'empty.parquet')}' (format parquet)`);
const r = await c.runAndReadAll(`select count(*), count(distinct row_group_id) from parquet_metadata('${path.join(out, 'texts.parquet')}')`);
console.log('texts.parquet rows, row groups:', r.getRows());
fs.unlinkSync(jsonl);
