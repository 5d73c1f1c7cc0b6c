package synth

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
)

// A written checkpoint loads as the shape it names, runs, and is the same
// byte for byte from the same seed.
func TestWriteLoadsAndRepeats(t *testing.T) {
	k := kernels.Default()
	dirs := []string{filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")}
	for _, d := range dirs {
		if err := Write(d, Options{Shape: Shapes["tiny"], Seed: 7}, k); err != nil {
			t.Fatal(err)
		}
	}
	m, err := model.Load(dirs[0], k)
	if err != nil {
		t.Fatal(err)
	}
	if c := m.Config; c.HiddenSize != 64 || c.NumLayers != 2 || c.NumKVHeads != 2 || c.VocabSize != 256 {
		t.Errorf("config %+v", c)
	}
	logits, err := m.Forward([][]int32{{1, 5, 9, 200, 3}})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range logits {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatal("non-finite logits")
		}
	}
	files, _ := filepath.Glob(filepath.Join(dirs[0], "*"))
	if len(files) != 5 { // config, index, three shards
		t.Errorf("files %v", files)
	}
	for _, f := range files {
		a, _ := os.ReadFile(f)
		b, err := os.ReadFile(filepath.Join(dirs[1], filepath.Base(f)))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s differs between two writes from one seed", filepath.Base(f))
		}
	}
	if err := Write(dirs[0], Options{Shape: Shapes["tiny"]}, k); err == nil {
		t.Errorf("writing into a non-empty directory gave no error")
	}
}

// The linears have a decaying head and a noise floor: the top singular
// value stands far above those past the spiked rank, which spread as random
// noise does, and the entries' RMS is initStd.
func TestSpikedSpectrum(t *testing.T) {
	k := kernels.Default()
	const out, in = 512, 256
	w := spiked(k, 3, "w", out, in)
	var ms float64
	d := make([]float64, len(w))
	for i, v := range w {
		d[i] = float64(v)
		ms += float64(v) * float64(v)
	}
	if rms := math.Sqrt(ms / float64(len(w))); math.Abs(rms-initStd)/initStd > 0.05 {
		t.Errorf("RMS %.4g, want %.4g within 5%%", rms, initStd)
	}
	_, s, _, err := k.SVD(mat.NewDense(out, in, d))
	if err != nil {
		t.Fatal(err)
	}
	r := Rank(out, in)
	head, tailHi, tailLo := s[0], s[r+4], s[len(s)-8]
	t.Logf("σ₁ %.3g, σ_r %.3g, σ_(r+4) %.3g, σ_(n-8) %.3g", head, s[r-1], tailHi, tailLo)
	if head < 4*tailHi {
		t.Errorf("σ₁ = %.3g is not well above the noise floor %.3g", head, tailHi)
	}
	// Past the spiked rank lies the noise's Marchenko-Pastur bulk, whose
	// edges stand (1+√c)/(1−√c) apart for c = in/out.
	c := math.Sqrt(float64(in) / float64(out))
	if mp := (1 + c) / (1 - c); tailHi > 1.25*mp*tailLo {
		t.Errorf("noise floor %.3g .. %.3g wider than Marchenko-Pastur's ratio %.2f", tailHi, tailLo, mp)
	}
}

func TestCalibration(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.parquet")
	if err := Calibration(path, 256, 4, 32, 1); err != nil {
		t.Fatal(err)
	}
	ds, err := calib.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	seqs, err := ds.Read(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(seqs) != 4 || len(seqs[0]) != 32 || seqs[0][0] != 1 {
		t.Fatalf("sequences %d×%d, first id %d", len(seqs), len(seqs[0]), seqs[0][0])
	}
	for _, s := range seqs {
		for _, id := range s[1:] {
			if id < 3 || id >= 256 {
				t.Fatalf("id %d outside [3, 256)", id)
			}
		}
	}
	if err := Calibration(path, 2, 4, 32, 1); err == nil {
		t.Errorf("vocab 2 gave no error")
	}
}
