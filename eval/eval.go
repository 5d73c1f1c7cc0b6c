// Package eval measures a language model on token sequences: mean
// next-token negative log-likelihood, perplexity and, against a baseline
// model, the mean KL(baseline ‖ model) per token and top-1 agreement.
//
// Every position but the first of each sequence is scored: position t is
// predicted from the logits of position t-1. Sums are kept in float64.
package eval

import (
	"fmt"
	"math"
)

// Report is the result of an evaluation; the JSON keys are part of the CLI.
type Report struct {
	Sequences int      `json:"sequences"`
	Tokens    int      `json:"tokens"`
	NLL       float64  `json:"nll"`
	PPL       float64  `json:"ppl"`
	KVBytes   int      `json:"kv_bytes_per_token"` // KV cache per token at 16-bit storage
	KL        *float64 `json:"kl,omitempty"`
	Top1Agree *float64 `json:"top1_agree,omitempty"`
}

// Accumulator sums the statistics of one sequence at a time.
type Accumulator struct {
	vocab     int
	sequences int
	tokens    int
	nll       float64
	kl        float64
	agree     int
	compared  int
}

// NewAccumulator returns an accumulator for logits over vocab entries.
func NewAccumulator(vocab int) *Accumulator { return &Accumulator{vocab: vocab} }

// Add scores one sequence: logits is len(ids)×vocab (row t holds the logits
// after reading ids[t]). base, if not nil, holds the baseline's logits of the
// same shape.
func (a *Accumulator) Add(ids []int32, logits, base []float32) error {
	v := a.vocab
	if len(logits) != len(ids)*v {
		return fmt.Errorf("eval: %d logits for %d tokens of vocabulary %d", len(logits), len(ids), v)
	}
	if base != nil && len(base) != len(logits) {
		return fmt.Errorf("eval: baseline has %d logits, model %d", len(base), len(logits))
	}
	lp := make([]float64, v)
	bp := make([]float64, v)
	for t := 0; t+1 < len(ids); t++ {
		row := logits[t*v : (t+1)*v]
		logSoftmax(lp, row)
		nll := -lp[ids[t+1]]
		if math.IsNaN(nll) || math.IsInf(nll, 0) {
			return fmt.Errorf("eval: non-finite log-likelihood at position %d", t+1)
		}
		a.nll += nll
		a.tokens++
		if base == nil {
			continue
		}
		brow := base[t*v : (t+1)*v]
		logSoftmax(bp, brow)
		a.kl += klRow(bp, lp)
		a.compared++
		if argmax(row) == argmax(brow) {
			a.agree++
		}
	}
	a.sequences++
	return nil
}

// Report returns the means so far. withBaseline adds KL and top-1 agreement.
func (a *Accumulator) Report(withBaseline bool) Report {
	r := Report{Sequences: a.sequences, Tokens: a.tokens}
	if a.tokens > 0 {
		r.NLL = a.nll / float64(a.tokens)
		r.PPL = math.Exp(r.NLL)
	}
	if withBaseline && a.compared > 0 {
		kl := a.kl / float64(a.compared)
		agree := float64(a.agree) / float64(a.compared)
		r.KL, r.Top1Agree = &kl, &agree
	}
	return r
}

// logSoftmax writes log softmax(x) into dst in float64.
func logSoftmax(dst []float64, x []float32) {
	mx := math.Inf(-1)
	for _, v := range x {
		mx = math.Max(mx, float64(v))
	}
	var sum float64
	for _, v := range x {
		sum += math.Exp(float64(v) - mx)
	}
	lse := mx + math.Log(sum)
	for i, v := range x {
		dst[i] = float64(v) - lse
	}
}

func argmax(x []float32) int {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return best
}

// MeanKL is the mean over rows of KL(softmax(base) ‖ softmax(logits)) for two
// rows×vocab logit matrices of the same shape.
func MeanKL(base, logits []float32, vocab int) float64 {
	lp := make([]float64, vocab)
	bp := make([]float64, vocab)
	rows := len(base) / vocab
	var sum float64
	for r := range rows {
		logSoftmax(bp, base[r*vocab:(r+1)*vocab])
		logSoftmax(lp, logits[r*vocab:(r+1)*vocab])
		sum += klRow(bp, lp)
	}
	return sum / float64(max(rows, 1))
}

// klRow is KL(p ‖ q) from log-probabilities.
func klRow(logP, logQ []float64) float64 {
	var kl float64
	for i, lp := range logP {
		if p := math.Exp(lp); p > 0 {
			kl += p * (lp - logQ[i])
		}
	}
	return kl
}
