package recipe

import "strings"

// Method names a stage's compression method, as a recipe spells it.
type Method string

// The stage methods, in pipeline order.
const (
	MethodSVD  Method = "svd"
	MethodLoRD Method = "lord"
	MethodPalu Method = "palu"
	MethodMLA  Method = "mla"
	MethodRTN  Method = "rtn"
	MethodGPTQ Method = "gptq"
	MethodEoRA Method = "eora"
)

// joinMethods lists methods for a message: "svd, lord, ...".
func joinMethods(ms []Method) string {
	s := make([]string, len(ms))
	for i, m := range ms {
		s[i] = string(m)
	}
	return strings.Join(s, ", ")
}
