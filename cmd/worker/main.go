// Command worker runs rankzip's workflows and activities for a Temporal
// cluster: start any number of them, on hosts that see the recipe's model
// and data at the same paths, sharing one store (an S3 bucket, or a
// directory on a shared filesystem), and submit jobs with
// `rankzip submit RECIPE --temporal HOST:PORT` (or `rankzip run`).
//
//	worker --temporal HOST:PORT [--namespace NS] [--tls-* ...] --store DIR|s3://B/P [--device auto|cpu|cuda] [--host-id ID] [--concurrency N] [--connect-timeout D]
//
// The connection is configured as Temporal's CLI does it (a profile of
// temporal.toml, TEMPORAL_ADDRESS, TEMPORAL_TLS_*, TEMPORAL_API_KEY...,
// then flags: see internal/temporalconf). A worker polls the general task
// queue, the GPU queue when its backend is a GPU, and its host's queue, where
// the steps that read a job's exported directory run. When a host's worker
// stops for good, a job waiting on its queue exports again, after the job's
// host wait (`rankzip run/submit --host-wait`), on whichever worker takes it,
// and writes the checkpoint to the recipe's output on that worker's host.
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
	"github.com/rankzip/rankzip/internal/gcpolicy"
	"github.com/rankzip/rankzip/internal/temporalconf"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/store"
	"github.com/rankzip/rankzip/workflows"
)

func main() {
	gcpolicy.Apply()
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
	tf := temporalconf.Register(fs)
	hostID := fs.String("host-id", "", "name of this host's task queue: workers with the same id must see the same local files (default $RANKZIP_HOST_ID, else the host name)")
	storeDir := fs.String("store", os.Getenv("RANKZIP_STORE"), "artifact store shared by every worker of a job: a directory (a shared filesystem) or s3://bucket/prefix (endpoint and credentials from the AWS SDK's environment: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_PROFILE...; downloads cached under $RANKZIP_STORE_CACHE, else the user cache directory) (default $RANKZIP_STORE)")
	device := fs.String("device", "", "compute device: auto, cpu or cuda (default $RANKZIP_DEVICE, else auto: the GPU where built with -tags cuda and one answers)")
	concurrency := fs.Int("concurrency", 1, "activities run at once from each task queue polled (each holds a model and a block's statistics in memory)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	connectTimeout := fs.Duration("connect-timeout", time.Minute, "how long to retry connecting to Temporal at start")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	tc, err := tf.Load()
	if err != nil {
		return err
	}
	if tc.Address() == "" || *storeDir == "" {
		fs.Usage()
		return errors.New("--temporal (or TEMPORAL_ADDRESS, or a Temporal profile's address) and --store are required")
	}
	host, err := temporalconf.HostID(*hostID)
	if err != nil {
		return err
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
	opts, err := tc.ClientOptions()
	if err != nil {
		return err
	}
	opts.Logger = tlog.NewStructuredLogger(log.With("component", "temporal"))
	var c client.Client
	deadline := time.Now().Add(*connectTimeout)
	for {
		c, err = client.Dial(opts)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("connect to Temporal (%s): %w", tc, err)
		}
		log.Warn("cannot connect to Temporal yet; retrying", "temporal", tc, "error", err.Error())
		time.Sleep(time.Second)
	}
	defer c.Close()
	k, err := kernels.Select(*device)
	if err != nil {
		return err
	}
	gpu := k.Name() == "cuda"
	ws, err := workflows.NewWorkers(c, &activities.Activities{Store: st, Backend: k, Log: log}, gpu, host, *concurrency)
	if err != nil {
		return err
	}
	queues := []string{workflows.TaskQueue, workflows.HostTaskQueue(host, gpu)}
	if gpu {
		queues = append(queues, workflows.GPUTaskQueue)
	}
	for _, w := range ws {
		if err := w.Start(); err != nil {
			return fmt.Errorf("start worker: %w", err)
		}
		defer w.Stop()
	}
	log.Info("worker started", "temporal", tc, "task_queues", queues,
		"store", st.Root(), "concurrency", *concurrency, "backend", kernels.Describe(k))
	<-worker.InterruptCh()
	log.Info("worker stopping")
	return nil
}
