package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
)

// bpeModel is the library's BPE model (no dropout).
type bpeModel struct {
	vocab        map[string]int32
	idToTok      []string
	present      []bool
	merges       map[uint64]mergeInfo // pairKey(left, right)
	unk          int32                // -1: none
	fuseUnk      bool
	byteFallback bool
	byteIDs      [256]int32 // <0xXX> ids when byteFallback (-1 when absent)
	prefix       string     // continuing_subword_prefix
	suffix       string     // end_of_word_suffix
	ignoreMerges bool

	cache  sync.Map // word -> []int32, for short words
	cached int64
	mu     sync.Mutex
}

type mergeInfo struct {
	rank  int32
	newID int32
}

const (
	cacheWordMax = 256     // bytes: longer words are not cached
	cacheEntries = 1 << 18 // at most this many words cached
)

// model turns a pre-tokenized word into ids.
type model interface {
	tokenize(dst []int32, w string) []int32
	tokenToID(tok string) (int32, bool)
	idToToken(id int32) (string, bool)
	size() int     // one past the largest id
	vocabLen() int // entries in the vocabulary (the library's get_vocab_size)
}

func (m *bpeModel) vocabLen() int { return len(m.vocab) }

func (m *bpeModel) tokenToID(tok string) (int32, bool) {
	id, ok := m.vocab[tok]
	return id, ok
}

func (m *bpeModel) idToToken(id int32) (string, bool) {
	if id < 0 || int(id) >= len(m.idToTok) || !m.present[id] {
		return "", false
	}
	return m.idToTok[id], true
}

func (m *bpeModel) size() int { return len(m.idToTok) }

// parseModel reads the "model" of a tokenizer.json: BPE or Unigram.
func parseModel(raw json.RawMessage, file string) (model, error) {
	var kind struct {
		Type   string          `json:"type"`
		Merges json.RawMessage `json:"merges"`
	}
	if err := json.Unmarshal(raw, &kind); err != nil {
		return nil, componentError(file, "model", "unreadable: %v", err)
	}
	if kind.Type == "" && kind.Merges != nil {
		kind.Type = "BPE" // files of old versions of the library omit it
	}
	switch kind.Type {
	case "BPE":
		return parseBPE(raw, file)
	case "Unigram":
		return parseUnigram(raw, file)
	default:
		return nil, componentError(file, "model", "type %q not supported (rankzip reads BPE and Unigram tokenizers)", kind.Type)
	}
}

// parseBPE reads a BPE model: its vocabulary, special tokens and merges.
func parseBPE(raw json.RawMessage, file string) (*bpeModel, error) {
	var h struct {
		Type                    string            `json:"type"`
		Dropout                 *float64          `json:"dropout"`
		UnkToken                *string           `json:"unk_token"`
		ContinuingSubwordPrefix *string           `json:"continuing_subword_prefix"`
		EndOfWordSuffix         *string           `json:"end_of_word_suffix"`
		FuseUnk                 bool              `json:"fuse_unk"`
		ByteFallback            bool              `json:"byte_fallback"`
		IgnoreMerges            bool              `json:"ignore_merges"`
		Vocab                   map[string]int32  `json:"vocab"`
		Merges                  []json.RawMessage `json:"merges"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, componentError(file, "model", "unreadable: %v", err)
	}
	if h.Dropout != nil && *h.Dropout > 0 {
		return nil, componentError(file, "model", "BPE dropout %v not supported (it makes tokenization random)", *h.Dropout)
	}
	m := &bpeModel{vocab: h.Vocab, unk: -1, fuseUnk: h.FuseUnk, byteFallback: h.ByteFallback, ignoreMerges: h.IgnoreMerges}
	if h.ContinuingSubwordPrefix != nil {
		m.prefix = *h.ContinuingSubwordPrefix
	}
	if h.EndOfWordSuffix != nil {
		m.suffix = *h.EndOfWordSuffix
	}
	if err := m.indexVocab(file); err != nil {
		return nil, err
	}
	if h.UnkToken != nil {
		id, ok := m.vocab[*h.UnkToken]
		if !ok {
			return nil, componentError(file, "model", "unk_token %q is not in the vocabulary", *h.UnkToken)
		}
		m.unk = id
	}
	for b := range m.byteIDs {
		m.byteIDs[b] = -1
		if id, ok := m.vocab[fmt.Sprintf("<0x%02X>", b)]; ok {
			m.byteIDs[b] = id
		}
	}
	if err := m.addMerges(h.Merges, file); err != nil {
		return nil, err
	}
	return m, nil
}

// indexVocab builds the id to token table of the vocabulary.
func (m *bpeModel) indexVocab(file string) error {
	max := int32(-1)
	for tok, id := range m.vocab {
		if id < 0 {
			return componentError(file, "model", "token %q has a negative id", tok)
		}
		if id > max {
			max = id
		}
	}
	m.idToTok = make([]string, max+1)
	m.present = make([]bool, max+1)
	for tok, id := range m.vocab {
		m.idToTok[id] = tok
		m.present[id] = true
	}
	return nil
}

// addMerges records the merges, ranked by their order: each "a b" or
// [a, b] of two tokens of the vocabulary whose join is one too.
func (m *bpeModel) addMerges(merges []json.RawMessage, file string) error {
	m.merges = make(map[uint64]mergeInfo, len(merges))
	for rank, r := range merges {
		var a, b string
		var s string
		if err := json.Unmarshal(r, &s); err == nil {
			parts := strings.Split(s, " ")
			if len(parts) != 2 {
				return componentError(file, "model", "merge %d %q is not two tokens", rank, s)
			}
			a, b = parts[0], parts[1]
		} else {
			var pair []string
			if err := json.Unmarshal(r, &pair); err != nil || len(pair) != 2 {
				return componentError(file, "model", "merge %d is neither \"a b\" nor [a, b]", rank)
			}
			a, b = pair[0], pair[1]
		}
		ia, ok1 := m.vocab[a]
		ib, ok2 := m.vocab[b]
		if !ok1 || !ok2 {
			return componentError(file, "model", "merge %d (%q, %q) uses a token not in the vocabulary", rank, a, b)
		}
		merged := a + strings.TrimPrefix(b, m.prefix)
		if m.prefix == "" {
			merged = a + b
		}
		nid, ok := m.vocab[merged]
		if !ok {
			return componentError(file, "model", "merge %d result %q is not in the vocabulary", rank, merged)
		}
		m.merges[pairKey(ia, ib)] = mergeInfo{int32(rank), nid}
	}
	return nil
}

// tokenize appends the ids of one pre-tokenized word.
func (m *bpeModel) tokenize(dst []int32, w string) []int32 {
	if w == "" {
		return dst
	}
	if m.ignoreMerges {
		if id, ok := m.vocab[w]; ok {
			return append(dst, id)
		}
	}
	if len(w) <= cacheWordMax {
		if v, ok := m.cache.Load(w); ok {
			return append(dst, v.([]int32)...)
		}
	}
	n := len(dst)
	dst = m.mergeWord(dst, w)
	if len(w) <= cacheWordMax {
		m.mu.Lock()
		if m.cached < cacheEntries {
			m.cached++
			m.cache.Store(strings.Clone(w), append([]int32(nil), dst[n:]...))
		}
		m.mu.Unlock()
	}
	return dst
}

type symbol struct {
	id         int32
	prev, next int
	len        int
}

type mergeItem struct {
	pos   int
	rank  int32
	newID int32
}

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// mergeHeap is a binary min-heap by (rank, pos), the order of the library's
// merge queue.
type mergeHeap []mergeItem

func (h mergeHeap) less(i, j int) bool {
	if h[i].rank != h[j].rank {
		return h[i].rank < h[j].rank
	}
	return h[i].pos < h[j].pos
}

func (h *mergeHeap) push(x mergeItem) {
	*h = append(*h, x)
	q := *h
	for i := len(q) - 1; i > 0; {
		p := (i - 1) / 2
		if !q.less(i, p) {
			break
		}
		q[i], q[p] = q[p], q[i]
		i = p
	}
}

func (h *mergeHeap) pop() mergeItem {
	q := *h
	top := q[0]
	n := len(q) - 1
	q[0] = q[n]
	q = q[:n]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && q.less(l, m) {
			m = l
		}
		if r < n && q.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		q[i], q[m] = q[m], q[i]
		i = m
	}
	*h = q
	return top
}

// mergeWord is BPE::merge_word followed by Word::merge_all.
func (m *bpeModel) mergeWord(dst []int32, w string) []int32 {
	syms := m.symbols(w)
	m.mergeAll(syms)
	for _, s := range syms {
		if s.len != 0 {
			dst = append(dst, s.id)
		}
	}
	return dst
}

// symbols are the word's characters as tokens (BPE::merge_word): with the
// continuing-subword prefix and end-of-word suffix, else as bytes (byte
// fallback), else as unk (fused when the model says so).
func (m *bpeModel) symbols(w string) []symbol {
	syms := make([]symbol, 0, len(w))
	add := func(id int32, n int) {
		k := len(syms)
		syms = append(syms, symbol{id: id, prev: k - 1, next: -1, len: n})
		if k > 0 {
			syms[k-1].next = k
		}
	}
	unkID, unkLen := int32(-1), 0
	for i := 0; i < len(w); {
		_, size := utf8.DecodeRuneInString(w[i:])
		s := w[i : i+size]
		if i > 0 && m.prefix != "" {
			s = m.prefix + s
		}
		if i+size == len(w) && m.suffix != "" {
			s = s + m.suffix
		}
		if id, ok := m.vocab[s]; ok {
			if unkID >= 0 {
				add(unkID, unkLen)
				unkID = -1
			}
			add(id, size)
			i += size
			continue
		}
		if m.byteFallback {
			all := true
			for j := 0; j < len(s); j++ {
				if m.byteIDs[s[j]] < 0 {
					all = false
					break
				}
			}
			if all {
				for j := 0; j < len(s); j++ {
					add(m.byteIDs[s[j]], 1)
				}
				i += size
				continue
			}
		}
		if m.unk >= 0 {
			switch {
			case unkID >= 0 && m.fuseUnk:
				unkLen += size
			case unkID >= 0:
				add(unkID, unkLen)
				unkID, unkLen = m.unk, size
			default:
				unkID, unkLen = m.unk, size
			}
		}
		i += size
	}
	if unkID >= 0 {
		add(unkID, unkLen)
	}
	return syms
}

// mergeAll applies the merges to syms by rank (Word::merge_all); a merged
// symbol's right neighbour is left with len 0.
func (m *bpeModel) mergeAll(syms []symbol) {
	q := make(mergeHeap, 0, len(syms))
	for i := 0; i+1 < len(syms); i++ {
		if mi, ok := m.merges[pairKey(syms[i].id, syms[i+1].id)]; ok {
			q.push(mergeItem{i, mi.rank, mi.newID})
		}
	}
	for len(q) > 0 {
		top := q.pop()
		cur := &syms[top.pos]
		if cur.len == 0 || cur.next == -1 {
			continue
		}
		nextPos := cur.next
		right := syms[nextPos]
		if mi, ok := m.merges[pairKey(cur.id, right.id)]; !ok || mi.newID != top.newID {
			continue
		}
		cur.id = top.newID
		cur.len += right.len
		cur.next = right.next
		syms[nextPos].len = 0
		if right.next >= 0 {
			syms[right.next].prev = top.pos
		}
		if cur.prev >= 0 {
			if mi, ok := m.merges[pairKey(syms[cur.prev].id, cur.id)]; ok {
				q.push(mergeItem{cur.prev, mi.rank, mi.newID})
			}
		}
		if cur.next >= 0 {
			if mi, ok := m.merges[pairKey(cur.id, syms[cur.next].id)]; ok {
				q.push(mergeItem{top.pos, mi.rank, mi.newID})
			}
		}
	}
}
