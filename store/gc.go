package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// GCReport says what Collect removed (or, in a dry run, would remove) and
// what it kept.
type GCReport struct {
	Objects, Keys int   // objects and key records removed
	Bytes         int64 // bytes of the objects removed
	KeptObjects   int
	KeptBytes     int64
}

var sumPattern = regexp.MustCompile(`[0-9a-f]{64}`)

// Collect removes the objects that are neither live nor reachable from a
// live object (a live JSON object naming another's sha256 keeps it), nor
// modified at or after keepSince (the outputs of work in flight), and the key
// records that point at a removed or missing object. A key's JSON object that
// names a kept object (a block's record of its live factors and streams) is
// kept, with all it names, and so is one that names none (a small report):
// a rerun of a kept job finds its work done. live holds sha256 sums; any
// 64-digit hex string found in a kept object counts as a reference. With
// dryRun nothing is removed.
func (s *Store) Collect(live map[string]bool, keepSince time.Time, dryRun bool) (GCReport, error) {
	var rep GCReport
	type object struct {
		size int64
		mod  time.Time
	}
	objects := map[string]object{}
	err := filepath.WalkDir(filepath.Join(s.root, "objects"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if name := d.Name(); len(name) == 64 && strings.Trim(name, "0123456789abcdef") == "" {
			objects[name] = object{info.Size(), info.ModTime()}
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("store: gc: %w", err)
	}
	// Everything reachable from the live set, and everything recent.
	keep := map[string]bool{}
	var queue []string
	mark := func(sum string) {
		if _, ok := objects[sum]; ok && !keep[sum] {
			keep[sum] = true
			queue = append(queue, sum)
		}
	}
	for sum := range live {
		mark(sum)
	}
	for sum, o := range objects {
		if !keepSince.IsZero() && !o.mod.Before(keepSince) {
			mark(sum)
		}
	}
	// names returns the sums a small JSON object names (nil for others).
	names := func(sum string) ([]string, bool, error) {
		if objects[sum].size > scanLimit {
			return nil, false, nil
		}
		data, err := os.ReadFile(s.objectPath(sum))
		if err != nil {
			return nil, false, err
		}
		var sums []string
		for _, m := range sumPattern.FindAll(data, -1) {
			sums = append(sums, string(m))
		}
		return sums, json.Valid(data), nil
	}
	expand := func() error {
		for len(queue) > 0 {
			sum := queue[0]
			queue = queue[1:]
			named, _, err := names(sum)
			if err != nil {
				return err
			}
			for _, m := range named {
				mark(m)
			}
		}
		return nil
	}
	if err := expand(); err != nil {
		return rep, fmt.Errorf("store: gc: %w", err)
	}
	// Records of kept artifacts, and reports.
	records, _ := filepath.Glob(filepath.Join(s.root, "keys", "*", "*.json"))
	for _, p := range records {
		var ref Ref
		if data, err := os.ReadFile(p); err != nil || json.Unmarshal(data, &ref) != nil || keep[ref.SHA256] {
			continue
		}
		if _, ok := objects[ref.SHA256]; !ok {
			continue
		}
		named, isJSON, err := names(ref.SHA256)
		if err != nil {
			return rep, fmt.Errorf("store: gc: %w", err)
		}
		if isJSON && (len(named) == 0 || slices.ContainsFunc(named, func(m string) bool { return keep[m] })) {
			mark(ref.SHA256)
		}
	}
	if err := expand(); err != nil {
		return rep, fmt.Errorf("store: gc: %w", err)
	}
	// Key records first, so that no record points at a removed object.
	err = filepath.WalkDir(filepath.Join(s.root, "keys"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(d.Name(), ".json") || strings.HasPrefix(d.Name(), ".") {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		var ref Ref
		if json.Unmarshal(data, &ref) == nil && keep[ref.SHA256] {
			return nil
		}
		if info, err := d.Info(); err == nil && !keepSince.IsZero() && !info.ModTime().Before(keepSince) {
			return nil // recorded by work in flight
		}
		rep.Keys++
		if dryRun {
			return nil
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("store: gc: %w", err)
	}
	for sum, o := range objects {
		if keep[sum] {
			rep.KeptObjects++
			rep.KeptBytes += o.size
			continue
		}
		rep.Objects++
		rep.Bytes += o.size
		if dryRun {
			continue
		}
		if err := os.Remove(s.objectPath(sum)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return rep, fmt.Errorf("store: gc: %w", err)
		}
	}
	return rep, nil
}
