package main

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/rankzip/rankzip/internal/perm"
	"github.com/rankzip/rankzip/model/gptq"
)

// checkModes fails the test for every file under dir whose mode is not
// file, and every directory (dir too) whose mode is not directory.
func checkModes(t *testing.T, dir string, file, directory os.FileMode) {
	t.Helper()
	n := 0
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Error(err)
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			t.Error(err)
			return nil
		}
		want := file
		if d.IsDir() {
			want = directory
		} else {
			n++
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
		return nil
	})
	if n == 0 {
		t.Errorf("no files under %s", dir)
	}
}

// Everything rankzip writes for users gets the modes os.Create and os.Mkdir
// give under the umask (027 here: 0640 and 0750), not os.CreateTemp's 0600;
// an adapter names its base by a relative path.
func TestFileModes(t *testing.T) {
	modelDir := needFixture(t, "stories260K")
	calibPath := needFixture(t, "samples/calib.parquet")
	evalPath := needFixture(t, "samples/eval.parquet")
	jsonl := needFixture(t, "samples/eval.jsonl")
	old := syscall.Umask(0o027)
	defer syscall.Umask(old)
	if perm.File() != 0o640 || perm.Dir() != 0o750 {
		t.Fatalf("under umask 027: perm.File %v, perm.Dir %v", perm.File(), perm.Dir())
	}
	out := filepath.Join(t.TempDir(), "out")
	if err := os.Mkdir(out, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"compress", "--model", modelDir, "--calib", calibPath, "--sequences", "8", "--keep-params", "0.9", "--rank-search", "uniform", "--export", "dense", "--out", filepath.Join(out, "dense")},
		{"compress", "--model", modelDir, "--calib", calibPath, "--sequences", "8", "--keep-params", "0.9", "--rank-search", "uniform", "--dtype", "BF16", "--out", filepath.Join(out, "native")},
		{"quantize", "--model", modelDir, "--calib", calibPath, "--sequences", "8", "--method", "rtn", "--bits", "8", "--group-size", "32", "--targets", "self_attn.*", "--eora-rank", "2", "--out", filepath.Join(out, "gptq")},
		{"eval", "--model", modelDir, "--data", evalPath, "--sequences", "1", "--dump-logits", filepath.Join(out, "logits.f32")},
		{"calib", "import", "--from", jsonl, "--out", filepath.Join(out, "eval.parquet")},
	} {
		t0 := time.Now()
		if _, stderr, err := rankzip(args...); err != nil {
			t.Fatalf("rankzip %q: %v\n%s", args, err, stderr)
		}
		t.Logf("rankzip %s: %v", args[0], time.Since(t0).Round(time.Millisecond))
	}
	checkModes(t, out, 0o640, 0o750)

	b, err := os.ReadFile(filepath.Join(out, "gptq", "eora", "adapter_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg gptq.AdapterConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.BaseModel != ".." {
		t.Errorf("adapter base_model_name_or_path %q, want \"..\" (the checkpoint it lies in)", cfg.BaseModel)
	}
}
