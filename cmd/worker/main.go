// Command worker runs rankzip's workflows and activities for a Temporal
// cluster: start any number of them, on hosts that see the model, data and
// store directories at the same paths, and submit jobs with
// `rankzip submit RECIPE --temporal HOST:PORT` (or `rankzip run`).
//
//	worker --temporal HOST:PORT [--namespace NS] --store DIR [--device auto|cpu|cuda] [--concurrency N] [--connect-timeout D]
//
// Logs are JSON lines (log/slog) on stderr.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"

	"github.com/rankzip/rankzip/activities"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/store"
	"github.com/rankzip/rankzip/workflows"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
	}
}

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	address := fs.String("temporal", os.Getenv("TEMPORAL_ADDRESS"), "Temporal frontend HOST:PORT (default $TEMPORAL_ADDRESS)")
	namespace := fs.String("namespace", "default", "Temporal namespace")
	storeDir := fs.String("store", os.Getenv("RANKZIP_STORE"), "artifact store shared by every worker of a job: a directory (a shared filesystem) or s3://bucket/prefix (endpoint and credentials from the AWS SDK's environment: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_PROFILE...; downloads cached under $RANKZIP_STORE_CACHE, else the user cache directory) (default $RANKZIP_STORE)")
	device := fs.String("device", "", "compute device: auto, cpu or cuda (default $RANKZIP_DEVICE, else auto: the GPU where built with -tags cuda and one answers)")
	concurrency := fs.Int("concurrency", 1, "activities run at once (each holds a model and a block's statistics in memory)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	connectTimeout := fs.Duration("connect-timeout", time.Minute, "how long to retry connecting to Temporal at start")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *address == "" || *storeDir == "" {
		fs.Usage()
		return errors.New("--temporal and --store are required")
	}
	if *concurrency < 1 {
		return fmt.Errorf("--concurrency %d must be at least 1", *concurrency)
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lv})).With("pid", os.Getpid())
	st, err := store.Open(*storeDir)
	if err != nil {
		return err
	}
	// The cluster may still be starting: retry for a while.
	var c client.Client
	deadline := time.Now().Add(*connectTimeout)
	for {
		c, err = client.Dial(client.Options{HostPort: *address, Namespace: *namespace,
			Logger: tlog.NewStructuredLogger(log.With("component", "temporal"))})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("connect to Temporal at %s: %w", *address, err)
		}
		log.Warn("cannot connect to Temporal yet; retrying", "temporal", *address, "error", err.Error())
		time.Sleep(time.Second)
	}
	defer c.Close()
	k, err := kernels.Select(*device)
	if err != nil {
		return err
	}
	w := worker.New(c, workflows.TaskQueue, worker.Options{MaxConcurrentActivityExecutionSize: *concurrency})
	workflows.Register(w, &activities.Activities{Store: st, Backend: k, Log: log})
	log.Info("worker started", "temporal", *address, "namespace", *namespace, "task_queue", workflows.TaskQueue,
		"store", st.Root(), "concurrency", *concurrency, "backend", kernels.Describe(k))
	if err := w.Run(worker.InterruptCh()); err != nil {
		return err
	}
	log.Info("worker stopped")
	return nil
}
