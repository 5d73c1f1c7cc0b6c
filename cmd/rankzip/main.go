// Command rankzip compresses language models and measures them: low-rank
// stages (whitened SVD, ASVD, LORD, Palu), GQA to MLA conversion, RTN/GPTQ
// quantization and EoRA, one at a time or as a recipe run as a durable
// Temporal job. "rankzip help" lists the commands:
//
//	demo       an example model and data, compressed as a durable job
//	run        a recipe as a durable job (embedded Temporal server unless --temporal)
//	submit     submit a recipe to a Temporal cluster (cmd/worker runs it)
//	server     the embedded Temporal server alone (and its Web UI with --ui)
//	status     a job's state, progress, running step and error
//	watch      follow a job to its result
//	cancel     cancel a job
//	result     a finished job's result
//	report     a job's report: HTML with plots, or JSON
//	gc         remove store artifacts no finished or running job references
//	compress   one low-rank stage, exported and read back
//	quantize   RTN or GPTQ, GPTQ v1 export, optional EoRA adapter
//	mla        TransMLA conversion, DeepSeek-V3 export
//	eval       perplexity, KL and top-1 agreement on a dataset
//	generate   greedy decoding with a KV cache, from token ids or text (--prompt)
//	inspect    a checkpoint's architecture, parameters, dtype, size, KV bytes
//	calib      calibration data from token ids or text (with the model's tokenizer)
//	synth      a synthetic checkpoint of a real shape, for timing at real size
//	tokenize   text to token ids and back with a tokenizer.json
//
// compress, quantize and mla are one-stage recipes run in this process: their
// flags set the recipe keys they name and the recipe package validates them
// and fills in its defaults, as for run (onestage.go). Every command takes
// its flags before or after its positional arguments; commands that compute
// take --device auto|cpu|cuda.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/rankzip/rankzip/internal/gcpolicy"
)

const usage = `usage: rankzip <command> [flags]

commands:
  demo      generate a small example model and data, then run the pipeline on it
  run       run a recipe (YAML) as a durable job: "run RECIPE [--temporal HOST:PORT] [--state DIR]"; again after a crash to resume
  server    the embedded Temporal server alone, for cmd/worker and submit: "server [--ui] [--ui-port P] [--state DIR]"
  submit    submit a recipe to a Temporal cluster and print the job id: "submit RECIPE --temporal HOST:PORT"
  status    a job's state, progress, running step and error: "status ID [--json]"
  watch     follow a running job's progress to its result: "watch ID"
  cancel    cancel a job: "cancel ID"
  result    a finished job's result: "result ID [--json]"
  report    a job's report, self-contained HTML with plots: "report JOB|OUTPUT_DIR [--html FILE] [--json]"
  gc        remove the store artifacts no completed or running job references: "gc [--state DIR] [--dry-run]"
  compress  one low-rank stage (whiten, asvd, plain, lord) at a parameter budget, exported and read back
  quantize  RTN or GPTQ weight quantization exported as a GPTQ v1 checkpoint, optionally with an EoRA adapter (--eora-rank R)
  mla       convert grouped-query attention to DeepSeek multi-head latent attention (TransMLA), exported in the DeepSeek-V3 layout
  eval      measure a model on a Parquet evaluation set (perplexity, KL against a baseline)
  generate  greedy decoding with a KV cache: "generate --model DIR --prompt-ids 1,2,3 --max-new N", or text with the model's
            tokenizer.json: "generate --model DIR --prompt TEXT"
  inspect   print a checkpoint's architecture, parameter count, dtype and size
  calib     calibration data: "calib import --from X.jsonl --out X.parquet", or from text with the model's tokenizer:
            "calib import --from X.parquet|X.jsonl|X.txt --tokenizer DIR [--seq-len 2048] [--sequences N] --out X.parquet"
  synth     a synthetic checkpoint of a real shape and random calibration data, for timing at real size:
            "synth --shape llama3-8b --layers 4 --out DIR --calib FILE.parquet [--seed S]"
  tokenize  JSONL {"text"} on stdin to {"input_ids"} on stdout with a tokenizer.json: "tokenize --tokenizer DIR [--no-special] [--decode]"

Run "rankzip <command> -h" for the flags of a command.
`

// errUsage marks errors already explained by a usage message.
var errUsage = errors.New("usage")

func main() {
	gcpolicy.Apply()
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, errUsage) && !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "rankzip:", err)
		}
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "demo":
		return runDemo(rest, stdout, stderr)
	case "eval":
		return runEval(rest, stdout, stderr)
	case "compress":
		return runCompress(rest, stdout, stderr)
	case "quantize":
		return runQuantize(rest, stdout, stderr)
	case "inspect":
		return runInspect(rest, stdout, stderr)
	case "mla":
		return runMLA(rest, stdout, stderr)
	case "generate":
		return runGenerate(rest, stdout, stderr)
	case "calib":
		return runCalib(rest, stdout, stderr)
	case "tokenize":
		return runTokenize(rest, os.Stdin, stdout, stderr)
	case "run":
		return runRun(rest, stdout, stderr)
	case "submit":
		return runSubmit(rest, stdout, stderr)
	case "server":
		return runServer(rest, stdout, stderr)
	case "status":
		return runStatus(rest, stdout, stderr)
	case "watch":
		return runWatch(rest, stdout, stderr)
	case "cancel":
		return runCancel(rest, stdout, stderr)
	case "result":
		return runResult(rest, stdout, stderr)
	case "report":
		return runReport(rest, stdout, stderr)
	case "gc":
		return runGC(rest, stdout, stderr)
	case "synth":
		return runSynth(rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "rankzip: unknown command %q\n\n%s", cmd, usage)
	return errUsage
}

// newFlags returns a flag set that reports errors to stderr without exiting.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: rankzip %s\n\nflags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses the flags of a command, placed before or after its
// positional arguments (`inspect DIR --json` as well as `inspect --json
// DIR`; after "--" everything is positional), and wants exactly want
// positional arguments, which it returns.
func parse(fs *flag.FlagSet, args []string, want int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errUsage
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if len(pos) != want {
		fmt.Fprintf(fs.Output(), "rankzip %s: expected %d positional argument(s), got %d: %q\n", fs.Name(), want, len(pos), pos)
		fs.Usage()
		return nil, errUsage
	}
	return pos, nil
}
