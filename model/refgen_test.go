package model

import (
	"compress/gzip"
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model/safetensors"
)

// refgenWrite, when set, makes TestArchRefgenWrite write the tiny checkpoints
// of refArchs (both config forms), their dense exports, the test sequences and
// rankzip's logits there, for model/testdata/refgen/refgen.py.
var refgenWrite = flag.String("refgen.write", "", "directory for the checkpoints that refgen.py runs through transformers")

// refgenDir holds the logits transformers computed (refgen.py's output).
const refgenDir = "testdata/refgen/transformers"

// refgenName is a checkpoint's directory name for refgen.py.
func refgenName(name string, v5 bool) string {
	if v5 {
		return name + "-v5"
	}
	return name + "-v4"
}

func TestArchRefgenWrite(t *testing.T) {
	if *refgenWrite == "" {
		t.Skip("only with -refgen.write DIR (see model/testdata/refgen/README.md)")
	}
	for _, name := range sortedNames(refArchs) {
		for _, v5 := range []bool{false, true} {
			a := refArchs[name]
			dir := filepath.Join(*refgenWrite, refgenName(name, v5))
			writeRefCheckpoint(t, dir, a, v5, 11)
			m, err := Load(dir, kernels.Default())
			if err != nil {
				t.Fatal(err)
			}
			if err := Save(m, filepath.Join(dir, "export"), safetensors.F32); err != nil {
				t.Fatal(err)
			}
			seqs := refSequences(a.vocab)
			logits, err := m.Forward(seqs)
			if err != nil {
				t.Fatal(err)
			}
			for file, v := range map[string]any{"inputs.json": seqs, "rankzip_logits.json": logits} {
				data, err := json.Marshal(v)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, file), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// refgenArch is the refArchs entry and config form of a checkpoint
// directory name ("" when none).
func refgenArch(dir string) (name string, v5 bool) {
	for _, n := range sortedNames(refArchs) {
		for _, form := range []bool{false, true} {
			if refgenName(n, form) == dir {
				return n, form
			}
		}
	}
	return "", false
}

// refgenResult is one checkpoint's record written by refgen.py.
type refgenResult struct {
	Name         string    `json:"name"`
	Transformers string    `json:"transformers"`
	Error        string    `json:"error"`
	Logits       []float64 `json:"logits"` // transformers in float64, rows of every sequence in order
	// Figures of the run (relative errors; the export's largest difference).
	RankzipVsTF32 float64 `json:"rankzip_vs_tf32"`
	ExportMaxDiff float64 `json:"export_max_abs_diff"`
}

// Forward equals transformers' own logits, where refgen.py has been run on a
// machine that has transformers and its output kept in testdata.
func TestArchTransformersLogits(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(refgenDir, "*.json"))
	if len(files) == 0 {
		t.Skipf("no transformers logits in %s: run model/testdata/refgen/refgen.py where transformers is installed", refgenDir)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var r refgenResult
		if err := json.Unmarshal(data, &r); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if r.Error != "" {
			t.Errorf("%s: transformers failed: %s", r.Name, r.Error)
			continue
		}
		e, eRef, ok := refLogitErrs(t, f, r.Name, r.Logits, "transformers")
		if !ok {
			continue
		}
		t.Logf("%s: rankzip vs transformers %s (float64): %.2e; the float64 reference vs transformers: %.2e; at generation: rankzip vs transformers float32 %.2e, dense export reloaded in transformers max |Δ| %.1e",
			r.Name, r.Transformers, e, eRef, r.RankzipVsTF32, r.ExportMaxDiff)
		// transformers computes the RoPE tables in float32 even in a
		// float64 model (inv_freq from a float arange, freqs under autocast
		// disabled to float32), so its float64 logits agree with the float64
		// reference to about 1e-7, not to float64 precision.
		if !(eRef < 1e-6) {
			t.Errorf("%s: the float64 reference differs from transformers by %.3e", r.Name, eRef)
		}
		if r.ExportMaxDiff != 0 {
			t.Errorf("%s: rankzip's dense export changed transformers' logits by up to %v", r.Name, r.ExportMaxDiff)
		}
		if !(e < archTol) {
			t.Errorf("%s: relative error %.3e against transformers %s", r.Name, e, r.Transformers)
		}
	}
}

// pyrefDir holds the logits of pyref.py, the numpy float64 reference.
const pyrefDir = "testdata/refgen/pyref"

// Forward equals the logits of pyref.py, a float64 reference in numpy that
// reads each config.json itself (so it checks rankzip's reading of the
// windows, layer types and soft caps as well as the arithmetic), on every
// checkpoint in both config forms; and pyref.py agrees with the Go float64
// reference of archref_test.go.
func TestArchPythonReferenceLogits(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(pyrefDir, "*.json.gz"))
	if len(files) != 2*len(refArchs) {
		t.Errorf("%d files in %s for %d checkpoints in two forms: rerun pyref.py (README.md)", len(files), pyrefDir, len(refArchs))
	}
	for _, f := range files {
		var r struct {
			Name   string    `json:"name"`
			Logits []float64 `json:"logits"`
		}
		if err := readGzipJSON(f, &r); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		e, eRef, ok := refLogitErrs(t, f, r.Name, r.Logits, "pyref.py")
		if !ok {
			continue
		}
		t.Logf("%s: rankzip vs pyref.py %.2e; Go float64 reference vs pyref.py %.2e", r.Name, e, eRef)
		if !(e < archTol) {
			t.Errorf("%s: relative error %.3e against pyref.py", r.Name, e)
		}
		if !(eRef < 1e-9) { // two float64 computations, pyref.py's stored to 10 digits
			t.Errorf("%s: the Go reference differs from pyref.py by %.3e", r.Name, eRef)
		}
	}
}

// refLogitErrs compares the logits that the generator from stored in file f
// for checkpoint dir with Forward's and with the Go float64 reference's
// (archref_test.go), returning both relative errors; ok is false, the
// failure reported, when the checkpoint is unknown or the counts differ.
func refLogitErrs(t *testing.T, f, dir string, logits []float64, from string) (e, eRef float64, ok bool) {
	t.Helper()
	name, v5 := refgenArch(dir)
	if name == "" {
		t.Errorf("%s: unknown checkpoint %q", f, dir)
		return 0, 0, false
	}
	m, a, tensors, _ := loadRef(t, name, v5)
	seqs := refSequences(a.vocab)
	got, err := m.Forward(seqs)
	if err != nil {
		t.Fatal(err)
	}
	var ref []float64
	for _, s := range seqs {
		ref = append(ref, refForward(a, tensors, s)...)
	}
	if len(logits) != len(got) {
		t.Errorf("%s: %d logits from %s, %d here", dir, len(logits), from, len(got))
		return 0, 0, false
	}
	var d, w float64
	for i, x := range logits {
		d += (ref[i] - x) * (ref[i] - x)
		w += x * x
	}
	return refRelErr(got, logits), math.Sqrt(d / w), true
}

// readGzipJSON decodes the gzipped JSON file path into v.
func readGzipJSON(path string, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return err
	}
	return json.NewDecoder(z).Decode(v)
}
