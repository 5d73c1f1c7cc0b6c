package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/rankzip/rankzip/store"
)

// rankzip gc between two jobs that share artifacts: it frees what no job
// references (a dead job's leftovers), never the artifacts of the completed
// job (its rerun finds every block) nor those of the running one (it
// finishes with the bytes of an uninterrupted run).
func TestGC(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and compresses a model")
	}
	state := filepath.Join(t.TempDir(), "state")
	storeDir := filepath.Join(state, "store")
	dirA, dirB := t.TempDir(), t.TempDir()
	recipeA := crashJob(t, dirA)
	recipeB := crashJob(t, dirB)
	text, _ := os.ReadFile(recipeB)
	if err := os.WriteFile(recipeB, bytes.Replace(text, []byte("keep_params: 0.8"), []byte("keep_params: 0.6"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	runA := func() map[string]any {
		out, err := cli("run", recipeA, "--state", state, "--json").Output()
		if err != nil {
			t.Fatalf("run A: %v", err)
		}
		var res map[string]any
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("run A printed %q: %v", out, err)
		}
		return res
	}
	runA()
	blocksA := doneBlocks(storeDir)

	// Leftovers of a job the server no longer knows: 3 artifacts of 100 KiB.
	st, err := store.Open(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	var garbage []string
	for i := range 3 {
		key := store.Key("block", "leftover", i)
		data := make([]byte, 100<<10)
		rand.Read(data)
		ref, err := st.Put(key, data)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := st.Path(ref)
		os.Chtimes(p, old, old)
		os.Chtimes(filepath.Join(storeDir, "keys", key+".json"), old, old)
		garbage = append(garbage, key)
	}

	b := cli("run", recipeB, "--state", state)
	var outB syncBuffer
	b.Stdout, b.Stderr = &outB, &outB
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Process.Kill(); b.Wait() })
	waitBlocks(t, storeDir, blocksA+1, b, &outB)

	freed := regexp.MustCompile(`(would free|freed) (\d+) artifact\(s\), ([^,]+), and (\d+) key record\(s\); kept (\d+) \(([^)]+)\) referenced by (\d+) completed and (\d+) running`)
	// The server lists a new job a little after it starts (its visibility
	// store is written asynchronously): wait until gc sees B running.
	var out string
	var m []string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		out, _, err = rankzip("gc", "--state", state, "--dry-run")
		if err != nil {
			t.Fatal(err)
		}
		if m = freed.FindStringSubmatch(out); m == nil || m[8] == "1" || time.Now().After(deadline) {
			break
		}
	}
	if m == nil || m[1] != "would free" || m[2] != "3" || m[3] != "300.0 KiB" || m[4] != "3" || m[7] != "1" || m[8] != "1" {
		t.Errorf("gc --dry-run with one completed and one running job:\n%s\nwant the 3 leftovers (300.0 KiB) only", out)
	}
	for _, key := range garbage {
		if _, ok, _ := st.Lookup(key); !ok {
			t.Errorf("gc --dry-run removed %s", key)
		}
	}
	t0 := time.Now()
	out, _, err = rankzip("gc", "--state", state)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gc while B runs (%v): %s", time.Since(t0).Round(time.Millisecond), out)
	if m := freed.FindStringSubmatch(out); m == nil || m[1] != "freed" || m[2] != "3" || m[3] != "300.0 KiB" {
		t.Errorf("gc: %s\nwant the 3 leftovers (300.0 KiB) freed", out)
	}
	for _, key := range garbage {
		if _, ok, _ := st.Lookup(key); ok {
			t.Errorf("gc left %s", key)
		}
	}

	done := make(chan error, 1)
	go func() { done <- b.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run B: %v\n%s", err, outB.String())
		}
	case <-time.After(4 * time.Minute):
		t.Fatalf("run B did not finish:\n%s", outB.String())
	}
	got, err := os.ReadFile(filepath.Join(dirB, "out", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, directBytes(t, recipeB)) {
		t.Error("the checkpoint of the job that ran during gc differs from an uninterrupted run's")
	}
	if res := runA(); fmt.Sprint(res["skipped"]) != "5" {
		t.Errorf("rerun of the completed job after gc skipped %v blocks, want all 5 found in the store", res["skipped"])
	}
	// An artifact no listed job references, written just now (as by a job
	// the server does not list yet), outlives gc for gcGrace.
	fresh := store.Key("block", "not-listed-yet", 0)
	if _, err := st.Put(fresh, []byte("not JSON: no report")); err != nil {
		t.Fatal(err)
	}
	out, _, err = rankzip("gc", "--state", state)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gc after both jobs: %s", out)
	if _, ok, _ := st.Lookup(fresh); !ok {
		t.Errorf("gc with no running job removed an artifact written just now (%s)", fresh)
	}
	// Completed jobs keep what a rerun needs.
	if res := runA(); fmt.Sprint(res["skipped"]) != "5" {
		t.Errorf("rerun of the completed job after the last gc skipped %v blocks, want all 5 found in the store", res["skipped"])
	}
}
