package gptq_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/methods/quant"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
	"github.com/rankzip/rankzip/model/safetensors"
)

// ExportBlocks, reading one block at a time, writes Export's files byte for
// byte (each block read twice: to plan, then to write); TestOpenReadsBlocksAsLoad
// reads them back one block at a time.
func TestExportBlocksMatchesExport(t *testing.T) {
	q := rtnModel(t, synthetic(t), quant.Config{Bits: 4, GroupSize: 32})
	qc, _ := gptq.NewQuantizeConfig(4, 32, false, false)
	whole, streamed := t.TempDir(), t.TempDir()
	if err := gptq.Export(q, whole, safetensors.BF16, qc); err != nil {
		t.Fatal(err)
	}
	var reads []int
	block := func(l int) (*model.Block, error) { reads = append(reads, l); return q.Blocks[l], nil }
	if err := gptq.ExportBlocks(q, len(q.Blocks), block, streamed, safetensors.BF16, qc); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"model.safetensors", "config.json", "quantize_config.json"} {
		a, _ := os.ReadFile(filepath.Join(whole, f))
		b, err := os.ReadFile(filepath.Join(streamed, f))
		if err != nil || len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("%s: ExportBlocks wrote %d bytes differing from Export's %d (%v)", f, len(b), len(a), err)
		}
	}
	if !slices.Equal(reads, []int{0, 1, 0, 1}) {
		t.Errorf("blocks read %v, want each twice: [0 1 0 1]", reads)
	}

}

// ExportBlocks refuses, before writing any data, blocks that quantize
// different linears, as Export does.
func TestExportBlocksMixedQuantized(t *testing.T) {
	m := synthetic(t)
	q := rtnModel(t, m, quant.Config{Bits: 4, GroupSize: 32})
	q.Blocks[1] = m.Blocks[1] // dense
	qc, _ := gptq.NewQuantizeConfig(4, 32, false, false)
	dir := t.TempDir()
	err := gptq.ExportBlocks(q, 2, func(l int) (*model.Block, error) { return q.Blocks[l], nil }, dir, safetensors.F32, qc)
	if err == nil || !strings.Contains(err.Error(), "quantizes the same linears in every block") {
		t.Errorf("mixed blocks: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("the refused export left %d files", len(ents))
	}
}
