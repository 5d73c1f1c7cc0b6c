// Writes ../expected.json.gz: the ids and decodings the real Hugging Face
// tokenizers library (its Node binding, tokenizers@0.23.2) gives for every
// text of ../corpus.json, with every tokenizer below. Run: npm ci && node gen.js
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const zlib = require('zlib');
const { Tokenizer } = require('tokenizers');

const td = path.join(__dirname, '..');

// Layouts other checkpoints ship, made from the vocabularies above by
// replacing top-level fields (the Go test applies the same patches).
const metaspaceFirst = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false };
const splitThenByteLevel = (regex) => ({
  type: 'Sequence', pretokenizers: [
    { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false },
    { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
  ],
});
const cases = [
  { name: 'gpt2', dir: 'gpt2' },
  { name: 'llama3.1', dir: 'llama3.1' },
  { name: 'qwen3', dir: 'qwen3' },
  { name: 'mistral7b', dir: 'mistral7b' },
  // Mistral 7B v0.3 / Llama with legacy=false: Metaspace pre-tokenizer instead of Prepend+Replace.
  { name: 'mistral7b-metaspace', dir: 'mistral7b', patch: { normalizer: null, pre_tokenizer: metaspaceFirst, decoder: metaspaceFirst } },
  // Older SentencePiece conversions: Metaspace splitting on every ▁, prefix always.
  {
    name: 'mistral7b-metaspace-split', dir: 'mistral7b', patch: {
      normalizer: null,
      pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: true },
      decoder: { type: 'Sequence', decoders: [{ type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: true }, { type: 'ByteFallback' }, { type: 'Fuse' }] },
    },
  },
  // Other families' split patterns on the Llama 3.1 vocabulary: Mistral Nemo's Tekken and GPT-4o's o200k.
  { name: 'llama3.1-tekken-regex', dir: 'llama3.1', patch: { pre_tokenizer: splitThenByteLevel(String.raw`[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`) } },
  { name: 'llama3.1-o200k-regex', dir: 'llama3.1', patch: { pre_tokenizer: splitThenByteLevel(String.raw`[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`) } },
  // Gemma's layout: spaces replaced by ▁ with no prefix, Replace/ByteFallback/Fuse decoder.
  {
    name: 'mistral7b-gemma-layout', dir: 'mistral7b', patch: {
      normalizer: { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' },
      decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '\u2581' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }] },
    },
  },
  // Split on a literal string, merged with the previous piece, and on a regex with Removed/MergedWithNext/Contiguous.
  {
    name: 'mistral7b-split-behaviours', dir: 'mistral7b', patch: {
      normalizer: null,
      pre_tokenizer: { type: 'Sequence', pretokenizers: [
        { type: 'Split', pattern: { String: ' ' }, behavior: 'MergedWithPrevious', invert: false },
        { type: 'Split', pattern: { Regex: '[.,;]' }, behavior: 'MergedWithNext', invert: false },
        { type: 'Split', pattern: { Regex: '\\d' }, behavior: 'Contiguous', invert: false },
        { type: 'Split', pattern: { String: '\n' }, behavior: 'Removed', invert: false },
        { type: 'Split', pattern: { Regex: '\\p{Han}+' }, behavior: 'Isolated', invert: true },
        { type: 'Digits', individual_digits: false },
      ] },
    },
  },
  // Added tokens with every option (Phi-3 ships rstrip tokens; chat templates add non-special ones).
  {
    name: 'mistral7b-added-tokens', dir: 'mistral7b', patch: {
      added_tokens: [
        { id: 0, content: '<unk>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
        { id: 1, content: '<s>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
        { id: 2, content: '</s>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
        { id: 32000, content: '<|user|>', single_word: false, lstrip: false, rstrip: true, normalized: false, special: true },
        { id: 32001, content: '<|end|>', single_word: false, lstrip: true, rstrip: true, normalized: false, special: true },
        { id: 32002, content: '<|assistant|>', single_word: false, lstrip: true, rstrip: false, normalized: false, special: false },
        { id: 32003, content: 'hello', single_word: true, lstrip: false, rstrip: false, normalized: true, special: false },
        { id: 32004, content: ' world', single_word: false, lstrip: false, rstrip: false, normalized: true, special: false },
        { id: 32005, content: '<tool_call>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: false },
      ],
    },
  },
  { name: 'unigram', dir: 'unigram' },
  { name: 'unigram-bytefallback', dir: 'unigram-bytefallback' },
  // SmolLM / StarCoder layout: single digits before byte-level splitting.
  {
    name: 'gpt2-digits', dir: 'gpt2', patch: {
      pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true }, { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true }] },
    },
  },
];

// Unigram files (no released LLM checkpoint of rankzip's families ships one):
// the first 8000 pieces of Mistral 7B's vocabulary with SentencePiece-like
// scores, in a T5-like layout (Metaspace, unknown pieces fused into <unk>) and
// in the Llama layout with byte fallback. Written to ../unigram*/.
function writeUnigramFiles() {
  const mistral = JSON.parse(zlib.gunzipSync(fs.readFileSync(path.join(td, 'mistral7b', 'tokenizer.json.gz'))).toString('utf8'));
  const byId = [];
  for (const [piece, id] of Object.entries(mistral.model.vocab)) if (id < 8000) byId[id] = piece;
  const vocab = byId.map((p, id) => [p, id < 3 || /^<0x[0-9A-F]{2}>$/.test(p) ? 0 : -Math.log(id + 2) - p.length / 10]);
  const base = { version: '1.0', truncation: null, padding: null, added_tokens: mistral.added_tokens };
  const metaspace = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: true };
  const t5like = Object.assign({}, base, {
    normalizer: null, pre_tokenizer: metaspace, decoder: metaspace,
    post_processor: { type: 'TemplateProcessing', single: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
      pair: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }, { Sequence: { id: 'B', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
      special_tokens: { '</s>': { id: '</s>', ids: [2], tokens: ['</s>'] } } },
    model: { type: 'Unigram', unk_id: 0, vocab, byte_fallback: false },
  });
  const llamalike = Object.assign({}, base, {
    normalizer: mistral.normalizer, pre_tokenizer: null, decoder: mistral.decoder, post_processor: mistral.post_processor,
    model: { type: 'Unigram', unk_id: 0, vocab, byte_fallback: true },
  });
  for (const [dir, json] of [['unigram', t5like], ['unigram-bytefallback', llamalike]]) {
    fs.mkdirSync(path.join(td, dir), { recursive: true });
    fs.writeFileSync(path.join(td, dir, 'tokenizer.json.gz'), zlib.gzipSync(JSON.stringify(json), { level: 9 }));
  }
}

function load(c) {
  const json = JSON.parse(zlib.gunzipSync(fs.readFileSync(path.join(td, c.dir, 'tokenizer.json.gz'))).toString('utf8'));
  Object.assign(json, c.patch || {});
  const tmp = path.join(os.tmpdir(), `rankzip-tok-${process.pid}-${c.name}.json`);
  fs.writeFileSync(tmp, JSON.stringify(json));
  const tok = Tokenizer.fromFile(tmp);
  fs.unlinkSync(tmp);
  return tok;
}

// randomTexts makes n texts from a seeded generator: runs drawn from pools of
// characters that exercise every branch of the pre-tokenizers.
function randomTexts(n, seed) {
  let x = seed >>> 0;
  const rnd = (k) => { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; return x % k; };
  const pools = [
    'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ', '0123456789', ' ', '  ', '\n', '\r\n', '\t',
    ".,;:!?-_'\"()[]{}<>/\\|@#$%^&*+=~`", "'s", "'T", "'re", "'LL", 'éàüñçøåßœ', '你好世界中文字', 'こんにちはカタカナ',
    '한국어', 'Привет', '😀👍🏽🚀❤️', '\u200d\u200b\ufeff', '\u00a0\u3000\u2003', 'e\u0301a\u0308', '𝔘𝐛𓀀',
    '<s>', '</s>', '<|endoftext|>', '<|im_start|>', '<|eot_id|>', '<|begin_of_text|>', '<0x41>', '▁', 'Ġ',
  ];
  const out = [];
  for (let i = 0; i < n; i++) {
    let s = '';
    const runs = 1 + rnd(12);
    for (let r = 0; r < runs; r++) {
      const pool = pools[rnd(pools.length)];
      const chars = Array.from(pool);
      if (pool.length > 3 && rnd(3) > 0) {
        const len = 1 + rnd(8);
        for (let k = 0; k < len; k++) s += chars[rnd(chars.length)];
      } else {
        s += pool.repeat(1 + rnd(3));
      }
    }
    out.push(s);
  }
  return out;
}

async function main() {
  writeUnigramFiles();
  const fixed = JSON.parse(fs.readFileSync(path.join(td, 'corpus.json'), 'utf8'));
  const random = randomTexts(400, 20261204);
  const corpus = fixed.concat(random);
  const out = { generator: 'tokenizers@' + require('tokenizers/package.json').version, random_texts: random, cases: [] };
  for (const c of cases) {
    const tok = load(c);
    const results = [];
    for (const text of corpus) {
      const withSpecial = (await tok.encode(text, null, { addSpecialTokens: true })).getIds();
      const plain = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
      results.push({
        ids: withSpecial,
        ids_plain: plain,
        decode: await tok.decode(withSpecial, false),
        decode_skip: await tok.decode(withSpecial, true),
      });
    }
    // Decoding arbitrary id sequences (partial UTF-8, byte tokens out of
    // order, special tokens anywhere, ids past the vocabulary).
    let x = 977;
    const rnd = (k) => { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; return x % k; };
    const size = tok.getVocabSize ? tok.getVocabSize(true) : 0;
    const decodes = [];
    for (let i = 0; i < 200; i++) {
      const ids = [];
      const n = 1 + rnd(12);
      for (let k = 0; k < n; k++) {
        const r = rnd(10);
        // Mostly low ids (bytes and byte tokens live there), some anywhere, some at the
        // top (added tokens of most families) or past the end.
        ids.push(r < 5 ? rnd(300) : r < 8 ? rnd(size) : size - 30 + rnd(35));
      }
      decodes.push({ ids, decode: await tok.decode(ids, false), decode_skip: await tok.decode(ids, true) });
    }
    out.cases.push({ name: c.name, dir: c.dir, patch: c.patch || null, results, decodes });
    console.log(c.name, results.length, 'texts');
  }
  fs.writeFileSync(path.join(td, 'expected.json.gz'), zlib.gzipSync(JSON.stringify(out), { level: 9 }));
}

main().catch((e) => { console.error(e); process.exit(1); });
