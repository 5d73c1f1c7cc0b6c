package main

import (
	"fmt"
	"io"
	"os"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/model"
)

func runCalib(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || (args[0] == "import" && (hasFlag(args[1:], "h") || hasFlag(args[1:], "help")))) {
		// Both forms of calib import, each with its real flags.
		runCalibIDs([]string{"-h"}, stdout, stderr)
		fmt.Fprintln(stderr)
		return runCalibText([]string{"-h"}, stdout, stderr)
	}
	if len(args) == 0 || args[0] != "import" {
		fmt.Fprintln(stderr, `usage: rankzip calib import --from X.jsonl --out X.parquet`)
		return errUsage
	}
	if hasFlag(args[1:], "tokenizer") {
		return runCalibText(args[1:], stdout, stderr)
	}
	return runCalibIDs(args[1:], stdout, stderr)
}

// runCalibIDs: "calib import --from X.jsonl --out X.parquet".
func runCalibIDs(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("calib import", "calib import --from X.jsonl --out X.parquet", stderr)
	from := fs.String("from", "", `JSONL file, one {"input_ids": [...]} object per line`)
	out := fs.String("out", "", "Parquet file to write (input_ids LIST<INT32>)")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	if *from == "" || *out == "" {
		fmt.Fprintln(stderr, "rankzip calib import: --from and --out are required")
		fs.Usage()
		return errUsage
	}
	f, err := os.Open(*from)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := calib.ImportJSONL(f, *from, *out); err != nil {
		return err
	}
	ds, err := calib.Open(*out)
	if err != nil {
		return err
	}
	defer ds.Close()
	fmt.Fprintf(stdout, "wrote %s: %d sequences\n", *out, ds.NumSequences())
	return nil
}

// calibSequences reads the first n sequences (all when n ≤ 0) of a
// calibration file and checks them against the model.
func calibSequences(m *model.Model, path string, n int) ([][]int32, error) {
	ds, err := calib.Open(path)
	if err != nil {
		return nil, err
	}
	seqs, err := ds.Read(n)
	ds.Close()
	if err != nil {
		return nil, err
	}
	if err := m.CheckTokens(seqs); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return seqs, nil
}
