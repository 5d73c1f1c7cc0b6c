package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/model"
)

func count(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}

func TestPutGetLookup(t *testing.T) {
	eachBackend(t, testPutGetLookup)
}

func testPutGetLookup(t *testing.T, s *Store) {
	key := Key("test", "model-digest", 3, map[string]int{"b": 1, "a": 2})
	if key != Key("test", "model-digest", 3, map[string]int{"a": 2, "b": 1}) {
		t.Fatal("key depends on map order")
	}
	if key == Key("test", "model-digest", 4, map[string]int{"a": 2, "b": 1}) {
		t.Fatal("key ignores a part")
	}
	if _, ok, err := s.Lookup(key); ok || err != nil {
		t.Fatalf("lookup of a fresh key: %v %v", ok, err)
	}
	ref, err := s.Put(key, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if ref.Bytes != 5 || ref.SHA256 != "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" {
		t.Fatalf("ref %+v", ref)
	}
	got, ok, err := s.Lookup(key)
	if !ok || err != nil || got != ref {
		t.Fatalf("lookup: %+v %v %v", got, ok, err)
	}
	data, err := s.Get(ref)
	if err != nil || string(data) != "hello" {
		t.Fatalf("get: %q %v", data, err)
	}
	// The same content under another key is stored once.
	if _, err := s.Put(Key("test", "other"), []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := s.Lookup(Key("test", "other")); !ok || err != nil || got != ref {
		t.Fatalf("lookup: %+v %v %v", got, ok, err)
	}
	if _, _, err := s.Lookup("../../etc/passwd"); err == nil {
		t.Error("malformed key accepted")
	}
	if s.remote != nil {
		return // corruption of an S3 object: TestS3CorruptObject
	}
	if n := count(t, filepath.Join(s.Root(), "objects")); n != 1 {
		t.Errorf("%d objects, want 1", n)
	}

	// Corruption is detected on read; a truncated object is not found.
	p, _ := s.Path(ref)
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, []byte("jello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ref); !errors.Is(err, ErrCorrupt) {
		t.Errorf("corrupt object read: %v", err)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the corrupt object was not removed: %v", err)
	}
	if err := os.WriteFile(p, []byte("jello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Verify(ref); !errors.Is(err, ErrCorrupt) {
		t.Errorf("corrupt object verified: %v", err)
	}
	if err := os.WriteFile(p, []byte("hell"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.Lookup(key); ok {
		t.Error("lookup found a truncated object")
	}
}

// A writer that fails (a full disk) leaves nothing behind.
func TestFailedWriteLeavesNothing(t *testing.T) {
	eachBackend(t, testFailedWriteLeavesNothing)
}

func testFailedWriteLeavesNothing(t *testing.T, s *Store) {
	key := Key("test", 1)
	_, err := s.Create(key, func(tmp string) error {
		if err := os.WriteFile(tmp, []byte("half"), 0o644); err != nil {
			return err
		}
		return &os.PathError{Op: "write", Path: tmp, Err: syscall.ENOSPC}
	})
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("error %v, want ENOSPC", err)
	}
	if n := count(t, s.root); n != 0 { // a remote store's cache
		t.Errorf("%d files left in the store", n)
	}
	if s.remote != nil {
		out, err := s.remote.client.ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: &s.remote.bucket})
		if err != nil || len(out.Contents) != 0 {
			t.Errorf("objects left in the bucket: %v", err)
		}
	}
	if _, ok, _ := s.Lookup(key); ok {
		t.Error("failed artifact found")
	}
}

func states(dim int, starts []int, seed float32) *model.States {
	x := make([]float32, starts[len(starts)-1]*dim)
	for i := range x {
		x[i] = seed + float32(i)/7
	}
	return &model.States{X: x, Dim: dim, Starts: starts}
}

func TestStreamsRoundTrip(t *testing.T) {
	eachBackend(t, testStreamsRoundTrip)
}

func testStreamsRoundTrip(t *testing.T, s *Store) {
	a, b := states(4, []int{0, 3, 5}, 1), states(4, []int{0, 2}, 2)
	for _, st := range []*calib.Streams{
		{Mode: calib.Sequential, Orig: []*model.States{a, b}, Comp: []*model.States{a, b}}, // aliased
		{Mode: calib.Sequential, Orig: []*model.States{a, b}, Comp: []*model.States{b, a}},
		{Mode: calib.Original, Orig: []*model.States{a}},
	} {
		ref, err := putStreams(s, Key("streams", st.Mode, len(st.Orig), st.Comp != nil && st.Comp[0] == b), st)
		if err != nil {
			t.Fatal(err)
		}
		got, err := getStreams(s, ref)
		if err != nil {
			t.Fatal(err)
		}
		same := func(x, y []*model.States) bool {
			return slices.EqualFunc(x, y, func(p, q *model.States) bool {
				return p.Dim == q.Dim && slices.Equal(p.X, q.X) && slices.Equal(p.Starts, q.Starts)
			})
		}
		if got.Mode != st.Mode || !same(got.Orig, st.Orig) || !same(got.Comp, st.Comp) {
			t.Errorf("streams changed in the store: %+v", got)
		}
	}
}

func TestBlockRoundTrip(t *testing.T) {
	eachBackend(t, testBlockRoundTrip)
}

func testBlockRoundTrip(t *testing.T, s *Store) {
	dense := func(out, in int, bias bool) *model.Dense {
		w := make([]float32, out*in)
		for i := range w {
			w[i] = float32(i) * 0.25
		}
		var b []float32
		if bias {
			b = make([]float32, out)
			b[0] = -1
		}
		return model.NewDense(out, in, w, b)
	}
	orig := &model.Block{AttnNorm: []float32{1}, MLPNorm: []float32{2},
		Q: dense(4, 4, true), K: dense(2, 4, true), V: dense(2, 4, true), O: dense(4, 4, false),
		Gate: dense(6, 4, false), Up: dense(6, 4, false), Down: dense(4, 6, false)}
	comp := *orig
	comp.Gate = &model.Factored{A: dense(2, 4, false), B: dense(6, 2, false)}
	comp.K = &model.Factored{A: dense(1, 4, false), B: dense(2, 1, true)}
	comp.Down = dense(4, 6, true)
	ref, err := putBlock(s, Key("block", 0), orig, &comp)
	if err != nil {
		t.Fatal(err)
	}
	got, err := getBlock(s, ref, orig)
	if err != nil {
		t.Fatal(err)
	}
	if got.Q != orig.Q || got.Up != orig.Up || &got.AttnNorm[0] != &orig.AttnNorm[0] {
		t.Error("unchanged linears were not taken from the original")
	}
	g, ok := got.Gate.(*model.Factored)
	if !ok || !slices.Equal(g.A.Weight, comp.Gate.(*model.Factored).A.Weight) || g.Rank() != 2 {
		t.Errorf("gate: %#v", got.Gate)
	}
	k, ok := got.K.(*model.Factored)
	if !ok || !slices.Equal(k.B.Bias, comp.K.(*model.Factored).B.Bias) {
		t.Errorf("k: %#v", got.K)
	}
	d, ok := got.Down.(*model.Dense)
	if !ok || d == orig.Down || !slices.Equal(d.Bias, comp.Down.(*model.Dense).Bias) {
		t.Errorf("down: %#v", got.Down)
	}
}

// A bit flipped in an artifact, or in one that a JSON artifact names, makes
// Lookup report the key absent (so its work is done again), removing the
// damaged object and the key record; writing the artifact again restores it.
func TestLookupDetectsFlippedBit(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tensor := bytes.Repeat([]byte{1, 2, 3, 4}, 1000)
	leaf, err := s.Put(Key("streams", 1), tensor)
	if err != nil {
		t.Fatal(err)
	}
	key := Key("block", 1)
	rec, err := s.PutJSON(key, map[string]any{"next": leaf, "index": 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []Ref{leaf, rec} {
		if _, ok, err := s.Lookup(key); !ok || err != nil {
			t.Fatalf("lookup of an intact record: %v %v", ok, err)
		}
		p, _ := s.Path(r)
		os.Chmod(p, 0o644)
		data, _ := os.ReadFile(p)
		data[len(data)/2] ^= 0x10
		os.WriteFile(p, data, 0o444)
		if _, ok, err := s.Lookup(key); ok || err != nil {
			t.Errorf("lookup with a bit flipped in %s: found %v, %v", r.SHA256[:8], ok, err)
		}
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the damaged object was not removed: %v", err)
		}
		if _, err := os.Stat(s.keyPath(key)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the key record of a damaged artifact was not removed: %v", err)
		}
		// The work is done again: the same content, the same refs.
		if again, err := s.Put(Key("streams", 1), tensor); err != nil || again != leaf {
			t.Fatalf("rewrite: %v %v", again, err)
		}
		if again, err := s.PutJSON(key, map[string]any{"next": leaf, "index": 1}); err != nil || again != rec {
			t.Fatalf("rewrite: %v %v", again, err)
		}
	}
}
