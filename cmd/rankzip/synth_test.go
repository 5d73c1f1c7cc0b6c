package main

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestSynthCommand(t *testing.T) {
	dir := t.TempDir()
	out, _, err := rankzip("synth", "--shape", "tiny", "--layers", "1", "--out", filepath.Join(dir, "m"),
		"--calib", filepath.Join(dir, "c.parquet"), "--sequences", "3", "--seq-len", "16")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "tiny shape, 1 blocks") || !strings.Contains(out, "3 sequences of 16 tokens") {
		t.Errorf("output %q", out)
	}
	info, _, err := rankzip("inspect", filepath.Join(dir, "m"))
	if err != nil || !strings.Contains(info, "BF16 (100.0%)") || !strings.Contains(info, "layers      1 (hidden 64") {
		t.Errorf("inspect: %v\n%s", err, info)
	}
	for _, args := range [][]string{
		{"synth", "--shape", "gpt5", "--out", filepath.Join(dir, "x")},
		{"synth", "--shape", "tiny", "--out", filepath.Join(dir, "m")},
		{"synth", "--shape", "tiny", "--dtype", "int8", "--out", filepath.Join(dir, "y")},
	} {
		if _, _, err := rankzip(args...); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
