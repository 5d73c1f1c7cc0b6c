package store

import (
	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/model"
)

// The store holds bytes; these store and read the formats the activities
// keep in it (calib's streams, model's block diffs) through each backend.

func putStreams(s *Store, key string, st *calib.Streams) (Ref, error) {
	return s.Create(key, func(tmp string) error { return calib.WriteStreams(tmp, st) })
}

func getStreams(s *Store, r Ref) (*calib.Streams, error) {
	p, err := s.Verify(r)
	if err != nil {
		return nil, err
	}
	return calib.ReadStreams(p)
}

func putBlock(s *Store, key string, base, comp *model.Block) (Ref, error) {
	return s.Create(key, func(tmp string) error { return model.WriteBlockDiff(tmp, base, comp) })
}

func getBlock(s *Store, r Ref, base *model.Block) (*model.Block, error) {
	p, err := s.Verify(r)
	if err != nil {
		return nil, err
	}
	return model.ReadBlockDiff(p, base)
}
