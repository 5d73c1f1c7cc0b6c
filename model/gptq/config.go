package gptq

import (
	"encoding/json"
	"fmt"
)

// QuantizeConfig is the quantization_config object of a GPTQ checkpoint's
// config.json, also written as quantize_config.json. Only the fields that
// describe the format are included; vLLM reads bits, group_size, desc_act,
// sym, lm_head and checkpoint_format, transformers quant_method.
type QuantizeConfig struct {
	Bits             int    `json:"bits"`
	GroupSize        int    `json:"group_size"` // −1: one group per output channel
	DescAct          bool   `json:"desc_act"`
	Sym              bool   `json:"sym"`
	LMHead           bool   `json:"lm_head"`
	QuantMethod      string `json:"quant_method"`      // "gptq"
	CheckpointFormat string `json:"checkpoint_format"` // "gptq": v1, zero − 1 stored
	PackDType        string `json:"pack_dtype"`        // "int32"
	// ModulesInBlockToQuantize lists the quantized linears of a block
	// (transformers' GPTQConfig field) when only some are; omitted when all
	// are. Export fills it in.
	ModulesInBlockToQuantize [][]string `json:"modules_in_block_to_quantize,omitempty"`
}

// NewQuantizeConfig returns the config of a GPTQ v1 checkpoint packed by this
// package. groupSize is the group size, or 0 or −1 for one group per output
// channel (written as −1). descAct says the layers were quantized with
// act-order; with static groups (package methods/quant) g_idx is still
// k / group_size, so an exporter may as well write false, which lets loaders
// pick their faster kernels.
func NewQuantizeConfig(bits, groupSize int, descAct, sym bool) (QuantizeConfig, error) {
	if groupSize == 0 {
		groupSize = -1
	}
	c := QuantizeConfig{
		Bits:             bits,
		GroupSize:        groupSize,
		DescAct:          descAct,
		Sym:              sym,
		QuantMethod:      "gptq",
		CheckpointFormat: "gptq",
		PackDType:        "int32",
	}
	return c, c.Validate()
}

// QuantizeConfigJSON returns NewQuantizeConfig's object as JSON.
func QuantizeConfigJSON(bits, groupSize int, descAct, sym bool) (json.RawMessage, error) {
	c, err := NewQuantizeConfig(bits, groupSize, descAct, sym)
	if err != nil {
		return nil, err
	}
	return json.Marshal(c)
}

// Validate checks that c describes a checkpoint this package can read: GPTQ
// v1 (checkpoint_format "gptq", or absent as in older files), int32 packing,
// 2, 3, 4 or 8 bits, a positive group size or −1.
func (c QuantizeConfig) Validate() error {
	switch {
	case c.QuantMethod != "gptq":
		return fmt.Errorf("gptq: quant_method %q, want \"gptq\"", c.QuantMethod)
	case c.CheckpointFormat != "gptq" && c.CheckpointFormat != "":
		return fmt.Errorf("gptq: checkpoint_format %q not supported (want \"gptq\", v1)", c.CheckpointFormat)
	case c.PackDType != "int32" && c.PackDType != "":
		return fmt.Errorf("gptq: pack_dtype %q not supported (want \"int32\")", c.PackDType)
	case c.GroupSize == 0 || c.GroupSize < -1:
		return fmt.Errorf("gptq: group_size %d (want a positive size or −1)", c.GroupSize)
	}
	if err := checkDims(c.Bits, 32, 32); err != nil {
		return err
	}
	return nil
}
