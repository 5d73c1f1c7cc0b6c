package model

import (
	"fmt"
	"slices"
)

// Backward's work one block at a time, for callers that hold one block's
// weights at once (compress's fisher searches on models larger than
// memory): GradEmbed gives block 0's input, GradForward runs a block,
// GradHead takes the loss and its gradient at the last block's output, and
// GradBackward carries that gradient back through a block, giving its
// parameters' gradients. GradEmbed needs m's embeddings and GradHead its
// final norm and LM head; the block steps read neither (they build no top,
// so a factored LM head is not multiplied out per block), and m's blocks
// may be nil, each step taking the block it runs. The steps run
// Backward's own code in Backward's order, so a caller that chains them
// over one batch gets Backward's gradients bit for bit.

// GradEmbed returns the embedded rows of seqs as the backward pass has them:
// the input of block 0.
func (m *Model) GradEmbed(seqs [][]int32) (*States, error) {
	n, err := newTopNet[float32](m)
	if err != nil {
		return nil, err
	}
	if err := m.CheckTokens(seqs); err != nil {
		return nil, err
	}
	starts, _ := layout(seqs)
	return &States{X: n.embedRows(seqs, starts[len(starts)-1]), Dim: m.Config.HiddenSize, Starts: starts}, nil
}

// GradForward runs b, block l of m, on h as the backward pass does and
// returns its output.
func (m *Model) GradForward(l int, b *Block, h *States) (*States, error) {
	n, nb, err := m.blockNet(l, b, h)
	if err != nil {
		return nil, err
	}
	out, _ := n.blockForward(nb, h.X, h.Starts, n.blockRotary(nb, h.Starts))
	return &States{X: out, Dim: h.Dim, Starts: h.Starts}, nil
}

// GradHead returns the mean next-token loss of seqs given h, the last
// block's output for them (GradForward's), the number of tokens predicted
// and the gradient of the loss with respect to h.
func (m *Model) GradHead(seqs [][]int32, h *States) (loss float64, tokens int, dh []float32, err error) {
	n, err := newTopNet[float32](m)
	if err != nil {
		return 0, 0, nil, err
	}
	starts, tokens := layout(seqs)
	if !slices.Equal(starts, h.Starts) {
		return 0, 0, nil, fmt.Errorf("%w: hidden states of %d rows in %d sequences for %d sequences of %d tokens", ErrBackward, h.Rows(), h.Sequences(), len(seqs), starts[len(starts)-1])
	}
	if err := m.checkStates(h); err != nil {
		return 0, 0, nil, fmt.Errorf("%w: %v", ErrBackward, err)
	}
	if tokens == 0 {
		return 0, 0, nil, fmt.Errorf("%w: no sequence has two tokens, so there is nothing to predict", ErrBackward)
	}
	loss, dh = n.lossAt(h.X, targets(seqs, h.Rows()), tokens, true)
	return loss, tokens, dh, nil
}

// GradBackward takes dh, the gradient of the loss with respect to the
// output of b (block l of m) run on h, and overwrites it with the gradient
// with respect to h. It returns the gradients of the named parameters of
// block l (see GradientNames), which must all be block l's.
func (m *Model) GradBackward(l int, b *Block, h *States, dh []float32, names []string) (map[string]*Grad, error) {
	n, nb, err := m.blockNet(l, b, h)
	if err != nil {
		return nil, err
	}
	if len(dh) != len(h.X) {
		return nil, fmt.Errorf("%w: block %d: gradient of %d values for hidden states of %d", ErrBackward, l, len(dh), len(h.X))
	}
	for _, name := range names {
		if i, _, ok := ParseModuleName(name); !ok || i != l {
			return nil, fmt.Errorf("%w: %q is not a parameter of block %d", ErrBackward, name, l)
		}
	}
	if err := n.want(names); err != nil {
		return nil, err
	}
	rot := n.blockRotary(nb, h.Starts)
	_, s := n.blockForward(nb, h.X, h.Starts, rot)
	copy(dh, n.blockBackward(nb, s, dh, h.Starts, rot))
	grads := make(map[string]*Grad, len(names))
	for _, name := range names {
		w, bias := n.grad(name)
		grads[name] = &Grad{Weight: w, Bias: bias}
	}
	return grads, nil
}

// blockNet returns a net of m with b as its block l and no top, checking h.
func (m *Model) blockNet(l int, b *Block, h *States) (*net[float32], *netBlock[float32], error) {
	if l < 0 || l >= m.Config.NumLayers {
		return nil, nil, fmt.Errorf("%w: block %d of a model with %d", ErrBackward, l, m.Config.NumLayers)
	}
	if err := m.checkStates(h); err != nil {
		return nil, nil, fmt.Errorf("%w: block %d: %v", ErrBackward, l, err)
	}
	n, err := newBareNet[float32](m)
	if err != nil {
		return nil, nil, err
	}
	nb, err := n.newBlock(l, b)
	if err != nil {
		return nil, nil, err
	}
	n.blocks[l] = nb
	return n, nb, nil
}

// checkStates refuses hidden states whose width is not the model's or whose
// values do not fill their rows.
func (m *Model) checkStates(h *States) error {
	if h.Dim != m.Config.HiddenSize || len(h.X) != h.Rows()*h.Dim {
		return fmt.Errorf("hidden states of width %d and %d values for %d rows (want width %d)", h.Dim, len(h.X), h.Rows(), m.Config.HiddenSize)
	}
	return nil
}
