//go:build !cuda

package main

import (
	"strings"
	"testing"
)

// --device cuda on a binary without CUDA stops with the reason before any
// work, for every command that computes; an unknown device is refused too.
func TestDeviceFlag(t *testing.T) {
	for _, cmd := range [][]string{
		{"eval", "--model", "m", "--data", "d.parquet"},
		{"compress", "--model", "m", "--calib", "c.parquet", "--out", "o"},
		{"quantize", "--model", "m", "--calib", "c.parquet", "--out", "o", "--method", "rtn"},
		{"generate", "--model", "m", "--prompt-ids", "1"},
	} {
		_, _, err := rankzip(append(cmd, "--device", "cuda")...)
		if err == nil || !strings.Contains(err.Error(), "built without CUDA") {
			t.Errorf("%s --device cuda: error %v, want one saying the binary lacks CUDA", cmd[0], err)
		}
		_, _, err = rankzip(append(cmd, "--device", "tpu")...)
		if err == nil || !strings.Contains(err.Error(), `device "tpu"`) {
			t.Errorf("%s --device tpu: error %v", cmd[0], err)
		}
	}
}
