package model

// The option vocabulary a recipe and the compression stages share: the
// names are checked when a recipe is read and acted on when a stage runs, so
// both read them from here.

// LowRankSearches lists the rank searches of a low-rank (svd, lord) stage.
var LowRankSearches = []string{"uniform", "global", "sensitivity", "local", "fisher"}

// DefaultLowRankSearch is the rank search of a keep_params budget when none
// is named, for every entry point (compress.Options and recipes alike; see
// LowRankSearchFor for architectures without a backward pass). The Fisher
// search, linear in depth, gives the lowest KL on stories260K, a little
// below the whole-model sensitivity search's (compress's
// TestSensitivityBeatsUniform); the local search is linear in depth too but
// not as good there.
const DefaultLowRankSearch = "fisher"

// NoBackwardLowRankSearch is the default rank search of architectures
// without a backward pass (FeatureBackward), which the Fisher search needs.
const NoBackwardLowRankSearch = "sensitivity"

// LowRankSearchFor returns the default rank search for models of config c
// (nil: not known yet, DefaultLowRankSearch).
func LowRankSearchFor(c *Config) string {
	if c != nil && c.Unsupported(FeatureBackward) != nil {
		return NoBackwardLowRankSearch
	}
	return DefaultLowRankSearch
}

// PaluSearches lists Palu's rank searches.
var PaluSearches = []string{"uniform", "spectrum", "fisher"}

// Rotations lists how an mla stage may choose the RoPE dims to keep (the
// values of methods/mla's Rotation): none, keys (RoRoPE) or scores.
var Rotations = []string{"none", "keys", "scores"}

// DefaultRotation is the rotation an mla stage gets unless it says otherwise.
const DefaultRotation = "scores"
