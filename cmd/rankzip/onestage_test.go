package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/recipe"
)

// oneStageCase is a one-stage command and the recipe it stands for.
type oneStageCase struct {
	cmd   string
	flags []string // besides --model, --calib, --sequences and --out
	stage string   // the recipe's stage, YAML flow mapping
	exp   string   // the recipe's export, YAML flow mapping
}

// Small, fast settings on stories260K for each one-stage command.
var oneStageCases = []oneStageCase{
	{"compress", []string{"--keep-params", "0.9"}, "{method: svd, keep_params: 0.9}", "{}"},
	{"quantize", []string{"--method", "rtn", "--bits", "8", "--group-size", "32", "--targets", "self_attn.*"}, "{method: rtn, bits: 8, group_size: 32, targets: [self_attn.*]}", "{format: gptq}"},
	{"mla", []string{"--qk-rope-head-dim", "16", "--kv-lora-rank", "24"}, "{method: mla, qk_rope_head_dim: 16, kv_lora_rank: 24}", "{format: deepseek-mla}"},
}

// writeRecipe writes the recipe of c to dir and returns its path.
func (c oneStageCase) writeRecipe(t *testing.T, dir, model, cal, out string) string {
	t.Helper()
	y := "model: " + model + "\ncalibration: {data: " + cal + ", sequences: 16}\noutput: " + out +
		"\nstages:\n  - " + c.stage + "\nexport: " + c.exp + "\n"
	p := filepath.Join(dir, c.cmd+".yaml")
	if err := os.WriteFile(p, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Each one-stage command builds the same canonical job as the recipe that
// gives only the keys its flags set: every default is the recipe's (a flag
// default that disagreed would change the job and its id).
func TestOneStageDefaultsAreTheRecipes(t *testing.T) {
	m := needFixture(t, "stories260K")
	cal := needFixture(t, "samples/calib.parquet")
	build := map[string]func([]string, io.Writer) (*oneStage, *recipe.Job, error){
		"compress": compressFlags, "quantize": quantizeFlags, "mla": mlaFlags,
	}
	dir := t.TempDir()
	for _, c := range oneStageCases {
		out := filepath.Join(dir, c.cmd+"-out")
		args := append([]string{"--model", m, "--calib", cal, "--sequences", "16", "--out", out}, c.flags...)
		_, fromFlags, err := build[c.cmd](args, io.Discard)
		if err != nil {
			t.Fatalf("%s: %v", c.cmd, err)
		}
		absM, _ := filepath.Abs(m)
		absC, _ := filepath.Abs(cal)
		fromRecipe, err := recipe.Load(c.writeRecipe(t, dir, absM, absC, out))
		if err != nil {
			t.Fatalf("%s recipe: %v", c.cmd, err)
		}
		a, _ := json.Marshal(fromFlags.Recipe)
		b, _ := json.Marshal(fromRecipe.Recipe)
		if !bytes.Equal(a, b) || fromFlags.ID != fromRecipe.ID {
			t.Errorf("%s: the job of the flags differs from the recipe's\nflags:  %s %s\nrecipe: %s %s", c.cmd, fromFlags.ID, a, fromRecipe.ID, b)
		}
	}
}

// Each one-stage command writes the same checkpoint, byte for byte, as
// `rankzip run` of its one-stage recipe.
func TestOneStageMatchesRun(t *testing.T) {
	m, _ := filepath.Abs(needFixture(t, "stories260K"))
	cal, _ := filepath.Abs(needFixture(t, "samples/calib.parquet"))
	dir := t.TempDir()
	for _, c := range oneStageCases {
		direct := filepath.Join(dir, c.cmd+"-direct")
		args := append([]string{c.cmd, "--model", m, "--calib", cal, "--sequences", "16", "--out", direct}, c.flags...)
		if _, stderr, err := rankzip(args...); err != nil {
			t.Fatalf("%s: %v\n%s", c.cmd, err, stderr)
		}
		viaRun := filepath.Join(dir, c.cmd+"-run")
		p := c.writeRecipe(t, dir, m, cal, viaRun)
		if _, stderr, err := rankzip("run", p, "--state", filepath.Join(dir, c.cmd+"-state")); err != nil {
			t.Fatalf("run %s: %v\n%s", p, err, stderr)
		}
		files, _ := filepath.Glob(filepath.Join(direct, "*.safetensors"))
		if len(files) == 0 {
			t.Fatalf("%s wrote no safetensors file in %s", c.cmd, direct)
		}
		for _, f := range append(files, filepath.Join(direct, "config.json")) {
			a, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(viaRun, filepath.Base(f)))
			if err != nil {
				t.Fatalf("%s: %v", c.cmd, err)
			}
			if !bytes.Equal(a, b) {
				t.Errorf("%s: %s differs from rankzip run's (%d and %d bytes)", c.cmd, filepath.Base(f), len(a), len(b))
			}
		}
	}
}

// Flags go before or after the positional arguments of every command; "--"
// ends them.
func TestFlagsAfterPositionalArguments(t *testing.T) {
	m := needFixture(t, "stories260K")
	for _, args := range [][]string{{"inspect", m, "--json"}, {"inspect", "--json", m}} {
		stdout, stderr, err := rankzip(args...)
		if err != nil {
			t.Fatalf("%q: %v\n%s", args, err, stderr)
		}
		var got inspection
		if err := json.Unmarshal([]byte(stdout), &got); err != nil || got.Parameters != 260032 || got.ModelType != "llama" {
			t.Errorf("%q: %v %+v\n%s", args, err, got, stdout)
		}
	}
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	v := fs.Bool("v", false, "")
	pos, err := parse(fs, []string{"a", "-v", "b", "--", "-c"}, 3)
	if err != nil || !*v || strings.Join(pos, " ") != "a b -c" {
		t.Errorf("parse: %q, -v %v, %v; want [a b -c], true", pos, *v, err)
	}
	if _, err := parse(fs, []string{"a", "b"}, 1); err == nil {
		t.Error("parse accepted two positional arguments where one is wanted")
	}
}

// -h of every command lists its real flags.
func TestHelpListsFlags(t *testing.T) {
	for cmd, want := range map[string][]string{
		"compress": {"-keep-params", "-rank-search", "-variant", "-dtype", "-seq-len"},
		"quantize": {"-bits", "-group-size", "-sym", "-eora-rank"},
		"mla":      {"-kv-lora-rank", "-qk-rope-head-dim", "-bkv"},
		"inspect":  {"-json"},
		"calib":    {"-from", "-tokenizer"},
	} {
		_, stderr, err := rankzip(cmd, "-h")
		if err != nil && !strings.Contains(err.Error(), "help") {
			t.Errorf("%s -h: %v", cmd, err)
		}
		for _, f := range want {
			if !strings.Contains(stderr, "  "+f) {
				t.Errorf("%s -h lacks %s:\n%s", cmd, f, stderr)
			}
		}
	}
}
