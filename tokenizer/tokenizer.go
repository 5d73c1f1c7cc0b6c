package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Tokenizer encodes text to token ids and back. It is safe for concurrent use.
type Tokenizer struct {
	name       string // for error messages: the file it came from
	added      *addedVocab
	normalizer normalizer    // nil: none
	pretok     preTokenizer  // nil: none
	model      model         // BPE or Unigram
	post       postProcessor // nil: none
	decoder    decoder       // nil: tokens joined by spaces
	bos, eos   int32         // -1 when unknown
	bosTok     string        // tokenizer_config.json's bos_token, "" when unknown
	eosTok     string        // tokenizer_config.json's eos_token, "" when unknown
	configNote string        // set when tokenizer_config.json changed the post-processor
	vocabSize  int           // model vocabulary plus added tokens
}

// Load reads DIR/tokenizer.json and, when present, DIR/tokenizer_config.json.
// DIR may also name a tokenizer.json file directly.
func Load(dir string) (*Tokenizer, error) {
	path := dir
	if st, err := os.Stat(dir); err == nil && st.IsDir() {
		path = filepath.Join(dir, "tokenizer.json")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("tokenizer: %s: no tokenizer.json (rankzip reads the Hugging Face tokenizer.json format only)", dir)
		}
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t, err := parse(data, path)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(filepath.Dir(path), "tokenizer_config.json")
	if cfg, err := os.ReadFile(cfgPath); err == nil {
		if err := t.applyConfig(cfg, cfgPath); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	return t, nil
}

// FromJSON builds a tokenizer from the bytes of a tokenizer.json file alone;
// name is used in error messages.
func FromJSON(data []byte, name string) (*Tokenizer, error) { return parse(data, name) }

type fileJSON struct {
	Version       string          `json:"version"`
	Truncation    json.RawMessage `json:"truncation"`
	Padding       json.RawMessage `json:"padding"`
	AddedTokens   []addedToken    `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         json.RawMessage `json:"model"`
}

func isNull(m json.RawMessage) bool {
	s := strings.TrimSpace(string(m))
	return s == "" || s == "null"
}

// componentError names the file and the component that could not be used.
func componentError(file, component string, format string, args ...any) error {
	return fmt.Errorf("%s: %s %s", file, component, fmt.Sprintf(format, args...))
}

func parse(data []byte, file string) (*Tokenizer, error) {
	var f fileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%s: not a tokenizer.json: %v", file, err)
	}
	if isNull(f.Model) {
		return nil, fmt.Errorf("%s: no model", file)
	}
	t := &Tokenizer{name: file, bos: -1, eos: -1}
	var err error
	if t.model, err = parseModel(f.Model, file); err != nil {
		return nil, err
	}
	if !isNull(f.Normalizer) {
		if t.normalizer, err = parseNormalizer(f.Normalizer, file); err != nil {
			return nil, err
		}
	}
	if !isNull(f.PreTokenizer) {
		if t.pretok, err = parsePreTokenizer(f.PreTokenizer, file); err != nil {
			return nil, err
		}
	}
	if !isNull(f.PostProcessor) {
		if t.post, err = parsePostProcessor(f.PostProcessor, file); err != nil {
			return nil, err
		}
	}
	if !isNull(f.Decoder) {
		if t.decoder, err = parseDecoder(f.Decoder, file); err != nil {
			return nil, err
		}
	}
	if !isNull(f.Truncation) {
		return nil, componentError(file, "truncation", "is set; rankzip encodes whole texts (remove it from the file)")
	}
	// Padding only matters for batches, which rankzip never pads: ignored.
	if t.added, err = newAddedVocab(f.AddedTokens, t.model, t.normalizer, file); err != nil {
		return nil, err
	}
	t.vocabSize = t.model.size()
	for id := range t.added.byID {
		if int(id)+1 > t.vocabSize {
			t.vocabSize = int(id) + 1
		}
	}
	return t, nil
}

// tokenConfig is the part of tokenizer_config.json that rankzip reads.
type tokenConfig struct {
	TokenizerClass string          `json:"tokenizer_class"`
	BOSToken       json.RawMessage `json:"bos_token"`
	EOSToken       json.RawMessage `json:"eos_token"`
	AddBOSToken    *bool           `json:"add_bos_token"`
	AddEOSToken    *bool           `json:"add_eos_token"`
}

// tokenContent reads a token given as a string or an AddedToken object.
func tokenContent(m json.RawMessage) (string, error) {
	if isNull(m) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(m, &s); err == nil {
		return s, nil
	}
	var o struct {
		Content string `json:"content"`
	}
	if err := json.Unmarshal(m, &o); err != nil {
		return "", err
	}
	return o.Content, nil
}

// classesRebuildingTemplate are the transformers tokenizer classes whose fast
// implementation replaces the post-processor by bos? A eos? built from
// add_bos_token / add_eos_token (LlamaTokenizerFast.update_post_processor and
// its copies).
var classesRebuildingTemplate = map[string]bool{
	"LlamaTokenizer": true, "LlamaTokenizerFast": true,
	"CodeLlamaTokenizer": true, "CodeLlamaTokenizerFast": true,
	"GemmaTokenizer": true, "GemmaTokenizerFast": true,
}

func (t *Tokenizer) applyConfig(data []byte, file string) error {
	var c tokenConfig
	if err := json.Unmarshal(data, &c); err != nil {
		return fmt.Errorf("%s: %v", file, err)
	}
	var err error
	if t.bosTok, err = tokenContent(c.BOSToken); err != nil {
		return fmt.Errorf("%s: bos_token: %v", file, err)
	}
	if t.eosTok, err = tokenContent(c.EOSToken); err != nil {
		return fmt.Errorf("%s: eos_token: %v", file, err)
	}
	if t.bosTok != "" {
		id, ok := t.TokenID(t.bosTok)
		if !ok {
			return fmt.Errorf("%s: bos_token %q is not in the vocabulary", file, t.bosTok)
		}
		t.bos = id
	}
	if t.eosTok != "" {
		id, ok := t.TokenID(t.eosTok)
		if !ok {
			return fmt.Errorf("%s: eos_token %q is not in the vocabulary", file, t.eosTok)
		}
		t.eos = id
	}
	if classesRebuildingTemplate[c.TokenizerClass] && (c.AddBOSToken != nil || c.AddEOSToken != nil) {
		addBOS, addEOS := true, false
		if c.AddBOSToken != nil {
			addBOS = *c.AddBOSToken
		}
		if c.AddEOSToken != nil {
			addEOS = *c.AddEOSToken
		}
		var single []int32
		var seq []bool
		if addBOS {
			if t.bos < 0 {
				return fmt.Errorf("%s: add_bos_token is true but there is no bos_token", file)
			}
			single, seq = append(single, t.bos), append(seq, false)
		}
		single, seq = append(single, 0), append(seq, true)
		if addEOS {
			if t.eos < 0 {
				return fmt.Errorf("%s: add_eos_token is true but there is no eos_token", file)
			}
			single, seq = append(single, t.eos), append(seq, false)
		}
		t.post = &templateProcessor{ids: single, isSeq: seq}
		t.configNote = fmt.Sprintf("%s: %s with add_bos_token=%v add_eos_token=%v", file, c.TokenizerClass, addBOS, addEOS)
	}
	return nil
}

// TokenID returns the id of a token given by its content (added tokens first,
// then the model's vocabulary).
func (t *Tokenizer) TokenID(tok string) (int32, bool) {
	if id, ok := t.added.byContent[tok]; ok {
		return id, true
	}
	return t.model.tokenToID(tok)
}

// BOS returns the beginning-of-sequence token id from tokenizer_config.json.
func (t *Tokenizer) BOS() (int32, bool) { return t.bos, t.bos >= 0 }

// EOS returns the end-of-sequence token id from tokenizer_config.json.
func (t *Tokenizer) EOS() (int32, bool) { return t.eos, t.eos >= 0 }

// VocabSize is the number of ids: the model's vocabulary and the added tokens.
func (t *Tokenizer) VocabSize() int { return t.vocabSize }

// piece is a part of the input on its way through the pipeline: either text
// still to be split and tokenized, or an added token already recognised.
type piece struct {
	text    string
	id      int32 // ≥ 0: an added token
	atStart bool  // begins at offset 0 of the original text (Metaspace "first")
}

// Encode turns text into token ids; addSpecial applies the post-processor
// (BOS/EOS and the like), as the library's add_special_tokens.
func (t *Tokenizer) Encode(text string, addSpecial bool) []int32 {
	return t.AppendEncode(nil, text, addSpecial)
}

// AppendEncode appends the ids of text to dst.
func (t *Tokenizer) AppendEncode(dst []int32, text string, addSpecial bool) []int32 {
	pieces := t.added.split([]piece{{text: text, id: -1, atStart: true}}, false, nil)
	pieces = t.added.split(pieces, true, t.normalizer)
	if t.pretok != nil {
		pieces = t.pretok.preTokenize(pieces)
	}
	var prefix, suffix []int32
	if addSpecial && t.post != nil {
		prefix, suffix = t.post.wrap()
	}
	dst = append(dst, prefix...)
	for _, p := range pieces {
		if p.id >= 0 {
			dst = append(dst, p.id)
			continue
		}
		dst = t.model.tokenize(dst, p.text)
	}
	return append(dst, suffix...)
}

// Decode turns ids back into text as the library's decode does; ids outside
// the vocabulary are skipped, as there.
func (t *Tokenizer) Decode(ids []int32, skipSpecial bool) string {
	toks := make([]string, 0, len(ids))
	for _, id := range ids {
		if a, ok := t.added.byID[id]; ok {
			if skipSpecial && t.added.special[a.Content] {
				continue
			}
			if n, ok := t.added.normalizedForm[id]; ok {
				toks = append(toks, n)
			} else {
				toks = append(toks, a.Content)
			}
			continue
		}
		tok, ok := t.model.idToToken(id)
		if !ok {
			continue
		}
		if skipSpecial && t.added.special[tok] {
			continue
		}
		toks = append(toks, tok)
	}
	if t.decoder == nil {
		return strings.Join(toks, " ")
	}
	return strings.Join(t.decoder.decode(toks), "")
}

// SpecialTokens returns the ids Encode puts before and after a text when
// asked to add special tokens.
func (t *Tokenizer) SpecialTokens() (prefix, suffix []int32) {
	if t.post == nil {
		return nil, nil
	}
	return t.post.wrap()
}
