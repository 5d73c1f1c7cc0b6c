package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/rankzip/rankzip/model"
)

func runGenerate(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("generate", "generate --model DIR --prompt-ids 1,2,3 [--max-new N]", stderr)
	modelDir := fs.String("model", "", "checkpoint directory")
	device := addDeviceFlag(fs)
	prompt := fs.String("prompt-ids", "", "comma-separated prompt token ids")
	maxNew := fs.Int("max-new", 32, "tokens to generate")
	stop := fs.Int("stop", -1, "stop after this token id (default: the config's eos_token_id if any)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *modelDir == "" || *prompt == "" {
		fmt.Fprintln(stderr, "rankzip generate: --model and --prompt-ids are required")
		fs.Usage()
		return errUsage
	}
	var ids []int32
	for i, f := range strings.Split(*prompt, ",") {
		v, err := strconv.ParseInt(strings.TrimSpace(f), 10, 32)
		if err != nil {
			return fmt.Errorf("--prompt-ids: item %d %q is not a token id", i, f)
		}
		ids = append(ids, int32(v))
	}
	if *maxNew < 1 {
		return fmt.Errorf("--max-new must be at least 1, got %d", *maxNew)
	}
	k, err := backend(*device)
	if err != nil {
		return err
	}
	m, err := model.Load(*modelDir, k)
	if err != nil {
		return err
	}
	if err := m.CheckTokens([][]int32{ids}); err != nil {
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
	}
	out, err := m.Generate(ids, *maxNew, stopID)
	if err != nil {
		return err
	}
	s := make([]string, len(out))
	for i, v := range out {
		s[i] = strconv.Itoa(int(v))
	}
	fmt.Fprintln(stdout, strings.Join(s, ","))
	return nil
}
