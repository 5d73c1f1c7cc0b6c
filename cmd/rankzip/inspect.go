package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
)

func runInspect(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("inspect", "inspect DIR [--json]", stderr)
	asJSON := fs.Bool("json", false, "print one JSON object")
	pos, err := parse(fs, args, 1)
	if err != nil {
		return err
	}
	if !*asJSON {
		return inspect(pos[0], stdout)
	}
	in, err := inspectDir(pos[0])
	if err != nil {
		return err
	}
	return writeJSON(stdout, in)
}

// inspection is what inspect reports of a checkpoint.
type inspection struct {
	Checkpoint      string           `json:"checkpoint"`
	Config          *model.Config    `json:"-"`
	ModelType       string           `json:"model_type"`
	Attention       string           `json:"attention"` // MHA, GQA or MLA (...)
	Parameters      int64            `json:"parameters"`
	DTypes          map[string]int64 `json:"dtypes"` // parameters per stored dtype
	Bytes           int64            `json:"bytes"`
	Files           int              `json:"files"`
	KVBytesPerToken int64            `json:"kv_bytes_per_token"`
}

func inspectDir(dir string) (inspection, error) {
	in := inspection{Checkpoint: dir, DTypes: map[string]int64{}}
	c, err := model.ReadConfig(dir)
	if err != nil {
		return in, err
	}
	ck, err := safetensors.OpenDir(dir)
	if err != nil {
		return in, err
	}
	defer ck.Close()
	for _, name := range ck.Names() {
		info, _ := ck.Info(name)
		n := int64(info.NumElements())
		in.Parameters += n
		in.DTypes[string(info.DType)] += n
	}
	for _, f := range ck.Files() {
		st, err := os.Stat(f)
		if err != nil {
			return in, err
		}
		in.Bytes += st.Size()
	}
	in.Config, in.ModelType, in.Files = c, c.ModelType, len(ck.Files())
	in.KVBytesPerToken = int64(c.KVBytesPerToken())
	in.Attention = "MHA"
	switch {
	case c.MLA != nil:
		in.Attention = fmt.Sprintf("MLA (latent %d, rope %d, nope %d, v %d)", c.MLA.LoraRank, c.MLA.RopeDim, c.MLA.NopeDim, c.MLA.VDim)
	case c.NumKVHeads < c.NumHeads:
		in.Attention = "GQA"
	}
	return in, nil
}

func printInspection(w io.Writer, in inspection) {
	c := in.Config
	var dts []string
	for dt, n := range in.DTypes {
		dts = append(dts, fmt.Sprintf("%s (%.1f%%)", dt, 100*float64(n)/float64(max(in.Parameters, 1))))
	}
	slices.Sort(dts)
	tied := "separate lm_head"
	if c.TieWordEmbeddings {
		tied = "tied embeddings"
	}
	rope := "none"
	if c.RopeScaling != nil {
		rope = fmt.Sprintf("%s x%g", c.RopeScaling.Type, c.RopeScaling.Factor)
	}
	fmt.Fprintf(w, "checkpoint  %s\n", in.Checkpoint)
	fmt.Fprintf(w, "model type  %s\n", c.ModelType)
	fmt.Fprintf(w, "layers      %d (hidden %d, intermediate %d)\n", c.NumLayers, c.HiddenSize, c.IntermediateSize)
	fmt.Fprintf(w, "attention   %s: %d heads, %d KV heads, head_dim %d\n", in.Attention, c.NumHeads, c.NumKVHeads, c.HeadDim)
	fmt.Fprintf(w, "vocab       %d, %s, max positions %d\n", c.VocabSize, tied, c.MaxPositions)
	fmt.Fprintf(w, "rope        theta %g, scaling %s\n", c.RopeTheta, rope)
	fmt.Fprintf(w, "parameters  %s\n", commas(in.Parameters))
	fmt.Fprintf(w, "dtype       %s\n", strings.Join(dts, ", "))
	fmt.Fprintf(w, "size        %s in %d file(s)\n", humanBytes(in.Bytes), in.Files)
	fmt.Fprintf(w, "kv cache    %d bytes per token at 16 bits\n", in.KVBytesPerToken)
}

func commas(n int64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// inspect prints the inspection of the checkpoint in dir.
func inspect(dir string, w io.Writer) error {
	in, err := inspectDir(dir)
	if err != nil {
		return err
	}
	printInspection(w, in)
	return nil
}
