package activities

import (
	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/store"
)

// Layer reports what a low-rank stage did to one targeted matrix: the
// activities' results carry it, so the workflows need not import compress.
type Layer = compress.Layer

// The store holds bytes; the formats of what the activities keep in it are
// the packages': calib's streams files and model's block-diff files (the
// linears one stage changed in one block).

// putStreams stores calibration streams under key.
func putStreams(s *store.Store, key string, st *calib.Streams) (store.Ref, error) {
	return s.Create(key, func(tmp string) error { return calib.WriteStreams(tmp, st) })
}

// getStreams reads and verifies a streams artifact.
func getStreams(s *store.Store, r store.Ref) (*calib.Streams, error) {
	p, err := s.Verify(r)
	if err != nil {
		return nil, err
	}
	return calib.ReadStreams(p)
}

// putLayers stores the linears of comp that are not those of base.
func putLayers(s *store.Store, key string, base, comp *model.Block) (store.Ref, error) {
	return s.Create(key, func(tmp string) error { return model.WriteBlockDiff(tmp, base, comp) })
}

// getLayers reads and verifies a block-diff artifact and returns a copy of
// base with the stored linears in place.
func getLayers(s *store.Store, r store.Ref, base *model.Block) (*model.Block, error) {
	p, err := s.Verify(r)
	if err != nil {
		return nil, err
	}
	return model.ReadBlockDiff(p, base)
}
