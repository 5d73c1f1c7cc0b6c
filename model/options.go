package model

// The option vocabulary a recipe and the compression stages share: the
// names are checked when a recipe is read and acted on when a stage runs, so
// both read them from here.

// LowRankSearches lists the rank searches of a low-rank (svd, lord) stage.
var LowRankSearches = []string{"uniform", "global", "sensitivity"}

// PaluSearches lists Palu's rank searches.
var PaluSearches = []string{"uniform", "spectrum", "fisher"}

// Rotations lists how an mla stage may choose the RoPE dims to keep (the
// values of methods/mla's Rotation): none, keys (RoRoPE) or scores.
var Rotations = []string{"none", "keys", "scores"}

// DefaultRotation is the rotation an mla stage gets unless it says otherwise.
const DefaultRotation = "scores"
