package model

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// fixtures is the repository's testdata (see its README) seen from this
// package.
const fixtures = "../testdata"

// needFixture returns the path of a file of testdata, failing the test when
// it is missing: the repository holds them all.
func needFixture(t testing.TB, rel string) string {
	t.Helper()
	p := filepath.Join(fixtures, rel)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test data %s missing from the repository: %v", p, err)
	}
	return p
}

// readJSONL reads the first n {"input_ids": [...]} rows of a JSONL file.
func readJSONL(t testing.TB, path string, n int) [][]int32 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<24)
	var seqs [][]int32
	for sc.Scan() && len(seqs) < n {
		var row struct {
			InputIDs []int32 `json:"input_ids"`
		}
		if err := json.Unmarshal(sc.Bytes(), &row); err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, row.InputIDs)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return seqs
}

// readF32 reads a little-endian float32 file.
func readF32(t testing.TB, path string) []float32 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

// relErr is ‖a − b‖_F / ‖b‖_F in float64.
func relErr(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num / den)
}
