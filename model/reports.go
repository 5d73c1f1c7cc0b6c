package model

// The per-layer reports of rankzip's stages: plain records of what a stage
// did to each matrix or layer, kept in a job's result and its report.
// Package compress makes them (compress.Layer, QuantLayer, EoRALayer and
// MLALayer are these types); they live here so that a reader of reports
// (package report) need not import compress and the methods under it.

// LowRankReport reports what a low-rank stage did to one targeted matrix.
type LowRankReport struct {
	Name           string  `json:"name"` // model.layers.i.<module>
	Out            int     `json:"out"`
	In             int     `json:"in"`
	Rank           int     `json:"rank"` // 0 when kept dense
	Dense          bool    `json:"dense"`
	PredictedError float64 `json:"predicted_error"` // the method's own calibration error (see methods)
	// Unrouted: an expert no calibration token was routed to, kept dense.
	Unrouted bool `json:"unrouted,omitempty"`
}

// QuantReport reports one quantized matrix.
type QuantReport struct {
	Name   string `json:"name"`
	Out    int    `json:"out"`
	In     int    `json:"in"`
	Groups int    `json:"groups"`
	// CalibError is tr((W − Ŵ) C (W − Ŵ)ᵀ) / N under the Gram C of the
	// stream the layer sees; RelError divides it by tr(W C Wᵀ) / N.
	CalibError float64 `json:"calib_error"`
	RelError   float64 `json:"rel_error"`
	Damp       float64 `json:"damp,omitempty"` // GPTQ's final relative damping
	// Unrouted: an expert no calibration token was routed to, kept dense.
	Unrouted bool `json:"unrouted,omitempty"`
}

// EoRAReport reports one EoRA correction: the layer's calibration error
// tr(ΔW C ΔWᵀ) / N before and after.
type EoRAReport struct {
	Name        string  `json:"name"`
	Rank        int     `json:"rank"`
	ErrorBefore float64 `json:"error_before"`
	ErrorAfter  float64 `json:"error_after"`
	// Unrouted: a compressed expert no calibration token was routed to,
	// left uncompensated (Rank 0).
	Unrouted bool `json:"unrouted,omitempty"`
}

// MLAReport reports the conversion of one layer to latent attention.
type MLAReport struct {
	Layer       int
	RopeShare   float64 // share of the key energy held by the rope dims
	LatentShare float64 // share of [K_nope/α; V] energy held by the latent
	Alpha       float64 // BKV scale
	// RopeFreqIndex gives each rope pair's frequency (an index into the
	// model's RoPE frequencies).
	RopeFreqIndex []int
}
