// Tokens per second of the real tokenizers library on the files named on the
// command line (one document each), one document at a time, for each tokenizer
// of testdata. Used by bench.sh, which runs rankzip's Go tokenizer on the same files.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const zlib = require('zlib');
const { Tokenizer } = require('tokenizers');

const td = path.join(__dirname, '..');
const docs = process.argv.slice(2).map((f) => fs.readFileSync(f, 'utf8'));
const bytes = docs.reduce((n, d) => n + Buffer.byteLength(d), 0);

async function main() {
  for (const dir of ['gpt2', 'llama3.1', 'qwen3', 'mistral7b']) {
    const tmp = path.join(os.tmpdir(), `rankzip-bench-${process.pid}.json`);
    fs.writeFileSync(tmp, zlib.gunzipSync(fs.readFileSync(path.join(td, dir, 'tokenizer.json.gz'))));
    const tok = Tokenizer.fromFile(tmp);
    fs.unlinkSync(tmp);
    let best = Infinity;
    let tokens = 0;
    for (let pass = 0; pass < 3; pass++) {
      const t0 = process.hrtime.bigint();
      tokens = 0;
      for (const d of docs) tokens += (await tok.encode(d, null, { addSpecialTokens: false })).getIds().length;
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      if (s < best) best = s;
    }
    console.log(`node tokenizers@0.23.2 ${dir}: ${docs.length} docs, ${(bytes / 1e6).toFixed(2)} MB, ${tokens} tokens, ${(tokens / best / 1e6).toFixed(3)} M tokens/s, ${(bytes / best / 1e6).toFixed(2)} MB/s`);
  }
}
main().catch((e) => { console.error(e); process.exit(1); });
