// Package store is rankzip's artifact store: immutable files in a local (or
// shared) directory, named by the sha256 of their content, and small key
// records that map the hash of everything that determines an artifact to its
// ref. Activities exchange refs, never tensors; a retried activity looks its
// key up and skips work already done.
//
// Layout under the root:
//
//	objects/ab/abcdef…   content, named by its sha256
//	keys/<kind>/<key>.json   {"uri", "sha256", "bytes"} of the artifact of key
//	tmp/                 files being written
//
// Every write goes to tmp/, is fsynced and renamed into place, the object
// before its key record, so a crash leaves either nothing or a whole
// artifact. Readers verify the sha256 of what they read.
//
// The same store can live in an S3 bucket (s3://bucket/prefix, s3.go), with
// the same layout, guarantees and methods; the local directory is then a
// cache of downloaded objects.
package store

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Ref points at an artifact; it is what travels in workflow payloads.
type Ref struct {
	URI    string `json:"uri"` // file:///abs/root/objects/ab/abcdef…
	SHA256 string `json:"sha256"`
	Bytes  int64  `json:"bytes"`
}

// IsZero reports an unset ref.
func (r Ref) IsZero() bool { return r.SHA256 == "" }

// Store is an artifact store rooted at a directory. Its methods may be called
// concurrently, also from several processes sharing the directory.
type Store struct {
	root   string    // the store's directory; for a remote store, its local cache
	remote *s3Remote // nil for a local store
}

// ErrCorrupt is returned when an artifact's content does not match its hash.
var ErrCorrupt = errors.New("artifact content does not match its sha256")

// staleTmp is how old a file in tmp/ must be before Open removes it.
const staleTmp = 24 * time.Hour

// Open opens (creating if needed) the store at dir, or the S3 store at
// s3://bucket/prefix (OpenS3 with default options).
func Open(dir string) (*Store, error) {
	if IsRemote(dir) {
		return OpenS3(dir, S3Options{})
	}
	root, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	for _, d := range []string{"objects", "keys", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
	}
	s := &Store{root: root}
	s.sweep()
	return s, nil
}

// Root returns the store's directory, or the s3:// URL of a remote store.
func (s *Store) Root() string {
	if s.remote != nil {
		return s.remote.String()
	}
	return s.root
}

// sweep removes temporary files left by crashed writers long ago.
func (s *Store) sweep() {
	entries, _ := os.ReadDir(filepath.Join(s.root, "tmp"))
	for _, e := range entries {
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > staleTmp {
			os.RemoveAll(filepath.Join(s.root, "tmp", e.Name()))
		}
	}
}

// Key derives an artifact key of a kind from everything that determines the
// artifact: the parts are JSON-encoded in order and hashed.
func Key(kind string, parts ...any) string {
	h := sha256.New()
	enc := json.NewEncoder(h)
	for _, p := range parts {
		if err := enc.Encode(p); err != nil {
			panic(fmt.Sprintf("store: key part %T: %v", p, err))
		}
	}
	return kind + "/" + hex.EncodeToString(h.Sum(nil))
}

var keyPattern = regexp.MustCompile(`^[a-z0-9-]+/[0-9a-f]{64}$`)

func checkKey(key string) error {
	if !keyPattern.MatchString(key) {
		return fmt.Errorf("store: malformed key %q (want kind/sha256 from Key)", key)
	}
	return nil
}

func (s *Store) objectPath(sum string) string {
	return filepath.Join(s.root, "objects", sum[:2], sum)
}

func (s *Store) keyPath(key string) string {
	return filepath.Join(s.root, "keys", filepath.FromSlash(key)+".json")
}

// Path returns the local file of an artifact (without verifying it); for
// a remote store, its place in the cache, filled by Verify.
func (s *Store) Path(r Ref) (string, error) {
	if err := checkRef(r); err != nil {
		return "", err
	}
	return s.objectPath(r.SHA256), nil
}

func checkRef(r Ref) error {
	if len(r.SHA256) != 64 || strings.Trim(r.SHA256, "0123456789abcdef") != "" {
		return fmt.Errorf("store: malformed ref %+v", r)
	}
	return nil
}

// Create writes an artifact through write, which receives the path of a
// fresh temporary file to create (by any means: os.WriteFile, a safetensors
// writer). The file is hashed, fsynced and moved into the store, then key is
// recorded to point at it.
func (s *Store) Create(key string, write func(tmp string) error) (Ref, error) {
	if err := checkKey(key); err != nil {
		return Ref{}, err
	}
	dir, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), "put")
	if err != nil {
		return Ref{}, fmt.Errorf("store: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "artifact")
	if err := write(tmp); err != nil {
		return Ref{}, err
	}
	f, err := os.Open(tmp)
	if err != nil {
		return Ref{}, fmt.Errorf("store: %w", err)
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	if err != nil {
		return Ref{}, fmt.Errorf("store: %w", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if s.remote != nil {
		return s.createRemote(key, tmp, sum, n)
	}
	obj := s.objectPath(sum)
	if err := os.MkdirAll(filepath.Dir(obj), 0o755); err != nil {
		return Ref{}, fmt.Errorf("store: %w", err)
	}
	// Replace an existing object of that name too: it holds the same
	// content unless it was damaged (a flipped bit keeps its size).
	if err := os.Chmod(tmp, 0o444); err != nil {
		return Ref{}, fmt.Errorf("store: %w", err)
	}
	if err := os.Rename(tmp, obj); err != nil {
		return Ref{}, fmt.Errorf("store: %w", err)
	}
	syncDir(filepath.Dir(obj))
	ref := Ref{URI: "file://" + filepath.ToSlash(obj), SHA256: sum, Bytes: n}
	rec, _ := refRecord(ref)
	if err := writeAtomic(s.keyPath(key), rec); err != nil {
		return Ref{}, fmt.Errorf("store: record %s: %w", key, err)
	}
	return ref, nil
}

// Put stores data under key.
func (s *Store) Put(key string, data []byte) (Ref, error) {
	return s.Create(key, func(tmp string) error { return os.WriteFile(tmp, data, 0o644) })
}

// PutJSON stores v encoded as JSON under key.
func (s *Store) PutJSON(key string, v any) (Ref, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return Ref{}, fmt.Errorf("store: %w", err)
	}
	return s.Put(key, data)
}

// Lookup returns the ref recorded under key, and false when there is none or
// its artifact is missing or damaged: then the artifact must be made again.
// It verifies the sha256 of the artifact and of every artifact a JSON
// artifact names (a block's record names its factors and output streams);
// a damaged one is removed, with the key record, so that the work that made
// it is done again.
func (s *Store) Lookup(key string) (Ref, bool, error) {
	if err := checkKey(key); err != nil {
		return Ref{}, false, err
	}
	if s.remote != nil {
		return s.lookupRemote(key)
	}
	data, err := os.ReadFile(s.keyPath(key))
	if errors.Is(err, fs.ErrNotExist) {
		return Ref{}, false, nil
	}
	if err != nil {
		return Ref{}, false, fmt.Errorf("store: %w", err)
	}
	ref, ok := parseRecord(data)
	if !ok {
		return Ref{}, false, nil // a damaged record is as good as none
	}
	p, err := s.Path(ref)
	if err != nil {
		return Ref{}, false, nil
	}
	if st, err := os.Stat(p); err != nil || st.Size() != ref.Bytes {
		return Ref{}, false, nil
	}
	if err := s.verifyTree(ref); err != nil {
		if errors.Is(err, ErrCorrupt) || errors.Is(err, fs.ErrNotExist) {
			os.Remove(s.keyPath(key))
			return Ref{}, false, nil
		}
		return Ref{}, false, err
	}
	return ref, true, nil
}

// scanLimit is the size up to which an artifact is read for the refs it
// holds (JSON records; tensors are larger and hold none).
const scanLimit = 4 << 20

// verifyTree verifies r and, when r is a small JSON artifact, every ref it
// holds, recursively.
func (s *Store) verifyTree(r Ref) error {
	p, err := s.Verify(r)
	if err != nil {
		return err
	}
	if r.Bytes > scanLimit {
		return nil
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	var v any
	if json.Unmarshal(data, &v) != nil {
		return nil
	}
	var refs []Ref
	collectRefs(v, &refs)
	// Check them all, so that every damaged one is removed at once.
	var first error
	for _, c := range refs {
		if err := s.verifyTree(c); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// collectRefs appends the refs (objects with a sha256, bytes and uri) in a
// decoded JSON value.
func collectRefs(v any, refs *[]Ref) {
	switch v := v.(type) {
	case map[string]any:
		sum, _ := v["sha256"].(string)
		n, isNum := v["bytes"].(float64)
		if _, hasURI := v["uri"]; hasURI && isNum && len(sum) == 64 {
			*refs = append(*refs, Ref{SHA256: sum, Bytes: int64(n)})
		}
		for _, c := range v {
			collectRefs(c, refs)
		}
	case []any:
		for _, c := range v {
			collectRefs(c, refs)
		}
	}
}

// Verify checks that the artifact's file holds exactly the content its ref
// names and returns the file's path. A file whose content does not match is
// removed (ErrCorrupt): whatever made it must make it again.
func (s *Store) Verify(r Ref) (string, error) {
	if s.remote != nil {
		return s.verifyRemote(r)
	}
	p, err := s.Path(r)
	if err != nil {
		return "", err
	}
	f, err := os.Open(p)
	if err != nil {
		return "", fmt.Errorf("store: artifact %s: %w", r.SHA256, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", fmt.Errorf("store: artifact %s: %w", r.SHA256, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != r.SHA256 || n != r.Bytes {
		os.Remove(p)
		return "", fmt.Errorf("store: %s (%d bytes, sha256 %s, want %d bytes; removed): %w", p, n, got, r.Bytes, ErrCorrupt)
	}
	return p, nil
}

// Get returns the verified content of an artifact.
func (s *Store) Get(r Ref) ([]byte, error) {
	p, err := s.Path(r)
	if err != nil {
		return nil, err
	}
	if s.remote != nil {
		if _, err := s.verifyRemote(r); err != nil {
			return nil, err
		}
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("store: artifact %s: %w", r.SHA256, err)
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != r.SHA256 || int64(len(data)) != r.Bytes {
		os.Remove(p)
		return nil, fmt.Errorf("store: %s (%d bytes, sha256 %s, want %d bytes; removed): %w", p, len(data), got, r.Bytes, ErrCorrupt)
	}
	return data, nil
}

// GetJSON decodes a verified JSON artifact into v.
func (s *Store) GetJSON(r Ref, v any) error {
	data, err := s.Get(r)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("store: artifact %s: %w", r.SHA256, err)
	}
	return nil
}

// refRecord is the content of a key record.
func refRecord(r Ref) ([]byte, error) {
	rec, err := json.Marshal(r)
	return append(rec, '\n'), err
}

// parseRecord decodes a key record; false for a damaged one.
func parseRecord(data []byte) (Ref, bool) {
	var ref Ref
	if json.Unmarshal(data, &ref) != nil {
		return Ref{}, false
	}
	if checkRef(ref) != nil {
		return Ref{}, false
	}
	return ref, true
}

// writeAtomic writes data to path through a synced temporary file.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return err
	}
	syncDir(dir)
	return nil
}

// syncDir makes renames in dir durable (best effort: some filesystems refuse
// to fsync a directory).
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
