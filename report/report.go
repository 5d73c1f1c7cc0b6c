// Package report renders a compression job's report: a self-contained HTML
// page (no network, no scripts, no external fonts; plots as inline SVG made
// with gonum.org/v1/plot) and its data as JSON. The job's workflow writes
// both into the output directory (HTMLFile, JSONFile); `rankzip report`
// renders them again from a job or an output directory.
//
// Data holds plain values (recipe, quality, per-layer records of every
// stage, stage times) so that this package depends on no workflow code.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/rankzip/rankzip/eval"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/recipe"
)

// Files of a report in a job's output directory.
const (
	HTMLFile = "rankzip-report.html"
	JSONFile = "rankzip-report.json"
)

// Data is everything a report shows. Its JSON form is JSONFile.
type Data struct {
	Job    string        `json:"job"`
	Output string        `json:"output"`
	Recipe recipe.Recipe `json:"recipe"`
	// Created is when the job finished (workflow time).
	Created time.Time `json:"created"`
	Backend string    `json:"backend,omitempty"`

	Params                  int64 `json:"params"`
	OriginalParams          int64 `json:"original_params"`
	FileBytes               int64 `json:"file_bytes"`
	OriginalBytes           int64 `json:"original_bytes"`
	Files                   int   `json:"files"`
	KVBytesPerToken         int64 `json:"kv_bytes_per_token"`
	OriginalKVBytesPerToken int64 `json:"original_kv_bytes_per_token"`
	// Original is the original model alone on the evaluation set,
	// Compressed the exported checkpoint against it (nil without one).
	Original   *eval.Report `json:"original,omitempty"`
	Compressed *eval.Report `json:"compressed,omitempty"`

	// Layers are the low-rank stage's per-layer records (model order).
	Layers []model.LowRankReport `json:"layers,omitempty"`
	// Stages are the other stages' per-layer records, in recipe order.
	Stages []Stage `json:"stages,omitempty"`
	// Timings are the job's steps in order, with the time each took.
	Timings []Timing      `json:"timings,omitempty"`
	Elapsed time.Duration `json:"elapsed"`
	Skipped int           `json:"skipped"` // blocks found done in the store
}

// Stage is what a palu, mla, rtn, gptq or eora stage did, over all blocks.
type Stage struct {
	Index  int                 `json:"index"` // in the recipe's stages
	Method string              `json:"method"`
	Quant  []model.QuantReport `json:"quant,omitempty"`
	EoRA   []model.EoRAReport  `json:"eora,omitempty"`
	Palu   map[string][]int    `json:"palu,omitempty"` // module → rank per group
	MLA    []model.MLAReport   `json:"mla,omitempty"`
}

// Timing is one step of a job: inspect, a recipe stage's blocks, export,
// evaluate.
type Timing struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
}

// WriteJSON writes d as indented JSON.
func WriteJSON(w io.Writer, d *Data) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(d)
}

// ReadJSON reads a report's data from a JSONFile.
func ReadJSON(path string) (*Data, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d Data
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%s: not a rankzip report: %w", path, err)
	}
	if d.Job == "" {
		return nil, fmt.Errorf("%s: not a rankzip report (no job id)", path)
	}
	return &d, nil
}

// series is a named set of (layer, value) points.
type series struct {
	name string
	x, y []float64
}

// byModule groups per-layer values by module, in first-seen order, skipping
// names that are not of a layer and values for which keep is false.
func byModule[T any](items []T, name func(T) string, value func(T) (float64, bool)) []series {
	var out []series
	idx := map[string]int{}
	for _, it := range items {
		l, mod, ok := model.ParseModuleName(name(it))
		if !ok {
			continue
		}
		v, keep := value(it)
		if !keep {
			continue
		}
		j, seen := idx[mod]
		if !seen {
			j = len(out)
			idx[mod] = j
			out = append(out, series{name: mod})
		}
		out[j].x = append(out[j].x, float64(l))
		out[j].y = append(out[j].y, v)
	}
	return out
}

// paluSeries turns palu ranks (module → per group) into total latent rank
// per layer, one series per module.
func paluSeries(p map[string][]int) []series {
	names := make([]string, 0, len(p))
	for n := range p {
		names = append(names, n)
	}
	type kv struct {
		layer int
		mod   string
		sum   int
	}
	var items []kv
	for _, n := range names {
		l, mod, ok := model.ParseModuleName(n)
		if !ok {
			continue
		}
		s := 0
		for _, r := range p[n] {
			s += r
		}
		items = append(items, kv{l, mod, s})
	}
	slices.SortFunc(items, func(a, b kv) int {
		if a.layer != b.layer {
			return a.layer - b.layer
		}
		return strings.Compare(a.mod, b.mod)
	})
	return byModule(items, func(k kv) string { return model.ModuleName(k.layer, k.mod) },
		func(k kv) (float64, bool) { return float64(k.sum), true })
}

// DefaultPath is where a report for dir's job goes: dir/HTMLFile.
func DefaultPath(dir string) string { return filepath.Join(dir, HTMLFile) }
