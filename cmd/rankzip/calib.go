package main

import (
	"fmt"
	"io"
	"os"

	"github.com/rankzip/rankzip/calib"
)

func runCalib(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "import" {
		fmt.Fprintln(stderr, `usage: rankzip calib import --from X.jsonl --out X.parquet`)
		return errUsage
	}
	fs := newFlags("calib import", "calib import --from X.jsonl --out X.parquet", stderr)
	from := fs.String("from", "", `JSONL file, one {"input_ids": [...]} object per line`)
	out := fs.String("out", "", "Parquet file to write (input_ids LIST<INT32>)")
	if err := parse(fs, args[1:], 0); err != nil {
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
