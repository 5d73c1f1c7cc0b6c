package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/rankzip/rankzip/store/s3fake"
)

// s3Blocks counts the block records under a bucket's prefix.
func s3Blocks(t *testing.T, c *s3.Client, bucket, prefix string) int {
	t.Helper()
	out, err := c.ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix + "keys/block/")})
	if err != nil {
		t.Fatal(err)
	}
	return len(out.Contents)
}

// rankzip run --store s3://bucket/prefix against an S3 server on
// 127.0.0.1: kill -9 after two blocks, the same command again finishes the
// job with the bytes of an uninterrupted run, without computing the blocks
// done before the kill again; nothing goes to the state directory's store.
func TestRunS3Store(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and compresses a model")
	}
	srv, err := s3fake.Start("127.0.0.1:0", "rankzip")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dir := t.TempDir()
	for _, kv := range append(srv.Env(),
		"AWS_CONFIG_FILE="+filepath.Join(dir, "aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE="+filepath.Join(dir, "aws-credentials"),
		"AWS_PROFILE=", "RANKZIP_STORE=", "RANKZIP_S3_PATH_STYLE=",
		"RANKZIP_STORE_CACHE="+filepath.Join(dir, "cache")) {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	recipePath := crashJob(t, dir)
	state := filepath.Join(dir, "state")
	args := []string{"run", recipePath, "--state", state, "--store", "s3://rankzip/jobs", "--heartbeat-timeout", "2s"}

	first := cli(args...)
	var out1 syncBuffer
	first.Stdout, first.Stderr = &out1, &out1
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for s3Blocks(t, srv.Client, "rankzip", "jobs/") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no 2 blocks done after 3 min; output:\n%s", &out1)
		}
		if first.ProcessState != nil {
			t.Fatalf("the process ended before the kill; output:\n%s", &out1)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.Wait()
	killedAt := s3Blocks(t, srv.Client, "rankzip", "jobs/")
	t.Logf("killed pid %d with %d blocks done", first.Process.Pid, killedAt)

	second := cli(args...)
	out2, err := second.CombinedOutput()
	if err != nil {
		t.Fatalf("rerun: %v\n%s", err, out2)
	}
	got, err := os.ReadFile(filepath.Join(dir, "out", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, directBytes(t, recipePath)) {
		t.Error("the job's checkpoint differs from an uninterrupted run's")
	}
	computed, found := blockEvents(t, filepath.Join(state, "rankzip.log"))
	pid2 := second.Process.Pid
	for _, b := range computed[pid2] {
		if b < killedAt {
			t.Errorf("block %d, done before the kill, was computed again", b)
		}
	}
	all := slices.Concat(computed[first.Process.Pid], computed[pid2], found[pid2])
	for b := range 5 {
		if !slices.Contains(all, b) {
			t.Errorf("block %d was never computed (first %v, rerun %v, found %v)", b, computed[first.Process.Pid], computed[pid2], found[pid2])
		}
	}
	if n := s3Blocks(t, srv.Client, "rankzip", "jobs/"); n != 5 {
		t.Errorf("%d block records in the bucket, want 5", n)
	}
	if _, err := os.Stat(filepath.Join(state, "store")); !os.IsNotExist(err) {
		t.Errorf("the state directory has a store: %v", err)
	}
	// gc sees the job's artifacts in the bucket and keeps them.
	out, _, err := rankzip("gc", "--state", state, "--store", "s3://rankzip/jobs", "--dry-run")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "referenced by 1 completed") || !strings.Contains(out, "s3://rankzip/jobs/") {
		t.Errorf("gc --dry-run: %s", out)
	}
	t.Logf("gc --dry-run: %s", strings.TrimSpace(out))
}
