package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/tokenizer"
)

// runTokenize: JSONL {"text": ...} on stdin to {"input_ids": [...]} on
// stdout, or the other way with --decode.
func runTokenize(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlags("tokenize", `tokenize --tokenizer DIR [--no-special] [--decode] < in.jsonl > out.jsonl`, stderr)
	dir := fs.String("tokenizer", "", "directory with tokenizer.json (and, if present, tokenizer_config.json), e.g. the model's")
	noSpecial := fs.Bool("no-special", false, "encode without the special tokens the post-processor adds (BOS/EOS); with --decode, drop special tokens from the text")
	decode := fs.Bool("decode", false, `read {"input_ids": [...]} lines and write {"text": ...} lines`)
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	if *dir == "" {
		fmt.Fprintln(stderr, "rankzip tokenize: --tokenizer is required")
		fs.Usage()
		return errUsage
	}
	tok, err := tokenizer.Load(*dir)
	if err != nil {
		return err
	}
	br := bufio.NewReaderSize(stdin, 1<<16)
	bw := bufio.NewWriterSize(stdout, 1<<16)
	defer bw.Flush()
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	var ids []int32
	for line := 1; ; line++ {
		b, rerr := br.ReadBytes('\n')
		if rerr != nil && rerr != io.EOF {
			return rerr
		}
		if len(strings.TrimSpace(string(b))) > 0 {
			if *decode {
				var in struct {
					InputIDs *[]int32 `json:"input_ids"`
				}
				if err := json.Unmarshal(b, &in); err != nil || in.InputIDs == nil {
					return fmt.Errorf(`stdin: line %d: want {"input_ids": [...]} (%v)`, line, err)
				}
				if err := enc.Encode(struct {
					Text string `json:"text"`
				}{tok.Decode(*in.InputIDs, *noSpecial)}); err != nil {
					return err
				}
			} else {
				var in struct {
					Text *string `json:"text"`
				}
				if err := json.Unmarshal(b, &in); err != nil || in.Text == nil {
					return fmt.Errorf(`stdin: line %d: want {"text": "..."} (%v)`, line, err)
				}
				ids = tok.AppendEncode(ids[:0], *in.Text, !*noSpecial)
				if ids == nil {
					ids = []int32{}
				}
				if err := enc.Encode(struct {
					InputIDs []int32 `json:"input_ids"`
				}{ids}); err != nil {
					return err
				}
			}
		}
		if rerr == io.EOF {
			return bw.Flush()
		}
	}
}

// hasFlag reports whether args set flag name (as -name, --name, -name=x or --name=x).
func hasFlag(args []string, name string) bool {
	for _, a := range args {
		a = strings.TrimLeft(a, "-")
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}

// runCalibText: "calib import --from X.parquet|X.jsonl|X.txt --tokenizer DIR ...".
func runCalibText(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("calib import", "calib import --from X.parquet|X.jsonl|X.txt --tokenizer DIR [--text-column text] [--seq-len 2048] [--sequences N] [--seed S] [--no-pack] --out calib.parquet", stderr)
	from := fs.String("from", "", "text dataset: Parquet with a string column, JSONL objects with a text key, or a text file (documents separated by blank lines)")
	column := fs.String("text-column", "text", "the Parquet column or JSONL key holding the text")
	dir := fs.String("tokenizer", "", "directory with tokenizer.json (and tokenizer_config.json), e.g. the model's")
	seqLen := fs.Int("seq-len", 2048, "tokens per sequence")
	sequences := fs.Int("sequences", 0, "sequences to write (0: all)")
	seed := fs.Int64("seed", 0, "with --sequences: draw a uniform sample of all sequences with this seed instead of taking the first ones")
	noPack := fs.Bool("no-pack", false, "one document per sequence (with the tokenizer's special tokens), truncated to --seq-len, instead of packing documents with EOS between them")
	out := fs.String("out", "", "Parquet file to write (input_ids LIST<INT32>)")
	quiet := fs.Bool("quiet", false, "no progress bar")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	if *from == "" || *out == "" || *dir == "" {
		fmt.Fprintln(stderr, "rankzip calib import: --from, --tokenizer and --out are required")
		fs.Usage()
		return errUsage
	}
	sample := false
	fs.Visit(func(f *flag.Flag) { sample = sample || f.Name == "seed" })
	tok, err := tokenizer.Load(*dir)
	if err != nil {
		return err
	}
	prefix, _ := tok.SpecialTokens()
	eos, ok := tok.EOS()
	if !ok && !*noPack {
		return fmt.Errorf("%s: no eos_token in tokenizer_config.json: packing needs one between documents (or use --no-pack)", *dir)
	}
	last := time.Time{}
	progress := func(done float64, docs, tokens, rows int64) {
		if *quiet || time.Since(last) < 200*time.Millisecond && done < 1 {
			return
		}
		last = time.Now()
		const width = 30
		n := int(done * width)
		if n > width {
			n = width
		}
		fmt.Fprintf(stderr, "\r[%s%s] %3.0f%%  %d documents  %d tokens  %d sequences",
			strings.Repeat("=", n), strings.Repeat(" ", width-n), done*100, docs, tokens, rows)
	}
	st, err := calib.ImportText(calib.TextImport{
		From: *from, Column: *column, Out: *out,
		Encoder: tok, EOS: eos, Prefix: prefix, SeqLen: *seqLen, NoPack: *noPack,
		Sequences: *sequences, Sample: sample, Seed: *seed,
		Progress: progress,
	})
	if !*quiet {
		fmt.Fprintln(stderr)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: %d sequences of up to %d tokens from %d documents (%d tokens; %d left over)\n",
		*out, st.Rows, *seqLen, st.Docs, st.Tokens, st.Dropped)
	return nil
}
