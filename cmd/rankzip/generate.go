package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/tokenizer"
)

func runGenerate(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("generate", "generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [--max-new N]", stderr)
	modelDir := fs.String("model", "", "checkpoint directory")
	device := addDeviceFlag(fs)
	promptIDs := fs.String("prompt-ids", "", "comma-separated prompt token ids; prints the generated ids")
	promptText := fs.String("prompt", "", "prompt text, tokenized with the model's tokenizer.json (with its BOS); prints the prompt and its continuation as text")
	maxNew := fs.Int("max-new", 32, "tokens to generate")
	stop := fs.Int("stop", -1, "stop after this token id (default: the config's eos_token_id, else the tokenizer's EOS with --prompt)")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	text := given["prompt"]
	if *modelDir == "" || text == given["prompt-ids"] {
		fmt.Fprintln(stderr, "rankzip generate: --model and one of --prompt or --prompt-ids are required")
		fs.Usage()
		return errUsage
	}
	var (
		ids []int32
		tok *tokenizer.Tokenizer
	)
	if text {
		if p := filepath.Join(*modelDir, "tokenizer.json"); !isFile(p) {
			return fmt.Errorf("--prompt needs the model's tokenizer, but %s does not exist (give token ids with --prompt-ids)", p)
		}
		var err error
		if tok, err = tokenizer.Load(*modelDir); err != nil {
			return err
		}
		ids = tok.Encode(*promptText, true)
		if len(ids) == 0 {
			return fmt.Errorf("--prompt %q gives no tokens", *promptText)
		}
	}
	for i, f := range strings.Split(*promptIDs, ",") {
		if text {
			break
		}
		v, err := strconv.ParseInt(strings.TrimSpace(f), 10, 32)
		if err != nil {
			return fmt.Errorf("--prompt-ids: item %d %q is not a token id", i, f)
		}
		ids = append(ids, int32(v))
	}
	if *maxNew < 1 {
		return fmt.Errorf("--max-new must be at least 1, got %d", *maxNew)
	}
	k, err := kernels.Select(*device)
	if err != nil {
		return err
	}
	m, err := model.Load(*modelDir, k)
	if err != nil {
		return err
	}
	if err := m.CheckTokens([][]int32{ids}); err != nil {
		if text {
			return fmt.Errorf("--prompt: the tokenizer's ids do not fit the model: %w", err)
		}
		return fmt.Errorf("--prompt-ids: %w", err)
	}
	stopID := int32(*stop)
	if *stop < 0 {
		stopID = -1
		if eos, ok := m.Config.Raw["eos_token_id"]; ok {
			if v, err := strconv.Atoi(string(eos)); err == nil {
				stopID = int32(v)
			}
		}
		if stopID < 0 && text {
			if eos, ok := tok.EOS(); ok {
				stopID = eos
			}
		}
	}
	out, err := m.Generate(ids, *maxNew, stopID)
	if err != nil {
		return err
	}
	if text {
		// The whole sequence decoded at once: a continuation decoded
		// alone would lose the space a SentencePiece decoder strips
		// from the start of a text.
		fmt.Fprintln(stdout, tok.Decode(append(ids, out...), true))
		return nil
	}
	s := make([]string, len(out))
	for i, v := range out {
		s[i] = strconv.Itoa(int(v))
	}
	fmt.Fprintln(stdout, strings.Join(s, ","))
	return nil
}

// isFile reports whether p is a regular file (or a link to one).
func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
