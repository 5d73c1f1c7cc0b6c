package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// An S3 store keeps the same layout as a local one under a bucket's prefix:
//
//	<prefix>/objects/ab/abcdef…            content, named by its sha256
//	<prefix>/keys/<kind>/<key>.json        the ref of the artifact of key
//
// An artifact is written to a local temporary file, hashed, uploaded under
// its content name (one PUT, or a multipart upload read part by part from
// the file, so nothing larger than a part is held in memory; a failed
// multipart upload is aborted), and only then is its key record PUT. S3 makes
// an object visible whole or not at all, so a crash leaves at most an
// unreferenced object or an incomplete multipart upload that readers never
// see (Open aborts the ones older than a day).
//
// Readers download an object into a local cache (objects/ab/… under the
// cache directory), hashing it on the way, and use the cached file; each
// later read compares the object's ETag (a HEAD) with the one it was
// downloaded at and hashes the cached file again. An object whose content
// does not match its name is removed from the bucket (ErrCorrupt), as the
// local store removes a damaged file.

// S3Options configures an S3 store.
type S3Options struct {
	// Cache is the local directory downloaded objects are kept in; default
	// $RANKZIP_STORE_CACHE, else <user cache dir>/rankzip/s3/<bucket>/<prefix>.
	Cache string
	// PartSize is the size of a multipart upload's parts (default 16 MiB;
	// S3 refuses parts under 5 MiB but the last). Artifacts up to one part
	// are uploaded with a single PUT.
	PartSize int64
	// Client talks to the bucket; default: one made from the AWS SDK's
	// environment and shared configuration (AWS_ENDPOINT_URL, AWS_REGION,
	// AWS_ACCESS_KEY_ID, AWS_PROFILE, ...), with path-style addressing
	// when an endpoint is set (S3-compatible servers) unless
	// RANKZIP_S3_PATH_STYLE says otherwise.
	Client *s3.Client
}

const defaultPartSize = 16 << 20

// staleUpload is how old an incomplete multipart upload must be before Open
// aborts it (a writer that crashed mid-upload).
var staleUpload = staleTmp

type s3Remote struct {
	client   *s3.Client
	bucket   string
	prefix   string // "" or ending in "/"
	partSize int64

	// partBody, when set (by tests), wraps the body of each uploaded part.
	partBody func(part int32, body io.ReadSeeker) io.ReadSeeker
}

// IsRemote reports whether loc names a remote store (s3://bucket/prefix).
func IsRemote(loc string) bool { return strings.HasPrefix(loc, "s3://") }

// OpenS3 opens the store at uri, s3://bucket[/prefix]. The bucket must exist.
func OpenS3(uri string, opt S3Options) (*Store, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "s3" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("store: %q is not s3://bucket/prefix", uri)
	}
	prefix := strings.Trim(path.Clean("/"+u.Path), "/")
	if prefix != "" {
		prefix += "/"
	}
	r := &s3Remote{client: opt.Client, bucket: u.Host, prefix: prefix, partSize: opt.PartSize}
	if r.partSize <= 0 {
		r.partSize = defaultPartSize
	}
	ctx := context.Background()
	if r.client == nil {
		if r.client, err = defaultS3Client(ctx); err != nil {
			return nil, fmt.Errorf("store: %s: %w", r, err)
		}
	}
	if _, err := r.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(r.bucket)}); err != nil {
		return nil, fmt.Errorf("store: %s: bucket %s: %w", r, r.bucket, err)
	}
	cache := opt.Cache
	if cache == "" {
		cache = os.Getenv("RANKZIP_STORE_CACHE")
	}
	if cache == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			return nil, fmt.Errorf("store: %s: no cache directory: %w", r, err)
		}
		cache = filepath.Join(dir, "rankzip", "s3", r.bucket, filepath.FromSlash(r.prefix))
	}
	if cache, err = filepath.Abs(cache); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	for _, d := range []string{"objects", "tmp"} {
		if err := os.MkdirAll(filepath.Join(cache, d), 0o755); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
	}
	s := &Store{root: cache, remote: r}
	s.sweep()
	r.abortStale(ctx)
	return s, nil
}

// defaultS3Client makes a client from the SDK's usual configuration.
func defaultS3Client(ctx context.Context) (*s3.Client, error) {
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, err
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1" // S3-compatible servers mostly ignore it, but requests are signed with one
	}
	var pathStyle *bool
	if v := os.Getenv("RANKZIP_S3_PATH_STYLE"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("RANKZIP_S3_PATH_STYLE=%q: %w", v, err)
		}
		pathStyle = &b
	}
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		// BaseEndpoint is AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or the
		// config file's endpoint_url, resolved by now.
		o.UsePathStyle = o.BaseEndpoint != nil
		if pathStyle != nil {
			o.UsePathStyle = *pathStyle
		}
		// Every read is checked against its sha256; a server that sends no
		// checksum of its own is no news worth a warning per download.
		o.DisableLogOutputChecksumValidationSkipped = true
	}), nil
}

func (r *s3Remote) String() string { return "s3://" + r.bucket + "/" + r.prefix }

func (r *s3Remote) objectName(sum string) string { return r.prefix + "objects/" + sum[:2] + "/" + sum }
func (r *s3Remote) keyName(key string) string    { return r.prefix + "keys/" + key + ".json" }
func (r *s3Remote) uri(name string) string       { return "s3://" + r.bucket + "/" + name }

// notFound reports a 404 (NoSuchKey, NotFound).
func notFound(err error) bool {
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	var st interface{ HTTPStatusCode() int }
	return errors.As(err, &nsk) || errors.As(err, &nf) || (errors.As(err, &st) && st.HTTPStatusCode() == 404)
}

// head returns an object's size and ETag; a missing object is fs.ErrNotExist.
func (r *s3Remote) head(ctx context.Context, name string) (int64, string, error) {
	out, err := r.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(r.bucket), Key: aws.String(name)})
	if err != nil {
		if notFound(err) {
			return 0, "", fmt.Errorf("store: %s: %w", r.uri(name), fs.ErrNotExist)
		}
		return 0, "", fmt.Errorf("store: %s: %w", r.uri(name), err)
	}
	return aws.ToInt64(out.ContentLength), aws.ToString(out.ETag), nil
}

// get opens an object; a missing one is fs.ErrNotExist.
func (r *s3Remote) get(ctx context.Context, name string) (*s3.GetObjectOutput, error) {
	out, err := r.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(r.bucket), Key: aws.String(name)})
	if err != nil {
		if notFound(err) {
			return nil, fmt.Errorf("store: %s: %w", r.uri(name), fs.ErrNotExist)
		}
		return nil, fmt.Errorf("store: %s: %w", r.uri(name), err)
	}
	return out, nil
}

// getSmall reads a whole object of at most limit bytes.
func (r *s3Remote) getSmall(ctx context.Context, name string, limit int64) ([]byte, error) {
	out, err := r.get(ctx, name)
	if err != nil {
		return nil, err
	}
	defer out.Body.Close()
	data, err := io.ReadAll(io.LimitReader(out.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("store: %s: %w", r.uri(name), err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("store: %s: larger than %d bytes", r.uri(name), limit)
	}
	return data, nil
}

func (r *s3Remote) putSmall(ctx context.Context, name string, data []byte) error {
	_, err := r.client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(r.bucket), Key: aws.String(name),
		Body: strings.NewReader(string(data)), ContentLength: aws.Int64(int64(len(data))), ContentType: aws.String("application/json")})
	if err != nil {
		return fmt.Errorf("store: %s: %w", r.uri(name), err)
	}
	return nil
}

func (r *s3Remote) remove(ctx context.Context, name string) error {
	_, err := r.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(r.bucket), Key: aws.String(name)})
	if err != nil && !notFound(err) {
		return fmt.Errorf("store: %s: %w", r.uri(name), err)
	}
	return nil
}

// upload stores the n bytes of f under name, reading it part by part. A
// multipart upload that fails is aborted.
func (r *s3Remote) upload(ctx context.Context, name string, f *os.File, n int64) error {
	body := func(part int32, off, size int64) io.ReadSeeker {
		var b io.ReadSeeker = io.NewSectionReader(f, off, size)
		if r.partBody != nil {
			b = r.partBody(part, b)
		}
		return b
	}
	if n <= r.partSize {
		_, err := r.client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(r.bucket), Key: aws.String(name),
			Body: body(1, 0, n), ContentLength: aws.Int64(n)})
		if err != nil {
			return fmt.Errorf("store: upload %s: %w", r.uri(name), err)
		}
		return nil
	}
	mp, err := r.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String(r.bucket), Key: aws.String(name)})
	if err != nil {
		return fmt.Errorf("store: upload %s: %w", r.uri(name), err)
	}
	abort := func(err error) error {
		// Not the caller's context: it may be what was cancelled.
		actx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, aerr := r.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{Bucket: aws.String(r.bucket),
			Key: aws.String(name), UploadId: mp.UploadId}); aerr != nil {
			err = fmt.Errorf("%w (and aborting the upload: %v)", err, aerr)
		}
		return fmt.Errorf("store: upload %s: %w", r.uri(name), err)
	}
	var parts []types.CompletedPart
	for off, num := int64(0), int32(1); off < n; off, num = off+r.partSize, num+1 {
		size := min(r.partSize, n-off)
		out, err := r.client.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String(r.bucket), Key: aws.String(name),
			UploadId: mp.UploadId, PartNumber: aws.Int32(num), Body: body(num, off, size), ContentLength: aws.Int64(size)})
		if err != nil {
			return abort(fmt.Errorf("part %d: %w", num, err))
		}
		parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(num)})
	}
	_, err = r.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: aws.String(r.bucket),
		Key: aws.String(name), UploadId: mp.UploadId, MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}})
	if err != nil {
		return abort(err)
	}
	return nil
}

// abortStale aborts the multipart uploads under the prefix begun more than
// staleUpload ago (best effort).
func (r *s3Remote) abortStale(ctx context.Context) {
	in := &s3.ListMultipartUploadsInput{Bucket: aws.String(r.bucket), Prefix: aws.String(r.prefix + "objects/")}
	for {
		out, err := r.client.ListMultipartUploads(ctx, in)
		if err != nil {
			return
		}
		for _, u := range out.Uploads {
			if u.Initiated != nil && time.Since(*u.Initiated) >= staleUpload {
				r.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: aws.String(r.bucket), Key: u.Key, UploadId: u.UploadId})
			}
		}
		if !aws.ToBool(out.IsTruncated) {
			return
		}
		in.KeyMarker, in.UploadIdMarker = out.NextKeyMarker, out.NextUploadIdMarker
	}
}

// list calls fn for every object under the prefix's dir/ (name relative to
// the prefix, size, modification time).
func (r *s3Remote) list(ctx context.Context, dir string, fn func(name string, size int64, mod time.Time) error) error {
	p := s3.NewListObjectsV2Paginator(r.client, &s3.ListObjectsV2Input{Bucket: aws.String(r.bucket), Prefix: aws.String(r.prefix + dir + "/")})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("store: list %s: %w", r.uri(r.prefix+dir+"/"), err)
		}
		for _, o := range out.Contents {
			if err := fn(strings.TrimPrefix(aws.ToString(o.Key), r.prefix), aws.ToInt64(o.Size), aws.ToTime(o.LastModified)); err != nil {
				return err
			}
		}
	}
	return nil
}

// etagPath is the file holding the ETag a cached object was downloaded at.
func (s *Store) etagPath(sum string) string { return s.objectPath(sum) + ".etag" }

// createRemote uploads the hashed file tmp (n bytes, sha256 sum) under its
// content name, keeps it in the cache, and then records key.
func (s *Store) createRemote(key, tmp, sum string, n int64) (Ref, error) {
	ctx := context.Background()
	r := s.remote
	f, err := os.Open(tmp)
	if err != nil {
		return Ref{}, fmt.Errorf("store: %w", err)
	}
	name := r.objectName(sum)
	err = r.upload(ctx, name, f, n)
	f.Close()
	if err != nil {
		return Ref{}, err
	}
	// The ETag readers will see (a multipart upload's is not always the
	// one a server reports later), for the cached copy.
	if _, etag, err := r.head(ctx, name); err == nil {
		s.cache(tmp, sum, etag)
	}
	ref := Ref{URI: r.uri(name), SHA256: sum, Bytes: n}
	rec, _ := refRecord(ref)
	if err := r.putSmall(ctx, r.keyName(key), rec); err != nil {
		return Ref{}, fmt.Errorf("store: record %s: %w", key, err)
	}
	return ref, nil
}

// cache moves the verified file tmp into the cache as the object sum,
// downloaded (or uploaded) at etag (best effort: a failure only costs a
// download).
func (s *Store) cache(tmp, sum, etag string) {
	obj := s.objectPath(sum)
	os.Remove(s.etagPath(sum))
	if os.MkdirAll(filepath.Dir(obj), 0o755) != nil || os.Chmod(tmp, 0o444) != nil || os.Rename(tmp, obj) != nil {
		return
	}
	if etag != "" {
		writeAtomic(s.etagPath(sum), []byte(etag))
	}
}

// lookupRemote reads key's record and verifies what it names.
func (s *Store) lookupRemote(key string) (Ref, bool, error) {
	ctx := context.Background()
	r := s.remote
	data, err := r.getSmall(ctx, r.keyName(key), scanLimit)
	if errors.Is(err, fs.ErrNotExist) {
		return Ref{}, false, nil
	}
	if err != nil {
		return Ref{}, false, err
	}
	ref, ok := parseRecord(data)
	if !ok {
		return Ref{}, false, nil // a damaged record is as good as none
	}
	if err := s.verifyTree(ref); err != nil {
		if errors.Is(err, ErrCorrupt) || errors.Is(err, fs.ErrNotExist) {
			if err := r.remove(ctx, r.keyName(key)); err != nil {
				return Ref{}, false, err
			}
			return Ref{}, false, nil
		}
		return Ref{}, false, err
	}
	return ref, true, nil
}

// verifyRemote returns the path of a verified local copy of an artifact,
// downloading it unless the cache holds the object as it is now.
func (s *Store) verifyRemote(ref Ref) (string, error) {
	ctx := context.Background()
	r := s.remote
	p, err := s.Path(ref)
	if err != nil {
		return "", err
	}
	name := r.objectName(ref.SHA256)
	size, etag, err := r.head(ctx, name)
	if err != nil {
		return "", err
	}
	if size != ref.Bytes {
		r.remove(ctx, name)
		return "", fmt.Errorf("store: %s (%d bytes, want %d bytes; removed): %w", r.uri(name), size, ref.Bytes, ErrCorrupt)
	}
	if cached, err := os.ReadFile(s.etagPath(ref.SHA256)); err == nil && string(cached) == etag {
		if sum, n, err := hashFile(p); err == nil && sum == ref.SHA256 && n == ref.Bytes {
			return p, nil
		}
	}
	// Download into the cache, hashing on the way.
	out, err := r.get(ctx, name)
	if err != nil {
		return "", err
	}
	defer out.Body.Close()
	dir, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), "get")
	if err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "artifact")
	f, err := os.Create(tmp)
	if err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), out.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("store: download %s: %w", r.uri(name), err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != ref.SHA256 || n != ref.Bytes {
		r.remove(ctx, name)
		return "", fmt.Errorf("store: %s (%d bytes, sha256 %s, want %d bytes; removed): %w", r.uri(name), n, got, ref.Bytes, ErrCorrupt)
	}
	s.cache(tmp, ref.SHA256, aws.ToString(out.ETag))
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("store: cache %s: %w", p, err)
	}
	return p, nil
}

func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil)), n, err
}
