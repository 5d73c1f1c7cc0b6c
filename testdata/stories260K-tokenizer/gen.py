# Writes tokenizer.json and tokenizer_config.json: a made-up tokenizer for the
# stories260K tests (the model's own tok512.model is not included). It has the
# Llama 2 layout (SentencePiece-style BPE with byte fallback, ▁ for spaces,
# <s> added in front) and the id layout of llama2.c's tok512: <unk> 0, <s> 1,
# </s> 2, the 256 byte tokens <0x00>..<0xFF> at 3..258; then single
# characters and a few merges, 512 ids at most. Run: python3 gen.py
import json

vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
for b in range(256):
    vocab["<0x%02X>" % b] = len(vocab)
for c in "▁etaoinshrdlucmfwypvbgkjqxzETAOINSHRDLUCMFWYPVBGKJQXZ0123456789.,!?'\"-:;()":
    vocab[c] = len(vocab)
pairs = ["▁ t", "h e", "▁t he", "▁ a", "i n", "e r", "o n", "a n", "▁ s", "e d", "▁ w", "i t", "o u", "▁ h",
         "a t", "e n", "▁ b", "▁ T", "▁T he", "r e", "▁ o", "a y", "▁ d", "i s", "▁ f", "l e", "o r", "▁ p",
         "in g", "▁ m", "▁ l", "a r", "o m", "▁ c", "▁ g", "e s", "▁a n", "▁an d", "▁ I", "l l", "▁ L", "▁ 1"]
merges = []
for p in pairs:
    a, b = p.split(" ")
    assert a in vocab and b in vocab, p
    vocab[a + b] = len(vocab)
    merges.append(p)
assert len(vocab) <= 512, len(vocab)

def special(i, s):
    return {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}

tok = {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
    "normalizer": {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
    "pre_tokenizer": None,
    "post_processor": {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
    "decoder": {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
    "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
              "vocab": vocab, "merges": merges},
}
with open("tokenizer.json", "w", encoding="utf-8") as f:
    json.dump(tok, f, ensure_ascii=False, indent=1)
    f.write("\n")
with open("tokenizer_config.json", "w") as f:
    json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
               "unk_token": "<unk>", "tokenizer_class": "LlamaTokenizer"}, f, indent=1)
    f.write("\n")
