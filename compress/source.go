package compress

import (
	"fmt"

	"github.com/rankzip/rankzip/model"
)

// Source is a model read one block at a time, so that a pass over its
// blocks holds one block's weights whatever the model's depth: Top has the
// configuration, backend, embeddings, final norm and LM head (its Blocks are
// not used), and Block returns block l.
type Source struct {
	Top   *model.Model
	Block func(l int) (*model.Block, error)
}

// Whole is the source of a model held in memory.
func Whole(m *model.Model) Source {
	return Source{Top: m, Block: func(l int) (*model.Block, error) {
		if l < 0 || l >= len(m.Blocks) {
			return nil, fmt.Errorf("block %d of a model with %d", l, len(m.Blocks))
		}
		return m.Blocks[l], nil
	}}
}

// Layers is the model's number of blocks.
func (s Source) Layers() int { return s.Top.Config.NumLayers }

// ReadAll reads every block into one model, which then holds them all (the
// sensitivity and local searches, a whole export).
func (s Source) ReadAll() (*model.Model, error) {
	m := *s.Top
	m.Blocks = make([]*model.Block, s.Layers())
	for l := range m.Blocks {
		var err error
		if m.Blocks[l], err = s.Block(l); err != nil {
			return nil, err
		}
	}
	return &m, nil
}
