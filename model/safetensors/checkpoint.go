package safetensors

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// The file names of a Hugging Face checkpoint directory.
const (
	IndexName  = "model.safetensors.index.json" // tensor → shard map of a sharded checkpoint
	SingleName = "model.safetensors"            // the one file of an unsharded checkpoint
)

// Checkpoint is the set of safetensors files of a checkpoint directory, seen as
// one collection of tensors. Its methods may be called concurrently, except
// Close.
type Checkpoint struct {
	dir    string
	files  []*File // sorted by path
	byName map[string]*File
	names  []string // sorted
}

// OpenDir opens the checkpoint in dir. With model.safetensors.index.json it
// opens every shard the index names and checks that each tensor of the index is
// in its shard and each tensor of a shard is in the index for that shard;
// otherwise it opens model.safetensors. A tensor may be in only one file.
func OpenDir(dir string) (*Checkpoint, error) {
	indexPath := filepath.Join(dir, IndexName)
	_, err := os.Stat(indexPath)
	switch {
	case err == nil:
		return openSharded(dir, indexPath)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	single := filepath.Join(dir, SingleName)
	if _, err := os.Stat(single); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: neither %s nor %s found", dir, IndexName, SingleName)
	}
	f, err := Open(single)
	if err != nil {
		return nil, err
	}
	c := &Checkpoint{dir: dir, byName: make(map[string]*File)}
	if err := c.add(f); err != nil {
		c.Close()
		return nil, err
	}
	c.names = f.Names()
	return c, nil
}

func openSharded(dir, indexPath string) (_ *Checkpoint, err error) {
	weightMap, err := readIndex(indexPath)
	if err != nil {
		return nil, err
	}
	shards := make([]string, 0, 4)
	for _, shard := range weightMap {
		if !slices.Contains(shards, shard) {
			shards = append(shards, shard)
		}
	}
	slices.Sort(shards)

	c := &Checkpoint{dir: dir, byName: make(map[string]*File)}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	for _, shard := range shards {
		f, err := Open(filepath.Join(dir, shard))
		if err != nil {
			return nil, err
		}
		if err := c.add(f); err != nil {
			return nil, err
		}
		for _, name := range f.hdr.names {
			if want, ok := weightMap[name]; !ok {
				return nil, &FormatError{Path: f.path, Tensor: name, Err: fmt.Errorf("not listed in %s", IndexName)}
			} else if want != shard {
				return nil, &FormatError{Path: f.path, Tensor: name, Err: fmt.Errorf("%s puts it in %s", IndexName, want)}
			}
		}
	}
	for name, shard := range weightMap {
		if _, ok := c.byName[name]; !ok {
			return nil, &FormatError{Path: indexPath, Tensor: name, Err: fmt.Errorf("not in its shard %s", shard)}
		}
	}
	for name := range c.byName {
		c.names = append(c.names, name)
	}
	slices.Sort(c.names)
	return c, nil
}

// add adds f to the checkpoint, rejecting a tensor already in another file.
func (c *Checkpoint) add(f *File) error {
	c.files = append(c.files, f)
	for _, name := range f.hdr.names {
		if other, ok := c.byName[name]; ok {
			return &FormatError{Path: f.path, Tensor: name, Err: fmt.Errorf("also in %s", other.path)}
		}
		c.byName[name] = f
	}
	return nil
}

// readIndex reads the weight_map of a model.safetensors.index.json. Other
// top-level keys (metadata.total_size) are not checked.
func readIndex(path string) (map[string]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Size() > MaxHeaderSize {
		return nil, &FormatError{Path: path, Err: fmt.Errorf("%d bytes exceeds the %d-byte limit", st.Size(), MaxHeaderSize)}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var weightMap map[string]string
	err = decodeObject(data, func(key string, val json.RawMessage) error {
		if key != "weight_map" {
			return nil
		}
		m, err := decodeStringMap(val)
		if err != nil {
			return fmt.Errorf("weight_map: %v", err)
		}
		weightMap = m
		return nil
	})
	if err != nil {
		return nil, &FormatError{Path: path, Err: err}
	}
	if len(weightMap) == 0 {
		return nil, &FormatError{Path: path, Err: errors.New("no weight_map or an empty one")}
	}
	for name, shard := range weightMap {
		if name == "" {
			return nil, &FormatError{Path: path, Err: errors.New("weight_map has an empty tensor name")}
		}
		if !filepath.IsLocal(shard) || filepath.Base(shard) != shard {
			return nil, &FormatError{Path: path, Tensor: name, Err: fmt.Errorf("shard %q is not a file name in the checkpoint directory", shard)}
		}
	}
	return weightMap, nil
}

// Files returns the paths of the checkpoint's files, sorted.
func (c *Checkpoint) Files() []string {
	paths := make([]string, len(c.files))
	for i, f := range c.files {
		paths[i] = f.path
	}
	return paths
}

// Names returns the names of all tensors, sorted.
func (c *Checkpoint) Names() []string { return slices.Clone(c.names) }

// Info returns the description of tensor name, and whether it exists. Its
// Offset is within the file that holds it (see FileOf).
func (c *Checkpoint) Info(name string) (TensorInfo, bool) {
	f, ok := c.byName[name]
	if !ok {
		return TensorInfo{}, false
	}
	return f.Info(name)
}

// FileOf returns the path of the file holding tensor name, and whether it exists.
func (c *Checkpoint) FileOf(name string) (string, bool) {
	f, ok := c.byName[name]
	if !ok {
		return "", false
	}
	return f.path, true
}

// Bytes returns the raw bytes of tensor name, as File.Bytes does.
func (c *Checkpoint) Bytes(name string) ([]byte, error) {
	f, ok := c.byName[name]
	if !ok {
		return nil, fmt.Errorf("%s: tensor %q: %w", c.dir, name, ErrNotFound)
	}
	return f.Bytes(name)
}

// Float32 returns the values of tensor name as a new []float32, as
// File.Float32 does.
func (c *Checkpoint) Float32(name string) ([]float32, error) {
	f, ok := c.byName[name]
	if !ok {
		return nil, fmt.Errorf("%s: tensor %q: %w", c.dir, name, ErrNotFound)
	}
	return f.Float32(name)
}

// Release lets the mapped pages of tensor name go, as File.Release does.
func (c *Checkpoint) Release(name string) {
	if f, ok := c.byName[name]; ok {
		f.Release(name)
	}
}

// Close closes every file of the checkpoint.
func (c *Checkpoint) Close() error {
	var errs []error
	for _, f := range c.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}
