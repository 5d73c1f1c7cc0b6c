package gptq

import (
	"fmt"
	"strings"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
)

// Reader reads a GPTQ v1 checkpoint from its memory-mapped files one block
// at a time, as Load reads it whole: a caller holding one block at a time
// holds one block's weights whatever the model's depth.
type Reader struct {
	Config *model.Config
	r      *reader
}

// Open opens the GPTQ checkpoint in dir for reading with Model and Block;
// Close releases its files. A tensor outside the embeddings, final norm,
// LM head and the config's layers is an error here; one inside a layer
// that the layer does not use, when Block reads it.
func Open(dir string) (_ *Reader, err error) {
	cfg, err := model.ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	qc, err := quantizeConfig(dir, cfg)
	if err != nil {
		return nil, err
	}
	ck, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, err
	}
	r := &Reader{Config: cfg, r: &reader{ck: ck, dir: dir, bits: qc.Bits, used: map[string]bool{}}}
	for _, name := range ck.Names() {
		if l, _, ok := model.ParseModuleName(name); ok && l < cfg.NumLayers || topTensor(name) || buffer(name) {
			continue
		}
		ck.Close()
		return nil, unexpected(dir, name)
	}
	return r, nil
}

// Close unmaps the checkpoint's files; the tensors read stay valid.
func (r *Reader) Close() error { return r.r.ck.Close() }

// Model returns the model's embeddings, final norm and LM head, with no
// blocks (Block reads them).
func (r *Reader) Model(k kernels.Backend) (*model.Model, error) {
	cfg, rd := r.Config, r.r
	h, vocab := cfg.HiddenSize, cfg.VocabSize
	m := &model.Model{Config: cfg, Backend: k}
	var err error
	if m.Embed, err = rd.get("model.embed_tokens.weight", vocab, h); err != nil {
		return nil, err
	}
	if m.Norm, err = rd.get("model.norm.weight", h); err != nil {
		return nil, err
	}
	if cfg.TieWordEmbeddings {
		m.LMHead = model.NewDense(vocab, h, m.Embed, nil)
		rd.used["lm_head.weight"] = true
	} else {
		head, err := rd.get("lm_head.weight", vocab, h)
		if err != nil {
			return nil, err
		}
		m.LMHead = model.NewDense(vocab, h, head, nil)
	}
	rd.release(topTensor)
	return m, nil
}

// Block reads block l and checks that it uses every tensor stored under
// its name.
func (r *Reader) Block(l int) (*model.Block, error) {
	if l < 0 || l >= r.Config.NumLayers {
		return nil, fmt.Errorf("load gptq: %s: block %d of a model with %d", r.r.dir, l, r.Config.NumLayers)
	}
	b, err := r.r.block(r.Config, l)
	if err != nil {
		return nil, err
	}
	p := model.LayerPrefix(l)
	for _, name := range r.r.ck.Names() {
		if strings.HasPrefix(name, p) && !r.r.used[name] && !buffer(name) {
			return nil, unexpected(r.r.dir, name)
		}
	}
	r.r.release(func(name string) bool { return strings.HasPrefix(name, p) })
	return b, nil
}

// release lets the mapped pages of the used tensors that in selects go:
// they are converted and not needed again.
func (rd *reader) release(in func(name string) bool) {
	for name := range rd.used {
		if in(name) {
			rd.ck.Release(name)
		}
	}
}

func topTensor(name string) bool {
	return name == "model.embed_tokens.weight" || name == "model.norm.weight" || name == "lm_head.weight"
}

// buffer reports the tensors checkpoints may carry that are recomputed
// from the config.
func buffer(name string) bool { return strings.HasSuffix(name, ".rotary_emb.inv_freq") }

func unexpected(dir, name string) error {
	return fmt.Errorf("load gptq: %s: unexpected tensor %q", dir, name)
}
