package activities

import (
	"fmt"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/recipe"
)

// Stages plug in here. Today a recipe has one low-rank stage (svd or lord),
// run by compress.Plan; a later stage (palu, gptq, eora) adds its case to
// CompressOptions' caller: a plan step in Inspect and a per-block step in
// Block that takes the block compressed so far and the streams entering it.

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
		case "svd":
			o.Method = s.Variant
			return o, nil
		case "lord":
			o.Method = "lord"
			return o, nil
		}
	}
	return compress.Options{}, fmt.Errorf("the recipe has no low-rank stage (svd or lord); other stages are not implemented yet")
}
