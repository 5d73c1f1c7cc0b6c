package model

import "github.com/rankzip/rankzip/kernels"

// Adapted is a linear layer with a LoRA correction added to its output,
// y = Base x + B (A x) (EoRA's adapters; exported by gptq as PEFT LoRA).
type Adapted struct {
	Base Linear
	A, B *Dense
}

func (l *Adapted) In() int  { return l.Base.In() }
func (l *Adapted) Out() int { return l.Base.Out() }
func (l *Adapted) NumParams() int64 {
	return l.Base.NumParams() + l.A.NumParams() + l.B.NumParams()
}

func (l *Adapted) Apply(k kernels.Backend, y, x []float32, rows int) {
	l.Base.Apply(k, y, x, rows)
	r := l.A.Out()
	t := make([]float32, rows*r)
	l.A.Apply(k, t, x, rows)
	k.Sgemm(false, true, rows, l.Out(), r, 1, t, r, l.B.Weight, r, 1, y, l.Out())
}
