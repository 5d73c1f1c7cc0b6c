package eval

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/model"
)

// Source is a model read one block at a time.
type Source struct {
	// Top holds the configuration, embeddings, final norm, LM head and
	// backend; its Blocks are nil.
	Top *model.Model
	// Block returns block l; Compare drops it before reading the next.
	Block func(l int) (*model.Block, error)
}

// Reader reads the blocks of r (model.Open) on demand, in float32.
func Reader(r *model.Reader, top *model.Model) Source {
	return Source{Top: top, Block: r.Block}
}

// Options tune Compare.
type Options struct {
	// Dump, if not nil, receives the model's logits as Evaluate writes them.
	Dump io.Writer
	// SpillDir holds the hidden states in a temporary file when both
	// streams together exceed SpillBytes (0: DefaultSpillBytes); "" is the
	// system's temporary directory.
	SpillDir   string
	SpillBytes int64
	// ChunkRows bounds the rows that go through a block at once (whole
	// sequences; 0: DefaultChunkRows), which bounds a block's activations.
	ChunkRows int
	// OnBlock, when set, is called after each block of both models; an
	// error it returns stops the evaluation and is returned as is.
	OnBlock func(l int) error
}

const (
	DefaultSpillBytes = 256 << 20
	DefaultChunkRows  = 1024
)

// Compare scores m against base on the first n sequences of ds (every
// sequence when n ≤ 0), as Evaluate(m, base, ...) does, but holds one block
// of one model at a time: the hidden states of every sequence go through
// block l of base, then block l of m, before block l+1 is read. It returns
// m's report (with KL and top-1 agreement against base) and base's own
// report (what Evaluate(base, nil, ...) returns).
func Compare(m, base Source, ds *calib.Dataset, n int, o Options) (rep, baseRep Report, err error) {
	mc, bc := m.Top.Config, base.Top.Config
	if mc.VocabSize != bc.VocabSize {
		return rep, baseRep, fmt.Errorf("baseline vocabulary %d differs from the model's %d", bc.VocabSize, mc.VocabSize)
	}
	if mc.NumLayers != bc.NumLayers || mc.HiddenSize != bc.HiddenSize {
		return rep, baseRep, fmt.Errorf("baseline has %d layers of hidden size %d, the model %d of %d",
			bc.NumLayers, bc.HiddenSize, mc.NumLayers, mc.HiddenSize)
	}
	seqs, err := ds.Read(n)
	if err != nil {
		return rep, baseRep, err
	}
	if len(seqs) == 0 {
		return rep, baseRep, fmt.Errorf("%s: no sequences to evaluate", ds.Path())
	}
	for i, s := range seqs {
		if err := m.Top.CheckTokens([][]int32{s}); err != nil {
			return rep, baseRep, fmt.Errorf("%s row %d: %w", ds.Path(), i, err)
		}
	}
	if o.ChunkRows <= 0 {
		o.ChunkRows = DefaultChunkRows
	}
	if o.SpillBytes <= 0 {
		o.SpillBytes = DefaultSpillBytes
	}
	chunks := chunkSequences(seqs, o.ChunkRows)
	rows := chunks[len(chunks)-1].end
	spill := 2*int64(rows)*int64(mc.HiddenSize)*4 > o.SpillBytes
	var hm, hb *stream
	if hm, err = newStream(rows, mc.HiddenSize, spill, o.SpillDir); err != nil {
		return rep, baseRep, err
	}
	defer hm.close()
	if hb, err = newStream(rows, mc.HiddenSize, spill, o.SpillDir); err != nil {
		return rep, baseRep, err
	}
	defer hb.close()
	for _, c := range chunks {
		if err := embed(m.Top, hm, seqs, c); err != nil {
			return rep, baseRep, err
		}
		if err := embed(base.Top, hb, seqs, c); err != nil {
			return rep, baseRep, err
		}
	}
	var kv, baseKV int
	for l := range mc.NumLayers {
		if baseKV, err = runBlock(base, l, hb, chunks, baseKV); err != nil {
			return rep, baseRep, fmt.Errorf("baseline: %w", err)
		}
		if kv, err = runBlock(m, l, hm, chunks, kv); err != nil {
			return rep, baseRep, err
		}
		if o.OnBlock != nil {
			if err := o.OnBlock(l); err != nil {
				return rep, baseRep, err
			}
		}
	}
	acc, baseAcc := NewAccumulator(mc.VocabSize), NewAccumulator(mc.VocabSize)
	for _, c := range chunks {
		for s := c.first; s < c.last; s++ {
			if err := score(m.Top, base.Top, hm, hb, c, s, seqs[s], acc, baseAcc, o.Dump); err != nil {
				return rep, baseRep, fmt.Errorf("%s row %d: %w", ds.Path(), s, err)
			}
		}
	}
	rep, baseRep = acc.Report(true), baseAcc.Report(false)
	rep.KVBytes, baseRep.KVBytes = kv, baseKV
	return rep, baseRep, nil
}

// chunk is sequences [first, last) at rows [start, end) of a stream;
// starts are their row offsets from start.
type chunk struct {
	first, last, start, end int
	starts                  []int
}

// chunkSequences groups whole sequences into chunks of at most maxRows rows
// (a longer sequence is a chunk by itself).
func chunkSequences(seqs [][]int32, maxRows int) []chunk {
	var out []chunk
	row := 0
	for s := 0; s < len(seqs); {
		c := chunk{first: s, start: row, starts: []int{0}}
		for s < len(seqs) && (s == c.first || row+len(seqs[s])-c.start <= maxRows) {
			row += len(seqs[s])
			c.starts = append(c.starts, row-c.start)
			s++
		}
		c.last, c.end = s, row
		out = append(out, c)
	}
	return out
}

// embed writes the embeddings of chunk c's sequences into h.
func embed(top *model.Model, h *stream, seqs [][]int32, c chunk) error {
	x, err := top.EmbedTokens(seqs[c.first:c.last])
	if err != nil {
		return err
	}
	return h.write(c.start, x.X)
}

// runBlock reads block l of src, runs every chunk of h through it in place
// and adds the block's KV cache bytes per token to kv.
func runBlock(src Source, l int, h *stream, chunks []chunk, kv int) (int, error) {
	b, err := src.Block(l)
	if err != nil {
		return kv, err
	}
	for _, c := range chunks {
		x, err := h.read(c.start, c.end)
		if err != nil {
			return kv, err
		}
		out := src.Top.RunBlock(b, &model.States{X: x, Dim: h.dim, Starts: c.starts}, nil)
		if err := h.write(c.start, out.X); err != nil {
			return kv, err
		}
	}
	one := model.Model{Config: src.Top.Config, Blocks: []*model.Block{b}}
	return kv + one.KVBytesPerToken(), nil
}

// score applies both final norms and LM heads to sequence s of chunk c and
// adds it to acc (against the baseline) and baseAcc (the baseline alone).
func score(top, baseTop *model.Model, h, hb *stream, c chunk, s int, ids []int32, acc, baseAcc *Accumulator, dump io.Writer) error {
	r0, r1 := c.start+c.starts[s-c.first], c.start+c.starts[s-c.first+1]
	logits, err := logitsOf(top, h, r0, r1)
	if err != nil {
		return err
	}
	bl, err := logitsOf(baseTop, hb, r0, r1)
	if err != nil {
		return err
	}
	if err := acc.Add(ids, logits, bl); err != nil {
		return err
	}
	if err := baseAcc.Add(ids, bl, nil); err != nil {
		return err
	}
	if dump != nil {
		return dumpLogits(dump, logits)
	}
	return nil
}

func logitsOf(top *model.Model, h *stream, r0, r1 int) ([]float32, error) {
	x, err := h.read(r0, r1)
	if err != nil {
		return nil, err
	}
	return top.Logits(&model.States{X: x, Dim: h.dim, Starts: []int{0, r1 - r0}}), nil
}

// dumpLogits writes logits as float32 little-endian.
func dumpLogits(w io.Writer, logits []float32) error {
	buf := make([]byte, 4*len(logits))
	for i, v := range logits {
		binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
	}
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write logits: %w", err)
	}
	return nil
}

// stream holds rows×dim hidden states in memory or, spilled, in a
// temporary file read and written one chunk at a time, so that memory
// holds one chunk whatever the number of sequences.
type stream struct {
	dim  int
	mem  []float32
	file *os.File
}

func newStream(rows, dim int, spill bool, dir string) (*stream, error) {
	if !spill {
		return &stream{dim: dim, mem: make([]float32, rows*dim)}, nil
	}
	f, err := os.CreateTemp(dir, "eval-states-*.f32")
	if err != nil {
		return nil, fmt.Errorf("spill evaluation hidden states: %w", err)
	}
	return &stream{dim: dim, file: f}, nil
}

// read returns rows [r0, r1), which the caller must not modify (in memory
// they are the stream's own).
func (s *stream) read(r0, r1 int) ([]float32, error) {
	if s.file == nil {
		return s.mem[r0*s.dim : r1*s.dim], nil
	}
	x := make([]float32, (r1-r0)*s.dim)
	buf := make([]byte, 4*len(x))
	if _, err := s.file.ReadAt(buf, int64(r0*s.dim)*4); err != nil {
		return nil, fmt.Errorf("read spilled hidden states %s: %w", s.file.Name(), err)
	}
	for i := range x {
		x[i] = math.Float32frombits(binary.LittleEndian.Uint32(buf[4*i:]))
	}
	return x, nil
}

// write stores x as the rows from r0 on.
func (s *stream) write(r0 int, x []float32) error {
	if s.file == nil {
		copy(s.mem[r0*s.dim:], x)
		return nil
	}
	buf := make([]byte, 4*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
	}
	if _, err := s.file.WriteAt(buf, int64(r0*s.dim)*4); err != nil {
		return fmt.Errorf("spill hidden states to %s: %w", s.file.Name(), err)
	}
	return nil
}

// close removes the spill file, if any.
func (s *stream) close() {
	if s.file != nil {
		s.file.Close()
		os.Remove(s.file.Name())
	}
}
