package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// fakeS3 is an S3-protocol server on 127.0.0.1 (gofakes3, in memory) with
// a bucket, and the environment that points the AWS SDK at it.
type fakeS3 struct {
	url    string
	client *s3.Client
	gets   atomic.Int64 // downloads of objects (not of key records)
}

const testBucket = "rankzip-test"

func newFakeS3(t *testing.T, opts ...s3mem.Option) *fakeS3 {
	t.Helper()
	faker := gofakes3.New(s3mem.New(opts...), gofakes3.WithLogger(gofakes3.DiscardLog()))
	f := &fakeS3{}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/objects/") {
			f.gets.Add(1)
		}
		faker.Server().ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	// The SDK's usual configuration, and nothing from this machine's.
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_ENDPOINT_URL":            ts.URL,
		"AWS_ACCESS_KEY_ID":           "test-key-id",
		"AWS_SECRET_ACCESS_KEY":       "test-secret",
		"AWS_REGION":                  "us-east-1",
		"AWS_CONFIG_FILE":             filepath.Join(dir, "config"),
		"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "credentials"),
		"AWS_PROFILE":                 "",
		"RANKZIP_S3_PATH_STYLE":       "",
	} {
		t.Setenv(k, v)
	}
	client, err := defaultS3Client(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(testBucket)}); err != nil {
		t.Fatal(err)
	}
	f.url, f.client = ts.URL, client
	return f
}

// open opens the store s3://rankzip-test/jobs/a as --store would, with a
// fresh cache (another host) unless cache is given.
func (f *fakeS3) open(t *testing.T, cache string, partSize int64) *Store {
	t.Helper()
	if cache == "" {
		cache = t.TempDir()
	}
	t.Setenv("RANKZIP_STORE_CACHE", cache)
	var s *Store
	var err error
	if partSize == 0 {
		s, err = Open("s3://" + testBucket + "/jobs/a")
	} else {
		s, err = OpenS3("s3://"+testBucket+"/jobs/a", S3Options{PartSize: partSize})
	}
	if err != nil {
		t.Fatal(err)
	}
	if s.Root() != "s3://"+testBucket+"/jobs/a/" {
		t.Fatalf("root %q", s.Root())
	}
	return s
}

// names lists the bucket's objects.
func (f *fakeS3) names(t *testing.T) []string {
	t.Helper()
	out, err := f.client.ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: aws.String(testBucket)})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, o := range out.Contents {
		names = append(names, aws.ToString(o.Key))
	}
	return names
}

func (f *fakeS3) uploads(t *testing.T) int {
	t.Helper()
	out, err := f.client.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: aws.String(testBucket)})
	if err != nil {
		t.Fatal(err)
	}
	return len(out.Uploads)
}

// eachBackend runs a test on a local store and on an S3 one.
func eachBackend(t *testing.T, test func(t *testing.T, s *Store)) {
	t.Run("local", func(t *testing.T) {
		s, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		test(t, s)
	})
	t.Run("s3", func(t *testing.T) {
		test(t, newFakeS3(t).open(t, "", 0))
	})
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// A large artifact goes up in parts and comes back whole, verified, on
// another host (an empty cache).
func TestS3Multipart(t *testing.T) {
	f := newFakeS3(t)
	const part = 5 << 20
	s := f.open(t, "", part)
	var parts []int32
	s.remote.partBody = func(num int32, body io.ReadSeeker) io.ReadSeeker {
		parts = append(parts, num)
		return body
	}
	data := randomBytes(2*part+12345, 1)
	key := Key("streams", "big")
	ref, err := s.Create(key, func(tmp string) error { return os.WriteFile(tmp, data, 0o644) })
	if err != nil {
		t.Fatal(err)
	}
	name := s.remote.objectName(ref.SHA256)
	if ref.URI != "s3://"+testBucket+"/"+name || name != "jobs/a/objects/"+ref.SHA256[:2]+"/"+ref.SHA256 {
		t.Errorf("ref %+v", ref)
	}
	if !slices.Equal(parts, []int32{1, 2, 3}) {
		t.Errorf("uploaded parts %v, want 1, 2, 3", parts)
	}
	other := f.open(t, "", 0)
	f.gets.Store(0)
	got, ok, err := other.Lookup(key)
	if !ok || err != nil || got != ref {
		t.Fatalf("lookup from another host: %+v %v %v", got, ok, err)
	}
	p, err := other.Verify(ref)
	if err != nil {
		t.Fatal(err)
	}
	if back, err := os.ReadFile(p); err != nil || !bytes.Equal(back, data) {
		t.Fatalf("read back %d bytes, %v", len(back), err)
	}
	if n := f.gets.Load(); n != 1 {
		t.Errorf("%d downloads for a lookup and a read, want 1 (then the cached copy)", n)
	}
	// A damaged cached copy is noticed and fetched again.
	os.Chmod(p, 0o644)
	os.WriteFile(p, bytes.Repeat([]byte{0}, len(data)), 0o644)
	if p, err = other.Verify(ref); err != nil {
		t.Fatal(err)
	}
	if back, _ := os.ReadFile(p); !bytes.Equal(back, data) || f.gets.Load() != 2 {
		t.Fatal("a damaged cached copy was used")
	}
	// The writer's own reads use the copy it uploaded from.
	if _, err := s.Verify(ref); err != nil || f.gets.Load() != 2 {
		t.Errorf("the writer downloaded its own artifact (%d downloads; %v)", f.gets.Load(), err)
	}
}

// failingReader fails after n bytes, as a disk or a network would.
type failingReader struct {
	io.ReadSeeker
	n, read int64
}

var errMidway = errors.New("read failed midway")

func (r *failingReader) Read(p []byte) (int, error) {
	if r.read >= r.n {
		return 0, errMidway
	}
	p = p[:min(int64(len(p)), r.n-r.read)]
	k, err := r.ReadSeeker.Read(p)
	r.read += int64(k)
	return k, err
}

func (r *failingReader) Seek(off int64, whence int) (int64, error) {
	pos, err := r.ReadSeeker.Seek(off, whence)
	r.read = pos
	return pos, err
}

// An upload that fails midway (the second part of three, or a single PUT)
// publishes nothing: no object, no key, no multipart upload left open;
// the same write then succeeds.
func TestS3InterruptedUpload(t *testing.T) {
	f := newFakeS3(t)
	const part = 5 << 20
	for _, c := range []struct {
		name      string
		size      int
		breakPart int32
	}{{"multipart", 2*part + 1000, 2}, {"put", 1000, 1}} {
		t.Run(c.name, func(t *testing.T) {
			cache := t.TempDir()
			s := f.open(t, cache, part)
			s.remote.partBody = func(num int32, body io.ReadSeeker) io.ReadSeeker {
				if num == c.breakPart {
					return &failingReader{ReadSeeker: body, n: 500}
				}
				return body
			}
			data := randomBytes(c.size, 2)
			key := Key("factors", c.name)
			_, err := s.Create(key, func(tmp string) error { return os.WriteFile(tmp, data, 0o644) })
			if !errors.Is(err, errMidway) {
				t.Fatalf("error %v, want the reader's", err)
			}
			if names := f.names(t); len(names) != 0 {
				t.Errorf("published after a failed upload: %v", names)
			}
			if n := f.uploads(t); n != 0 {
				t.Errorf("%d multipart uploads left open", n)
			}
			if n := count(t, cache); n != 0 {
				t.Errorf("%d files left in the cache", n)
			}
			if _, ok, err := f.open(t, "", 0).Lookup(key); ok || err != nil {
				t.Errorf("lookup after a failed upload: %v %v", ok, err)
			}
			s.remote.partBody = nil
			ref, err := s.Create(key, func(tmp string) error { return os.WriteFile(tmp, data, 0o644) })
			if err != nil {
				t.Fatal(err)
			}
			if back, err := f.open(t, "", 0).Get(ref); err != nil || !bytes.Equal(back, data) {
				t.Fatalf("get after the retry: %v", err)
			}
			for _, name := range f.names(t) {
				f.client.DeleteObject(context.Background(), &s3.DeleteObjectInput{Bucket: aws.String(testBucket), Key: aws.String(name)})
			}
		})
	}
}

// A writer killed mid-upload leaves an incomplete multipart upload: no
// reader sees the object, and Open aborts such uploads once stale.
func TestS3CrashedUploadInvisible(t *testing.T) {
	f := newFakeS3(t)
	s := f.open(t, "", 0)
	data := randomBytes(6<<20, 3)
	ref := Ref{SHA256: sha256hex(data), Bytes: int64(len(data))}
	name := s.remote.objectName(ref.SHA256)
	ctx := context.Background()
	mp, err := f.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String(testBucket), Key: aws.String(name)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String(testBucket), Key: aws.String(name), UploadId: mp.UploadId,
		PartNumber: aws.Int32(1), Body: bytes.NewReader(data[:5<<20])}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Verify(ref); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("verify of a half-uploaded object: %v", err)
	}
	if names := f.names(t); len(names) != 0 {
		t.Errorf("visible: %v", names)
	}
	f.open(t, "", 0)
	if n := f.uploads(t); n != 1 {
		t.Errorf("a fresh upload was aborted (%d left)", n)
	}
	old := staleUpload
	defer func() { staleUpload = old }()
	staleUpload = 0
	f.open(t, "", 0)
	if n := f.uploads(t); n != 0 {
		t.Errorf("%d stale uploads left after Open", n)
	}
}

// An object whose bytes were replaced on the server is detected on every
// read (with a cached copy or without), named in the error, and removed,
// so that its work is done again; a record naming it is not found.
func TestS3CorruptObject(t *testing.T) {
	f := newFakeS3(t)
	s := f.open(t, "", 0)
	tensor := randomBytes(40000, 4)
	leafKey := Key("streams", 1)
	leaf, err := s.Put(leafKey, tensor)
	if err != nil {
		t.Fatal(err)
	}
	key := Key("block", 1)
	rec, err := s.PutJSON(key, map[string]any{"next": leaf, "index": 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := s.Lookup(key); !ok || err != nil {
		t.Fatalf("lookup of an intact record: %v %v", ok, err)
	}
	corrupt := func(r Ref) {
		t.Helper()
		bad := append([]byte(nil), tensor...)
		if r != leaf {
			bad, _ = s.Get(r)
		}
		bad[len(bad)/2] ^= 0x10
		if _, err := f.client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(testBucket),
			Key: aws.String(s.remote.objectName(r.SHA256)), Body: bytes.NewReader(bad)}); err != nil {
			t.Fatal(err)
		}
	}
	has := func(name string) bool {
		_, _, err := s.remote.head(context.Background(), name)
		return err == nil
	}
	// Read through the store that wrote it (a cached copy) and from a host
	// without one.
	for _, reader := range []*Store{s, f.open(t, "", 0)} {
		corrupt(leaf)
		_, err := reader.Get(leaf)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), leaf.URI) {
			t.Errorf("corrupt object read: %v", err)
		}
		if has(s.remote.objectName(leaf.SHA256)) {
			t.Error("the corrupt object was not removed")
		}
		if _, err := getStreams(reader, leaf); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("read of the removed object: %v", err)
		}
		if again, err := s.Put(leafKey, tensor); err != nil || again != leaf {
			t.Fatalf("rewrite: %v %v", again, err)
		}
	}
	// Lookup finds a record whose artifact, or one it names, was damaged
	// absent, removes the record, and finds it again once rewritten.
	for _, r := range []Ref{leaf, rec} {
		for _, reader := range []*Store{s, f.open(t, "", 0)} {
			corrupt(r)
			if _, ok, err := reader.Lookup(key); ok || err != nil {
				t.Errorf("lookup with a bit flipped in %s: found %v, %v", r.SHA256[:8], ok, err)
			}
			if has(s.remote.keyName(key)) || has(s.remote.objectName(r.SHA256)) {
				t.Error("the damaged object or its key record was not removed")
			}
			if again, err := s.Put(leafKey, tensor); err != nil || again != leaf {
				t.Fatalf("rewrite: %v %v", again, err)
			}
			if again, err := s.PutJSON(key, map[string]any{"next": leaf, "index": 1}); err != nil || again != rec {
				t.Fatalf("rewrite: %v %v", again, err)
			}
			if _, ok, err := reader.Lookup(key); !ok || err != nil {
				t.Errorf("lookup after the rewrite: %v %v", ok, err)
			}
		}
	}
}

func sha256hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func TestOpenS3Malformed(t *testing.T) {
	for _, u := range []string{"s3://", "s3:///prefix", "s3://bucket/p?x=1"} {
		if _, err := OpenS3(u, S3Options{}); err == nil {
			t.Errorf("%q accepted", u)
		}
	}
}

// zeroS3 is the least of an S3 server for one object of n zero bytes: it
// takes uploads and throws the bytes away (counting them) and serves the
// object as zeros, so that what the client holds in memory can be measured.
type zeroS3 struct {
	n        int64
	received atomic.Int64
}

func (z *zeroS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 2)
	onObject := len(parts) == 2 && parts[1] != ""
	switch {
	case !onObject && r.Method == http.MethodHead: // HeadBucket
	case !onObject && q.Has("uploads"): // ListMultipartUploads
		io.WriteString(w, `<ListMultipartUploadsResult><Bucket>b</Bucket></ListMultipartUploadsResult>`)
	case r.Method == http.MethodPost && q.Has("uploads"):
		io.WriteString(w, `<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>u1</UploadId></InitiateMultipartUploadResult>`)
	case r.Method == http.MethodPut:
		n, _ := io.Copy(io.Discard, r.Body)
		if strings.Contains(parts[1], "/objects/") {
			z.received.Add(n)
		}
		w.Header().Set("ETag", `"part"`)
	case r.Method == http.MethodPost && q.Has("uploadId"):
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, `<CompleteMultipartUploadResult><ETag>"zeros-n"</ETag></CompleteMultipartUploadResult>`)
	case r.Method == http.MethodHead || r.Method == http.MethodGet:
		w.Header().Set("Content-Length", strconv.FormatInt(z.n, 10))
		w.Header().Set("ETag", `"zeros-n"`)
		if r.Method == http.MethodGet {
			io.CopyN(w, zeroReader{}, z.n)
		}
	default:
		http.Error(w, "unexpected "+r.Method+" "+r.URL.String(), http.StatusNotImplemented)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// An artifact of 96 MiB goes up in 16 MiB parts and comes down again with
// less than a part allocated by the client, all requests together.
func TestS3StreamsLargeArtifacts(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 96 MiB each way")
	}
	const size = 96 << 20
	z := &zeroS3{n: size}
	ts := httptest.NewServer(z)
	defer ts.Close()
	newFakeS3(t) // the environment
	t.Setenv("AWS_ENDPOINT_URL", ts.URL)
	s := (&fakeS3{}).open(t, "", 0)
	writeZeros := func(tmp string) error {
		f, err := os.Create(tmp)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.CopyN(f, zeroReader{}, size)
		return err
	}
	allocated := func(f func()) uint64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	var ref Ref
	var err error
	up := allocated(func() { ref, err = s.Create(Key("streams", "zeros"), writeZeros) })
	if err != nil {
		t.Fatal(err)
	}
	if z.received.Load() != size {
		t.Fatalf("the server received %d bytes, want %d", z.received.Load(), size)
	}
	down := allocated(func() { _, err = (&fakeS3{}).open(t, "", 0).Verify(ref) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("allocated %.1f MiB uploading and %.1f MiB downloading %d MiB", float64(up)/(1<<20), float64(down)/(1<<20), size>>20)
	if up >= defaultPartSize || down >= defaultPartSize {
		t.Errorf("allocated %d bytes up, %d down: more than a part (%d)", up, down, defaultPartSize)
	}
}

// The S3-only endpoint variable works too, with path-style requests.
func TestS3EndpointOfS3Only(t *testing.T) {
	f := newFakeS3(t)
	t.Setenv("AWS_ENDPOINT_URL", "")
	t.Setenv("AWS_ENDPOINT_URL_S3", f.url)
	s := f.open(t, "", 0)
	if _, err := s.Put(Key("test", 1), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if names := f.names(t); len(names) != 2 {
		t.Errorf("bucket holds %v", names)
	}
}
