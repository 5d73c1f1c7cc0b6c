package store

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// Collect keeps what is live, what live JSON objects name, and what is
// recent; it removes the rest and the keys that point at it.
func TestCollect(t *testing.T) {
	t.Run("local", func(t *testing.T) {
		s, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		testCollect(t, s, func() {
			old := time.Now().Add(-time.Hour)
			for _, dir := range []string{"objects", "keys"} {
				files, _ := filepath.Glob(filepath.Join(s.Root(), dir, "*", "*"))
				for _, p := range files {
					os.Chtimes(p, old, old)
				}
			}
		})
	})
	t.Run("s3", func(t *testing.T) {
		// The server dates what is written before age() an hour back.
		clock := &offsetClock{}
		clock.off.Store(int64(-time.Hour))
		s := newFakeS3(t, s3mem.WithTimeSource(clock)).open(t, "", 0)
		testCollect(t, s, func() { clock.off.Store(0) })
	})
}

// offsetClock is the time now, moved by off.
type offsetClock struct{ off atomic.Int64 }

func (c *offsetClock) Now() time.Time                  { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *offsetClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

// testCollect runs Collect on a store; age makes what was written so far
// an hour old.
func testCollect(t *testing.T, s *Store, age func()) {
	leaf, _ := s.Put(Key("block", "leaf"), []byte("tensor bytes of a kept block"))
	root, _ := s.PutJSON(Key("block", "root"), map[string]any{"factors": leaf})
	garbage, _ := s.Put(Key("block", "garbage"), []byte("from a job nobody references"))
	shared, _ := s.Put(Key("plan", "shared"), []byte("same content, two keys"))
	// A block's record names its live factors; a report names nothing;
	// a dead job's record names only its own dead output.
	s.PutJSON(Key("block", "record"), map[string]any{"factors": leaf, "index": 3})
	s.PutJSON(Key("quality", "report"), map[string]any{"ppl": 15.2})
	dead, _ := s.Put(Key("streams", "dead"), []byte("a dead job's streams"))
	s.PutJSON(Key("block", "dead"), map[string]any{"next": dead})
	s.Put(Key("plan", "shared-again"), []byte("same content, two keys"))
	age()
	recentKey := Key("block", "in-flight")
	recent, _ := s.Put(recentKey, []byte("written by a running job's activity"))
	since := time.Now().Add(-time.Minute)

	live := map[string]bool{root.SHA256: true, shared.SHA256: true}
	dry, err := s.Collect(live, since, true)
	if err != nil {
		t.Fatal(err)
	}
	deadRec, _, _ := s.Lookup(Key("block", "dead"))
	if want := garbage.Bytes + dead.Bytes + deadRec.Bytes; dry.Objects != 3 || dry.Bytes != want || dry.Keys != 3 {
		t.Errorf("dry run: %+v, want 3 objects of %d bytes and 3 keys", dry, want)
	}
	if _, ok, _ := s.Lookup(Key("block", "garbage")); !ok {
		t.Error("a dry run removed something")
	}
	rep, err := s.Collect(live, since, false)
	if err != nil {
		t.Fatal(err)
	}
	if rep != dry {
		t.Errorf("collect %+v, the dry run said %+v", rep, dry)
	}
	for key, want := range map[string]bool{Key("block", "leaf"): true, Key("block", "root"): true, Key("plan", "shared"): true,
		Key("plan", "shared-again"): true, recentKey: true, Key("block", "garbage"): false,
		Key("block", "record"): true, Key("quality", "report"): true, Key("streams", "dead"): false, Key("block", "dead"): false} {
		if _, ok, _ := s.Lookup(key); ok != want {
			t.Errorf("key %s found %v after gc, want %v", key, ok, want)
		}
	}
	for _, r := range []Ref{leaf, root, shared, recent} {
		if _, err := s.Verify(r); err != nil {
			t.Errorf("kept artifact: %v", err)
		}
	}
	// Without a running job nothing recent is protected.
	rep, err = s.Collect(live, time.Time{}, false)
	if err != nil || rep.Objects != 1 || rep.Bytes != recent.Bytes {
		t.Errorf("second gc: %+v %v, want the in-flight object (%d bytes) removed", rep, err, recent.Bytes)
	}
}
