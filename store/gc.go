package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
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
	if s.remote != nil && !keepSince.IsZero() {
		// S3 dates objects by its own clock, which signed requests keep
		// within 15 minutes of this one.
		keepSince = keepSince.Add(-maxClockSkew)
	}
	objects, err := s.gcObjects()
	if err != nil {
		return rep, fmt.Errorf("store: gc: %w", err)
	}
	m := &gcMarker{s: s, objects: objects, keep: map[string]bool{}, read: map[string]gcNames{}}
	if err := m.markReachable(live, keepSince); err != nil {
		return rep, fmt.Errorf("store: gc: %w", err)
	}
	records, err := s.gcRecords()
	if err != nil {
		return rep, fmt.Errorf("store: gc: %w", err)
	}
	if err := m.markRecorded(records); err != nil {
		return rep, fmt.Errorf("store: gc: %w", err)
	}
	if err := s.removeUnkept(m.keep, objects, records, keepSince, dryRun, &rep); err != nil {
		return rep, fmt.Errorf("store: gc: %w", err)
	}
	return rep, nil
}

// gcMarker finds the objects Collect keeps.
type gcMarker struct {
	s       *Store
	objects map[string]gcObject
	keep    map[string]bool
	queue   []string           // kept objects whose references are not yet marked
	read    map[string]gcNames // what names has read: a kept record's object is not read again by expand
}

// gcNames is what a small object names and whether it is JSON.
type gcNames struct {
	sums   []string
	isJSON bool
}

// markReachable keeps everything reachable from the live set, and
// everything recent.
func (m *gcMarker) markReachable(live map[string]bool, keepSince time.Time) error {
	for sum := range live {
		m.mark(sum)
	}
	for sum, o := range m.objects {
		if !keepSince.IsZero() && !o.mod.Before(keepSince) {
			m.mark(sum)
		}
	}
	return m.expand()
}

// markRecorded keeps the objects of key records that are JSON naming a
// kept object (a block's record) or naming none (a report), with all they
// reach.
func (m *gcMarker) markRecorded(records []gcRecord) error {
	for _, r := range records {
		var ref Ref
		if json.Unmarshal(r.data, &ref) != nil || m.keep[ref.SHA256] {
			continue
		}
		if _, ok := m.objects[ref.SHA256]; !ok {
			continue
		}
		named, isJSON, err := m.names(ref.SHA256)
		if err != nil {
			return err
		}
		if isJSON && (len(named) == 0 || slices.ContainsFunc(named, func(sum string) bool { return m.keep[sum] })) {
			m.mark(ref.SHA256)
		}
	}
	return m.expand()
}

// mark keeps an existing object and queues it for expand.
func (m *gcMarker) mark(sum string) {
	if _, ok := m.objects[sum]; ok && !m.keep[sum] {
		m.keep[sum] = true
		m.queue = append(m.queue, sum)
	}
}

// expand marks what the queued objects name, until nothing new is kept.
func (m *gcMarker) expand() error {
	for len(m.queue) > 0 {
		sum := m.queue[0]
		m.queue = m.queue[1:]
		named, _, err := m.names(sum)
		if err != nil {
			return err
		}
		for _, n := range named {
			m.mark(n)
		}
	}
	return nil
}

// names returns the sums a small JSON object names (nil for others) and
// whether it is JSON, reading each object once.
func (m *gcMarker) names(sum string) ([]string, bool, error) {
	if m.objects[sum].size > scanLimit {
		return nil, false, nil
	}
	if r, ok := m.read[sum]; ok {
		return r.sums, r.isJSON, nil
	}
	data, err := m.s.gcRead(sum)
	if err != nil {
		return nil, false, err
	}
	var sums []string
	for _, match := range sumPattern.FindAll(data, -1) {
		sums = append(sums, string(match))
	}
	r := gcNames{sums, json.Valid(data)}
	m.read[sum] = r
	return r.sums, r.isJSON, nil
}

// removeUnkept removes (or with dryRun counts) the records and objects not
// kept: key records first, so that no record points at a removed object.
func (s *Store) removeUnkept(keep map[string]bool, objects map[string]gcObject, records []gcRecord, keepSince time.Time, dryRun bool, rep *GCReport) error {
	for _, r := range records {
		var ref Ref
		if json.Unmarshal(r.data, &ref) == nil && keep[ref.SHA256] {
			continue
		}
		if !keepSince.IsZero() && !r.mod.Before(keepSince) {
			continue // recorded by work in flight
		}
		rep.Keys++
		if dryRun {
			continue
		}
		if err := s.gcRemoveRecord(r.name); err != nil {
			return err
		}
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
		if err := s.gcRemoveObject(sum); err != nil {
			return err
		}
	}
	return nil
}

// maxClockSkew is the most an S3 server's clock may differ from ours: SigV4
// refuses requests signed further off.
const maxClockSkew = 15 * time.Minute

type gcObject struct {
	size int64
	mod  time.Time
}

// gcRecord is a key record: its file (or S3 object name), content and
// modification time.
type gcRecord struct {
	name string
	data []byte
	mod  time.Time
}

func isSum(name string) bool {
	return len(name) == 64 && strings.Trim(name, "0123456789abcdef") == ""
}

// gcObjects lists the store's objects.
func (s *Store) gcObjects() (map[string]gcObject, error) {
	objects := map[string]gcObject{}
	if s.remote != nil {
		err := s.remote.list(context.Background(), "objects", func(name string, size int64, mod time.Time) error {
			if sum := path.Base(name); isSum(sum) && name == "objects/"+sum[:2]+"/"+sum {
				objects[sum] = gcObject{size, mod}
			}
			return nil
		})
		return objects, err
	}
	err := filepath.WalkDir(filepath.Join(s.root, "objects"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if name := d.Name(); isSum(name) {
			objects[name] = gcObject{info.Size(), info.ModTime()}
		}
		return nil
	})
	return objects, err
}

// gcRead reads an object (unverified: only for the sums it names).
func (s *Store) gcRead(sum string) ([]byte, error) {
	if s.remote != nil {
		return s.remote.getSmall(context.Background(), s.remote.objectName(sum), scanLimit)
	}
	return os.ReadFile(s.objectPath(sum))
}

// gcRecords reads every key record.
func (s *Store) gcRecords() ([]gcRecord, error) {
	var records []gcRecord
	if s.remote != nil {
		ctx := context.Background()
		err := s.remote.list(ctx, "keys", func(name string, _ int64, mod time.Time) error {
			if !strings.HasSuffix(name, ".json") {
				return nil
			}
			data, err := s.remote.getSmall(ctx, s.remote.prefix+name, scanLimit)
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			records = append(records, gcRecord{s.remote.prefix + name, data, mod})
			return err
		})
		return records, err
	}
	err := filepath.WalkDir(filepath.Join(s.root, "keys"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(d.Name(), ".json") || strings.HasPrefix(d.Name(), ".") {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		records = append(records, gcRecord{p, data, info.ModTime()})
		return nil
	})
	return records, err
}

func (s *Store) gcRemoveRecord(name string) error {
	if s.remote != nil {
		return s.remote.remove(context.Background(), name)
	}
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// gcRemoveObject removes an object (and a remote store's cached copy).
func (s *Store) gcRemoveObject(sum string) error {
	if s.remote != nil {
		if err := s.remote.remove(context.Background(), s.remote.objectName(sum)); err != nil {
			return err
		}
		os.Remove(s.etagPath(sum))
	}
	if err := os.Remove(s.objectPath(sum)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
