package activities

import (
	"fmt"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/methods/mla"
	"github.com/rankzip/rankzip/recipe"
)

// Stages plug in here. A low-rank stage (svd or lord) can only come first
// (recipe order) and keeps its own path: Inspect plans it (compress.Plan)
// and Block runs it, possibly in parallel in original mode. Every other
// stage (palu, rtn, gptq, eora) runs after the stages before it finished on
// every block: PlanStage validates it against the model those stages made
// and StageBlock runs it one block at a time (see stage.go). The mappings
// below are shared with the direct path (tests, CLI).

// LowRank reports whether stage i of r is a low-rank stage (svd or lord).
func LowRank(r recipe.Recipe, i int) bool {
	m := r.Stages[i].Method
	return m == recipe.MethodSVD || m == recipe.MethodLoRD
}

// CompressOptions maps the low-rank stage of a canonical recipe to the
// options of compress.NewPlan (the direct path uses the same mapping).
func CompressOptions(r recipe.Recipe) (compress.Options, error) {
	for _, s := range r.Stages {
		o := compress.Options{
			Targets:    s.Targets,
			KeepParams: s.KeepParams,
			Rank:       s.Rank,
			RankSearch: s.RankSearch,
			Alpha:      s.Alpha,
			Mode:       calib.Mode(r.Calibration.Mode),
			Batch:      r.Calibration.Batch,
		}
		switch s.Method {
		case recipe.MethodSVD:
			o.Method = s.Variant
			return o, nil
		case recipe.MethodLoRD:
			o.Method = "lord"
			return o, nil
		}
	}
	return compress.Options{}, fmt.Errorf("the recipe has no low-rank stage (svd or lord)")
}

// PaluOptions maps palu stage i of a canonical recipe to compress's options.
func PaluOptions(r recipe.Recipe, i int) (compress.PaluOptions, error) {
	s := r.Stages[i]
	if s.Method != recipe.MethodPalu {
		return compress.PaluOptions{}, fmt.Errorf("stages[%d] is %s, not palu", i, s.Method)
	}
	o := compress.PaluOptions{KVKeep: s.KVKeep, RankSearch: s.RankSearch, Mode: calib.Mode(r.Calibration.Mode), Batch: r.Calibration.Batch,
		LatentBits: s.LatentBits, LatentGroupSize: s.LatentGroupSize}
	if s.GroupSize != nil {
		o.GroupHeads = *s.GroupSize
	}
	if s.Hadamard != nil {
		o.Hadamard = *s.Hadamard
	}
	return o, nil
}

// MLAOptions maps mla stage i of a canonical recipe to compress's options.
func MLAOptions(r recipe.Recipe, i int) (compress.MLAOptions, error) {
	s := r.Stages[i]
	if s.Method != recipe.MethodMLA {
		return compress.MLAOptions{}, fmt.Errorf("stages[%d] is %s, not mla", i, s.Method)
	}
	o := compress.MLAOptions{RopeDim: s.QKRopeHeadDim, LoraRank: s.KVLoraRank, Rotation: mla.Rotation(s.Rotation), FreqFold: s.FreqFold,
		Mode: calib.Mode(r.Calibration.Mode), Batch: r.Calibration.Batch}
	if s.BKV != nil {
		o.BKV = *s.BKV
	}
	return o, nil
}

// QuantOptions maps rtn or gptq stage i of a canonical recipe to compress's
// options.
func QuantOptions(r recipe.Recipe, i int) (compress.QuantOptions, error) {
	s := r.Stages[i]
	if s.Method != recipe.MethodRTN && s.Method != recipe.MethodGPTQ {
		return compress.QuantOptions{}, fmt.Errorf("stages[%d] is %s, not rtn or gptq", i, s.Method)
	}
	o := compress.QuantOptions{Method: string(s.Method), Bits: s.Bits, Damp: s.Damp, Targets: s.Targets,
		Mode: calib.Mode(r.Calibration.Mode), Batch: r.Calibration.Batch}
	if s.GroupSize != nil {
		o.GroupSize = *s.GroupSize
	}
	if s.Sym != nil {
		o.Sym = *s.Sym
	}
	if s.ActOrder != nil {
		o.ActOrder = *s.ActOrder
	}
	return o, nil
}

// EoRAOptions maps eora stage i of a canonical recipe to compress's options.
func EoRAOptions(r recipe.Recipe, i int) (compress.EoRAOptions, error) {
	s := r.Stages[i]
	if s.Method != recipe.MethodEoRA {
		return compress.EoRAOptions{}, fmt.Errorf("stages[%d] is %s, not eora", i, s.Method)
	}
	return compress.EoRAOptions{Rank: s.Rank, Ranks: s.RankOverrides, Targets: s.Targets,
		Mode: calib.Mode(r.Calibration.Mode), Batch: r.Calibration.Batch}, nil
}

// QuantStage returns the index of the recipe's rtn or gptq stage, or -1.
func QuantStage(r recipe.Recipe) int {
	for i, s := range r.Stages {
		if s.Method == recipe.MethodRTN || s.Method == recipe.MethodGPTQ {
			return i
		}
	}
	return -1
}
