package main

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Tests (and the CLI processes they start from this binary) never take a
// UI port a user's state directory may record.
func init() { pickUIPort = kernelUIPort }

// `rankzip server --ui` serves the Temporal Web UI of its embedded server:
// the UI's page and its API answer over HTTP, and the API lists a job
// submitted to the server. The UI's port is recorded in the state
// directory and used again.
func TestServerUI(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the embedded server in a process")
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	recipePath := crashJob(t, dir)

	start := func() (cmd func(), frontend, ui string) {
		c := cli("server", "--ui", "--state", state)
		out, err := c.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr syncBuffer
		c.Stderr = &stderr
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 16)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		reUI := regexp.MustCompile(`^Temporal Web UI: (http://127\.0\.0\.1:\d+)$`)
		reFE := regexp.MustCompile(`^Temporal server: (127\.0\.0\.1:\d+) `)
		deadline := time.After(2 * time.Minute)
		for frontend == "" || ui == "" {
			select {
			case l, ok := <-lines:
				if !ok {
					c.Wait()
					t.Fatalf("rankzip server ended:\n%s", stderr.String())
				}
				if m := reUI.FindStringSubmatch(l); m != nil {
					ui = m[1]
				}
				if m := reFE.FindStringSubmatch(l); m != nil {
					frontend = m[1]
				}
			case <-deadline:
				c.Process.Kill()
				t.Fatalf("rankzip server printed no addresses in 2 min:\n%s", stderr.String())
			}
		}
		go io.Copy(io.Discard, out)
		stop := func() {
			c.Process.Signal(syscall.SIGINT)
			done := make(chan error, 1)
			go func() { done <- c.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("rankzip server on SIGINT: %v\n%s", err, stderr.String())
				}
			case <-time.After(time.Minute):
				c.Process.Kill()
				t.Errorf("rankzip server did not stop on SIGINT")
			}
		}
		return stop, frontend, ui
	}
	stop, frontend, ui := start()
	defer func() {
		if stop != nil {
			stop()
		}
	}()

	id, _, err := rankzip("submit", recipePath, "--temporal", frontend)
	if err != nil {
		t.Fatal(err)
	}
	id = strings.TrimSpace(id)

	get := func(path string) (int, string) {
		resp, err := http.Get(ui + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/"); code != http.StatusOK || !strings.Contains(strings.ToLower(body), "<html") {
		t.Errorf("the UI's index: %d %.300s", code, body)
	}
	// The API the UI calls lists the job (visibility may lag a moment).
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := get("/api/v1/namespaces/default/workflows")
		if code == http.StatusOK && strings.Contains(body, id) && strings.Contains(body, "CompressModel") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the UI's API does not list job %s: %d %.500s", id, code, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code, body := get("/api/v1/namespaces/default/workflows/" + id); code != http.StatusOK || !strings.Contains(body, id) {
		t.Errorf("the UI's API on job %s: %d %.300s", id, code, body)
	}
	if os.Getenv("RANKZIP_UI_PAUSE") != "" { // to take a screenshot by hand
		t.Logf("UI at %s/namespaces/default/workflows/%s", ui, id)
		time.Sleep(time.Minute)
	}
	stop()
	stop = nil

	// Started again, the server and its UI come back on the same ports.
	stop2, frontend2, ui2 := start()
	defer stop2()
	if frontend2 != frontend || ui2 != ui {
		t.Errorf("after a restart: server %s, UI %s; before: %s, %s", frontend2, ui2, frontend, ui)
	}
	if b, err := os.ReadFile(filepath.Join(state, "temporal", "ui.json")); err != nil || !strings.Contains(string(b), ui[strings.LastIndex(ui, ":")+1:]) {
		t.Errorf("ui.json: %s %v", b, err)
	}
}
