package model

import "testing"

// For the external tests (refrecipe_test.go), which may import compress.

// RefArchNames lists the reference checkpoints of archref_test.go.
func RefArchNames() []string { return sortedNames(refArchs) }

// LoadRefModel writes and loads the reference checkpoint name (4.x form).
func LoadRefModel(t *testing.T, name string) *Model {
	m, _, _, _ := loadRef(t, name, false)
	return m
}
