package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"unicode/utf8"
)

// unigramModel is the library's Unigram model (SentencePiece's Viterbi
// segmentation, unknown pieces fused, optional byte fallback; no sampling).
type unigramModel struct {
	pieces       []string
	scores       []float64
	ids          map[string]int32
	unk          int32
	byteFallback bool
	unkScore     float64
	trie         []trieNode

	cache  sync.Map
	cached int64
	mu     sync.Mutex
}

// trieNode is a node of a byte trie of the pieces; id ≥ 0 where a piece ends.
type trieNode struct {
	next map[byte]int32
	id   int32
}

func parseUnigram(raw json.RawMessage, file string) (model, error) {
	var h struct {
		UnkID        *int              `json:"unk_id"`
		ByteFallback bool              `json:"byte_fallback"`
		Vocab        []json.RawMessage `json:"vocab"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, componentError(file, "model", "unreadable Unigram: %v", err)
	}
	if h.UnkID == nil {
		return nil, componentError(file, "model", "Unigram without unk_id not supported (the library fails on unknown characters)")
	}
	if len(h.Vocab) == 0 || *h.UnkID < 0 || *h.UnkID >= len(h.Vocab) {
		return nil, componentError(file, "model", "Unigram unk_id %d outside its vocabulary of %d", *h.UnkID, len(h.Vocab))
	}
	m := &unigramModel{ids: make(map[string]int32, len(h.Vocab)), unk: int32(*h.UnkID), byteFallback: h.ByteFallback}
	m.trie = []trieNode{{id: -1}}
	minScore := math.Inf(1)
	for i, r := range h.Vocab {
		var pair []json.RawMessage
		var piece string
		if err := json.Unmarshal(r, &pair); err != nil || len(pair) != 2 || json.Unmarshal(pair[0], &piece) != nil {
			return nil, componentError(file, "model", "Unigram vocabulary entry %d is not [piece, score]", i)
		}
		score, err := serdeFloat(string(bytes.TrimSpace(pair[1])))
		if err != nil {
			return nil, componentError(file, "model", "Unigram vocabulary entry %d: %v", i, err)
		}
		m.pieces = append(m.pieces, piece)
		m.scores = append(m.scores, score)
		m.ids[piece] = int32(i)
		if score < minScore {
			minScore = score
		}
		n := int32(0)
		for j := 0; j < len(piece); j++ {
			c := piece[j]
			nx, ok := m.trie[n].next[c]
			if !ok {
				if m.trie[n].next == nil {
					m.trie[n].next = map[byte]int32{}
				}
				nx = int32(len(m.trie))
				m.trie = append(m.trie, trieNode{id: -1})
				m.trie[n].next[c] = nx
			}
			n = nx
		}
		if piece != "" {
			// The library maps a piece to its last id in the vocabulary.
			m.trie[n].id = int32(i)
		}
	}
	m.unkScore = minScore - 10
	return m, nil
}

func (m *unigramModel) tokenToID(tok string) (int32, bool) {
	id, ok := m.ids[tok]
	return id, ok
}

func (m *unigramModel) idToToken(id int32) (string, bool) {
	if id < 0 || int(id) >= len(m.pieces) {
		return "", false
	}
	return m.pieces[id], true
}

func (m *unigramModel) size() int { return len(m.pieces) }

func (m *unigramModel) vocabLen() int { return len(m.pieces) }

func (m *unigramModel) tokenize(dst []int32, w string) []int32 {
	if w == "" {
		return dst
	}
	if len(w) <= cacheWordMax {
		if v, ok := m.cache.Load(w); ok {
			return append(dst, v.([]int32)...)
		}
	}
	n := len(dst)
	for _, s := range m.segment(w) {
		if id, ok := m.ids[s]; ok {
			dst = append(dst, id)
			continue
		}
		if m.byteFallback {
			all := true
			for j := 0; j < len(s); j++ {
				if _, ok := m.ids[fmt.Sprintf("<0x%02X>", s[j])]; !ok {
					all = false
					break
				}
			}
			if all {
				for j := 0; j < len(s); j++ {
					dst = append(dst, m.ids[fmt.Sprintf("<0x%02X>", s[j])])
				}
				continue
			}
		}
		dst = append(dst, m.unk)
	}
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

// segment is Unigram::encode_optimized: the best-scoring segmentation, runs
// of unknown characters fused into one piece.
func (m *unigramModel) segment(s string) []string {
	type node struct {
		id      int32
		score   float64
		startAt int // -1: unset
	}
	best := make([]node, len(s)+1)
	for i := range best {
		best[i].startAt = -1
	}
	for at := 0; at < len(s); {
		here := best[at].score
		_, mblen := utf8.DecodeRuneInString(s[at:])
		single := false
		n := int32(0)
		for k := at; k < len(s); k++ {
			nx, ok := m.trie[n].next[s[k]]
			if !ok {
				break
			}
			n = nx
			if id := m.trie[n].id; id >= 0 {
				end := k + 1
				cand := m.scores[id] + here
				if t := &best[end]; t.startAt < 0 || cand > t.score {
					t.score, t.startAt, t.id = cand, at, id
				}
				if end-at == mblen {
					single = true
				}
			}
		}
		if !single {
			cand := m.unkScore + here
			if t := &best[at+mblen]; t.startAt < 0 || cand > t.score {
				t.score, t.startAt, t.id = cand, at, m.unk
			}
		}
		at += mblen
	}
	var out []string
	var unk []string
	for end := len(s); end > 0; {
		nd := best[end]
		if nd.id == m.unk {
			unk = append(unk, s[nd.startAt:end])
		} else {
			if len(unk) > 0 {
				out = append(out, joinReversed(unk))
				unk = unk[:0]
			}
			out = append(out, s[nd.startAt:end])
		}
		end = nd.startAt
	}
	if len(unk) > 0 {
		out = append(out, joinReversed(unk))
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func joinReversed(parts []string) string {
	var b strings.Builder
	for i := len(parts) - 1; i >= 0; i-- {
		b.WriteString(parts[i])
	}
	return b.String()
}
