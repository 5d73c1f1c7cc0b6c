package recipe

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// Methods lists every stage method a recipe may name, in pipeline order.
var Methods = []Method{MethodSVD, MethodLoRD, MethodPalu, MethodMLA, MethodRTN, MethodGPTQ, MethodEoRA}

// Implemented lists the stage methods that run today.
var Implemented = []Method{MethodSVD, MethodLoRD, MethodPalu, MethodMLA, MethodRTN, MethodGPTQ, MethodEoRA}

// methodKeys are the keys each method accepts besides "method".
var methodKeys = map[Method][]string{
	MethodSVD:  {"variant", "targets", "keep_params", "rank", "rank_search", "alpha"},
	MethodLoRD: {"targets", "keep_params", "rank", "rank_search"},
	MethodPalu: {"kv_keep", "group_size", "rank_search", "latent_bits", "latent_group_size", "hadamard"},
	MethodMLA:  {"kv_lora_rank", "qk_rope_head_dim", "rorope", "rotation", "freqfold", "bkv"},
	MethodRTN:  {"bits", "group_size", "sym", "act_order", "damp", "targets"},
	MethodGPTQ: {"bits", "group_size", "sym", "act_order", "damp", "targets"},
	MethodEoRA: {"rank", "targets", "rank_overrides"},
}

// stageKeys is the union of methodKeys and "method".
func stageKeys() []string {
	keys := []string{"method"}
	for _, m := range Methods {
		for _, k := range methodKeys[m] {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

// UnmarshalYAML decodes a stage and records which keys it gave. Keys are
// checked against the method later, with every other problem.
func (s *Stage) UnmarshalYAML(n *yaml.Node) error {
	type plain Stage
	s.line = n.Line
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			s.keys = append(s.keys, n.Content[i].Value)
		}
	}
	// Unknown keys are reported by check, so decode leniently here; type
	// errors (a string where a number belongs) come back as *yaml.TypeError,
	// which the decoder merges with the others.
	keys, line := s.keys, s.line
	err := n.Decode((*plain)(s))
	s.keys, s.line = keys, line
	return err
}

var notFound = regexp.MustCompile(`^line (\d+): field (\S+) not found in type recipe\.(\w+)$`)

var sections = map[string]string{"Recipe": "the recipe", "Calibration": "calibration", "Evaluation": "evaluation", "Export": "export"}

var sectionKeys = map[string]string{
	"Recipe":      "model, calibration, evaluation, output, stages, export",
	"Calibration": "data, text_column, sequences, seq_len, mode, batch",
	"Evaluation":  "data, text_column, sequences, seq_len",
	"Export":      "format, dtype",
}

// parse decodes a recipe strictly (unknown keys are problems) and returns it
// with every syntax, type and key problem found.
func parse(data []byte) (*Recipe, []string) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var r Recipe
	err := dec.Decode(&r)
	var problems []string
	var te *yaml.TypeError
	switch {
	case errors.Is(err, io.EOF):
		return nil, []string{"the recipe is empty"}
	case errors.As(err, &te):
		for _, msg := range te.Errors {
			if m := notFound.FindStringSubmatch(msg); m != nil {
				msg = fmt.Sprintf("line %s: unknown key %q in %s (known keys: %s)", m[1], m[2], sections[m[3]], sectionKeys[m[3]])
			}
			problems = append(problems, msg)
		}
	case err != nil:
		return nil, []string{strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		problems = append(problems, fmt.Sprintf("line %d: a recipe is one YAML document; found a second one", extra.Line))
	}
	all := stageKeys()
	for i, s := range r.Stages {
		where := fmt.Sprintf("stages[%d] (line %d)", i, s.line)
		if s.Method == "" {
			problems = append(problems, fmt.Sprintf("%s: missing key \"method\" (one of %s)", where, joinMethods(Methods)))
			continue
		}
		known, ok := methodKeys[s.Method]
		if !ok {
			problems = append(problems, fmt.Sprintf("%s: method %q unknown (want one of %s)", where, s.Method, joinMethods(Methods)))
			continue
		}
		for _, k := range s.keys {
			switch {
			case k == "method" || slices.Contains(known, k):
			case slices.Contains(all, k):
				problems = append(problems, fmt.Sprintf("%s: key %q does not apply to method %s (its keys: %s)", where, k, s.Method, strings.Join(known, ", ")))
			default:
				problems = append(problems, fmt.Sprintf("%s: unknown key %q (keys of method %s: %s)", where, k, s.Method, strings.Join(known, ", ")))
			}
		}
	}
	return &r, problems
}
