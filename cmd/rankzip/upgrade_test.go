package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// upgradeState is the state directory of a job that the previous version of
// rankzip started and was killed in (testdata/upgrade/README.md says how it
// was made and how to make a newer one).
const upgradeState = "testdata/upgrade/state-f03b32d.tar.gz"

// upgradeJob is where the recorded job's recipe was: its history holds the
// recipe's absolute paths, so the job goes back to the same place.
const upgradeJob = "/tmp/rankzip-upgrade-job"

// A job started by the previous version and killed mid-run resumes under
// this one: the same command attaches to it, the blocks it finished are not
// computed again, and its checkpoint is byte for byte that of a fresh run
// by this version.
func TestUpgradeResume(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and compresses a model")
	}
	recipePath := placeUpgradeJob(t)
	state := filepath.Join(t.TempDir(), "state")
	untarGz(t, upgradeState, state)
	killedAt := doneBlocks(filepath.Join(state, "store"))
	if killedAt == 0 || killedAt >= 5 {
		t.Fatalf("%s holds %d of the 5 blocks; it should be a job killed mid-run", upgradeState, killedAt)
	}
	args := []string{"run", recipePath, "--heartbeat-timeout", "2s", "--state"}

	// A change of the workflow's commands without workflow.GetVersion
	// makes the resumed job's workflow task fail again and again: the
	// run would wait for ever.
	out, err := runFor(cli(append(args, state)...), 2*time.Minute)
	if err != nil {
		t.Fatalf("resume: %v (a change of the workflow's commands not behind workflow.GetVersion stalls a recorded job: see testdata/upgrade/README.md)\n%s", err, out)
	}
	if !strings.Contains(string(out), "resumed") {
		t.Fatalf("the run did not attach to the recorded job (has its id changed?):\n%s", out)
	}
	// The recording holds no log: every line is the resume's.
	computed, found := blockEvents(t, filepath.Join(state, "rankzip.log"))
	var redone, seen []int
	for _, bs := range computed {
		redone = append(redone, bs...)
	}
	for _, bs := range found {
		seen = append(seen, bs...)
	}
	for _, b := range redone {
		if b < killedAt {
			t.Errorf("block %d, done by the previous version, was computed again", b)
		}
	}
	for b := killedAt; b < 5; b++ {
		if !slices.Contains(redone, b) && !slices.Contains(seen, b) {
			t.Errorf("block %d was neither computed nor found by the resumed job", b)
		}
	}
	t.Logf("%d blocks done before the kill; the resumed job computed %v and found %v", killedAt, redone, seen)
	resumed := readFiles(t, filepath.Join(upgradeJob, "out"), "model.safetensors", "config.json")

	if err := os.RemoveAll(filepath.Join(upgradeJob, "out")); err != nil {
		t.Fatal(err)
	}
	out, err = runFor(cli(append(args, filepath.Join(t.TempDir(), "fresh"))...), 2*time.Minute)
	if err != nil {
		t.Fatalf("fresh run: %v\n%s", err, out)
	}
	fresh := readFiles(t, filepath.Join(upgradeJob, "out"), "model.safetensors", "config.json")
	for name, b := range fresh {
		if !bytes.Equal(resumed[name], b) {
			t.Errorf("%s of the resumed job differs from a fresh run's (%d and %d bytes)", name, len(resumed[name]), len(b))
		}
	}
}

// runFor runs cmd and returns its output, killing it after d.
func runFor(cmd *exec.Cmd, d time.Duration) ([]byte, error) {
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return []byte(out.String()), err
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
		return []byte(out.String()), fmt.Errorf("still running after %v (killed)", d)
	}
}

// placeUpgradeJob puts the recorded job's recipe and links to its inputs at
// upgradeJob, holding a lock so that two test processes take turns, and
// returns the recipe's path.
func placeUpgradeJob(t *testing.T) string {
	t.Helper()
	lock, err := os.OpenFile(upgradeJob+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Skipf("the recorded job needs %s: %v", upgradeJob, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(upgradeJob)
		lock.Close()
	})
	if err := os.RemoveAll(upgradeJob); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(upgradeJob, 0o755); err != nil {
		t.Fatal(err)
	}
	recipe, err := os.ReadFile("testdata/upgrade/recipe.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(upgradeJob, "recipe.yaml"), recipe, 0o644); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{"stories260K": "stories260K", "calib.parquet": "samples/calib.parquet"} {
		abs, err := filepath.Abs(needFixture(t, target))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(abs, filepath.Join(upgradeJob, link)); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(upgradeJob, "recipe.yaml")
}

// untarGz unpacks the directories and regular files of a .tar.gz into dir.
func untarGz(t *testing.T, archive, dir string) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", archive, err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("%s: %v", archive, err)
		}
		if !filepath.IsLocal(h.Name) {
			t.Fatalf("%s: entry %q leaves the directory", archive, h.Name)
		}
		p := filepath.Join(dir, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			err = writeEntry(p, tr)
		default:
			err = fmt.Errorf("entry %q is neither a file nor a directory", h.Name)
		}
		if err != nil {
			t.Fatalf("%s: %v", archive, err)
		}
	}
}

func writeEntry(p string, r io.Reader) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readFiles reads the named files of dir.
func readFiles(t *testing.T, dir string, names ...string) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		m[n] = b
	}
	return m
}
