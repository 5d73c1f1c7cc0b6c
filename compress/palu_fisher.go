package compress

import (
	"context"
	"math"
	"slices"

	"github.com/rankzip/rankzip/model"
)

// fisherImportance returns the Fisher importance of every group of every
// k_proj and v_proj (names, in order): the squared gradients of the
// calibration loss with respect to the group's rows of the weight, summed
// over the elements and over the calibration batches: the unit's diagonal
// empirical Fisher mass. (Palu's code averages, over the unit, the root of
// each element's mean squared gradient instead; both rank units by the same
// gradients.) The gradients are those of the model src, taken one block at
// a time (gradientPass); dir holds the blocks' inputs meanwhile.
func fisherImportance(ctx context.Context, src Source, seqs [][]int32, batch int, dir string, names []string, groups int) ([][]float64, error) {
	index := make(map[string]int, len(names))
	imp := make([][]float64, len(names))
	for i, name := range names {
		index[name] = i
		imp[i] = make([]float64, groups)
	}
	err := gradientPass(ctx, src, seqs, batch, paluModules, dir, "fisher rank search", func(_ int, g map[string]*model.Grad) {
		for name, gr := range g {
			w, acc := gr.Weight, imp[index[name]]
			per := len(w) / groups // a group's rows are contiguous in the out×in layout
			for j := range groups {
				var s float64
				for _, x := range w[j*per : (j+1)*per] {
					s += float64(x) * float64(x)
				}
				acc[j] += s
			}
		}
	}, nil)
	if err != nil {
		return nil, err
	}
	return imp, nil
}

// fisherRanks allocates the uniform search's total rank over the groups in
// proportion to their Fisher importance (see allocateByImportance). With
// quantized latents the per-matrix scales make the bytes depend on how the
// rank is spread, so ranks are then taken back, least important per rank first,
// until the cache is no larger than uniform's, and given back where they
// still fit.
func fisherRanks(ctx context.Context, src Source, seqs [][]int32, o PaluOptions, names []string, groups, per int) (map[string][]int, error) {
	m := src.Top
	imp, err := fisherImportance(ctx, src, seqs, o.Batch, "", names, groups)
	if err != nil {
		return nil, err
	}
	groupRows := o.GroupHeads * m.Config.HeadDim
	var flatImp []float64
	for _, g := range imp {
		flatImp = append(flatImp, g...)
	}
	flat := allocateByImportance(flatImp, groupRows, per*len(flatImp))
	if o.LatentBits > 0 {
		budget := len(names) * latentBytes(per*groups, o.LatentBits, o.LatentGroupSize)
		bytes := func() int {
			n := 0
			for i := range names {
				lat := 0
				for _, r := range flat[i*groups : (i+1)*groups] {
					lat += r
				}
				n += latentBytes(lat, o.LatentBits, o.LatentGroupSize)
			}
			return n
		}
		for bytes() > budget {
			worst := -1
			for u, r := range flat {
				if r > 1 && (worst < 0 || flatImp[u]/float64(r) < flatImp[worst]/float64(flat[worst])) {
					worst = u
				}
			}
			if worst < 0 {
				break // every group at rank 1: nothing left to take
			}
			flat[worst]--
		}
		// Taking back can free part of a scale group: refill it, most
		// important per rank first, while the bytes stay within budget.
		for {
			best := -1
			for u, r := range flat {
				if r >= groupRows || (best >= 0 && flatImp[u]/float64(r) <= flatImp[best]/float64(flat[best])) {
					continue
				}
				flat[u]++
				if bytes() <= budget {
					best = u
				}
				flat[u]--
			}
			if best < 0 {
				break
			}
			flat[best]++
		}
	}
	ranks := make(map[string][]int, len(names))
	for i, n := range names {
		ranks[n] = flat[i*groups : (i+1)*groups]
	}
	return ranks, nil
}

// latentBytes is the cache of a latent of lat values per token quantized to
// bits with a float16 scale and zero per group of size values (as
// model.KVBytesPerToken counts it).
func latentBytes(lat, bits, size int) int {
	return (lat*bits+7)/8 + 4*((lat+size-1)/size)
}

// allocateByImportance splits total among units in proportion to their
// importance, each between 1 and capacity: r_u = clamp(λ·I_u, 1, capacity), with λ set by
// bisection so that the r_u sum to total, then rounded down, the leftover
// handed out one at a time by largest fractional part. The clamp is Palu's
// cap with the excess redistributed to the units below it.
func allocateByImportance(imp []float64, capacity, total int) []int {
	n := len(imp)
	r := make([]int, n)
	switch {
	case n == 0:
		return r
	case total >= n*capacity:
		for i := range r {
			r[i] = capacity
		}
		return r
	case total <= n:
		for i := range r {
			r[i] = 1
		}
		return r
	}
	w := make([]float64, n)
	var sum float64
	for i, x := range imp {
		if x > 0 && !math.IsInf(x, 0) {
			w[i] = x
			sum += x
		}
	}
	if !(sum > 0) { // no information: equal shares
		for i := range w {
			w[i] = 1
		}
		sum = float64(n)
	}
	for i := range w {
		w[i] /= sum
	}
	share := func(l float64) float64 {
		var s float64
		for _, x := range w {
			s += min(max(l*x, 1), float64(capacity))
		}
		return s
	}
	lo, hi := 0.0, float64(total)
	for i := 0; share(hi) < float64(total) && i < 64; i++ {
		hi *= 2 // units of zero importance stay at 1, so it may never reach total
	}
	for range 200 {
		mid := (lo + hi) / 2
		if share(mid) < float64(total) {
			lo = mid
		} else {
			hi = mid
		}
	}
	frac := make([]float64, n)
	left := total
	for i, x := range w {
		v := min(max(hi*x, 1), float64(capacity))
		r[i] = min(int(v), capacity)
		frac[i] = v - float64(r[i])
		left -= r[i]
	}
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch {
		case frac[a] > frac[b]:
			return -1
		case frac[a] < frac[b]:
			return 1
		}
		return 0
	})
	for left > 0 {
		for _, i := range order {
			if left > 0 && r[i] < capacity {
				r[i]++
				left--
			}
		}
	}
	for left < 0 { // bisection overshoot: take back from the largest
		i := 0
		for j := range r {
			if r[j] > r[i] {
				i = j
			}
		}
		r[i]--
		left++
	}
	return r
}
