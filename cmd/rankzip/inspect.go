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
	fs := newFlags("inspect", "inspect DIR", stderr)
	if err := parse(fs, args, 1); err != nil {
		return err
	}
	return inspect(fs.Arg(0), stdout)
}

func inspect(dir string, w io.Writer) error {
	c, err := model.ReadConfig(dir)
	if err != nil {
		return err
	}
	ck, err := safetensors.OpenDir(dir)
	if err != nil {
		return err
	}
	defer ck.Close()
	var params, bytes int64
	dtypes := map[safetensors.DType]int64{}
	for _, name := range ck.Names() {
		info, _ := ck.Info(name)
		n := int64(info.NumElements())
		params += n
		dtypes[info.DType] += n
	}
	var dts []string
	for dt, n := range dtypes {
		dts = append(dts, fmt.Sprintf("%s (%.1f%%)", dt, 100*float64(n)/float64(max(params, 1))))
	}
	slices.Sort(dts)
	for _, f := range ck.Files() {
		st, err := os.Stat(f)
		if err != nil {
			return err
		}
		bytes += st.Size()
	}
	attn := "MHA"
	switch {
	case c.MLA != nil:
		attn = fmt.Sprintf("MLA (latent %d, rope %d, nope %d, v %d)", c.MLA.LoraRank, c.MLA.RopeDim, c.MLA.NopeDim, c.MLA.VDim)
	case c.NumKVHeads < c.NumHeads:
		attn = "GQA"
	}
	tied := "separate lm_head"
	if c.TieWordEmbeddings {
		tied = "tied embeddings"
	}
	rope := "none"
	if c.RopeScaling != nil {
		rope = fmt.Sprintf("%s x%g", c.RopeScaling.Type, c.RopeScaling.Factor)
	}
	fmt.Fprintf(w, "checkpoint  %s\n", dir)
	fmt.Fprintf(w, "model type  %s\n", c.ModelType)
	fmt.Fprintf(w, "layers      %d (hidden %d, intermediate %d)\n", c.NumLayers, c.HiddenSize, c.IntermediateSize)
	fmt.Fprintf(w, "attention   %s: %d heads, %d KV heads, head_dim %d\n", attn, c.NumHeads, c.NumKVHeads, c.HeadDim)
	fmt.Fprintf(w, "vocab       %d, %s, max positions %d\n", c.VocabSize, tied, c.MaxPositions)
	fmt.Fprintf(w, "rope        theta %g, scaling %s\n", c.RopeTheta, rope)
	fmt.Fprintf(w, "parameters  %s\n", commas(params))
	fmt.Fprintf(w, "dtype       %s\n", strings.Join(dts, ", "))
	fmt.Fprintf(w, "size        %s in %d file(s)\n", humanBytes(bytes), len(ck.Files()))
	fmt.Fprintf(w, "kv cache    %d bytes per token at 16 bits\n", c.KVBytesPerToken())
	return nil
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
