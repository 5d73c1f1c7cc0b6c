package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/recipe"
)

// compress, quantize and mla are one-stage recipes run in this process: their
// flags spell the recipe's keys (--keep-params is keep_params), build a
// recipe.Recipe, and recipe.LoadBytes validates it and fills in its defaults
// exactly as for `rankzip run`. The stage then runs through the same option
// mappings (activities.CompressOptions, ...) and per-block code.

// oneStage holds the flags every one-stage command shares: the recipe's
// model, calibration and export keys, and how to run here.
type oneStage struct {
	name      string
	model     string
	device    *string
	data      string
	sequences int
	seqLen    int
	batch     int
	mode      string
	out       string
	dtype     string
	spill     string

	k kernels.Backend // of device, once job checked it
}

// addOneStageFlags defines the shared flags; zero values leave the recipe's
// defaults.
func addOneStageFlags(fs *flag.FlagSet, outDoc string) *oneStage {
	o := &oneStage{name: fs.Name()}
	fs.StringVar(&o.model, "model", "", "checkpoint directory (recipe: model)")
	o.device = addDeviceFlag(fs)
	fs.StringVar(&o.data, "calib", "", "calibration set, Parquet with an input_ids column (recipe: calibration.data)")
	fs.IntVar(&o.sequences, "sequences", 0, fmt.Sprintf("use the first N calibration sequences (recipe: calibration.sequences; default %d)", recipe.DefaultCalibSequences))
	fs.IntVar(&o.seqLen, "seq-len", 0, fmt.Sprintf("cut longer calibration rows (recipe: calibration.seq_len; default %d, at most max_position_embeddings)", recipe.DefaultSeqLen))
	fs.IntVar(&o.batch, "batch", 0, fmt.Sprintf("sequences per forward batch (recipe: calibration.batch; default %d)", recipe.DefaultBatch))
	fs.StringVar(&o.mode, "mode", "", "calibration statistics: sequential | original (recipe: calibration.mode; default sequential)")
	fs.StringVar(&o.out, "out", "", outDoc+" (recipe: output)")
	fs.StringVar(&o.dtype, "dtype", "", "stored dtype: "+strings.Join(recipe.DTypes, " | ")+" (recipe: export.dtype; default the model's torch_dtype, else float32)")
	fs.StringVar(&o.spill, "spill-dir", "", "keep calibration hidden states in memory-mapped files in DIR instead of memory")
	return o
}

// required reports the missing required flags on stderr.
func (o *oneStage) required(fs *flag.FlagSet, stderr io.Writer, more ...string) error {
	if o.model != "" && o.data != "" && o.out != "" && len(more) == 0 {
		return nil
	}
	need := append([]string{"--model", "--calib", "--out"}, more...)
	fmt.Fprintf(stderr, "rankzip %s: %s are required\n", o.name, strings.Join(need, ", "))
	fs.Usage()
	return errUsage
}

// recipe returns the one-stage recipe of the flags, before validation.
func (o *oneStage) recipe(st recipe.Stage, format string, stderr io.Writer) (recipe.Recipe, error) {
	r := recipe.Recipe{
		Model:       o.model,
		Calibration: recipe.Calibration{Data: o.data, Sequences: o.sequences, SeqLen: o.seqLen, Mode: o.mode, Batch: o.batch},
		Output:      o.out,
		Stages:      []recipe.Stage{st},
		Export:      recipe.Export{Format: format, DType: canonicalDType(o.dtype, stderr)},
	}
	for _, p := range []*string{&r.Model, &r.Calibration.Data, &r.Output} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return r, err
		}
		*p = abs
	}
	return r, nil
}

// job validates the recipe as `rankzip run` does and returns its canonical
// job, every default filled in.
func (o *oneStage) job(r recipe.Recipe) (*recipe.Job, error) {
	// A device this binary cannot use stops the command before any work.
	k, err := kernels.Select(*o.device)
	if err != nil {
		return nil, err
	}
	o.k = k
	data, err := yaml.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("rankzip %s: the recipe of the flags: %w", o.name, err)
	}
	wd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	job, err := recipe.LoadBytes(data, filepath.Join(wd, "rankzip-"+o.name+" flags"))
	if err != nil {
		return nil, fmt.Errorf("%w\n(each flag sets the recipe key it names, e.g. --keep-params sets keep_params; see rankzip %s -h)", err, o.name)
	}
	return job, nil
}

// canonicalDType maps the spelling of --dtype used before (F32, BF16, F16)
// to the recipe's, with a note; anything else goes to validation unchanged.
func canonicalDType(s string, stderr io.Writer) string {
	old := map[string]string{"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
	if c, ok := old[strings.ToUpper(s)]; ok {
		fmt.Fprintf(stderr, "rankzip: --dtype %s is deprecated; write --dtype %s\n", s, c)
		return c
	}
	return s
}

// loaded is a job's model and calibration sequences, as the activities read
// them: the first calibration.sequences rows cut to seq_len.
type loaded struct {
	k    kernels.Backend
	m    *model.Model
	seqs [][]int32
}

func (o *oneStage) load(job *recipe.Job) (loaded, error) {
	var l loaded
	k := o.k
	m, err := model.Load(job.Recipe.Model, k)
	if err != nil {
		return l, err
	}
	c := job.Recipe.Calibration
	ds, err := calib.Open(c.Data)
	if err != nil {
		return l, err
	}
	seqs, err := ds.Read(c.Sequences)
	ds.Close()
	if err != nil {
		return l, err
	}
	seqs = recipe.Truncate(seqs, c.SeqLen)
	if err := m.CheckTokens(seqs); err != nil {
		return l, fmt.Errorf("%s: %w", c.Data, err)
	}
	return loaded{k: k, m: m, seqs: seqs}, nil
}

// splitTargets splits a --targets value into the recipe's list.
func splitTargets(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// optBool returns a pointer to the value of a bool flag when it was given,
// nil (the recipe's default) when not.
func optBool(fs *flag.FlagSet, name string, v bool) *bool {
	if !isSet(fs, name) {
		return nil
	}
	return &v
}

// isSet reports whether the command line gave flag name.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
