package safetensors

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// groupTensors are the tensors of group g: names under their own prefix,
// one float tensor streamed by Fill and one integer tensor given as Data.
func groupTensors(g int) []WriteTensor {
	v := make([]float32, 3+g)
	for i := range v {
		v[i] = float32(g) + float32(i)/4
	}
	return []WriteTensor{
		{Name: fmt.Sprintf("layers.%d.w", g), DType: F32, Shape: []int{len(v)}, Fill: FillF32(v)},
		{Name: fmt.Sprintf("layers.%d.q", g), DType: U8, Shape: []int{2}, Data: []byte{byte(g), 7}},
	}
}

// WriteGroups writes the bytes WriteFile writes for the same tensors, and
// builds each group twice (plan, then write) when its names are contiguous:
// 12 groups, whose data order (layers.0, layers.1, layers.10, ...) is not the
// groups' order.
func TestWriteGroupsSameBytes(t *testing.T) {
	dir := t.TempDir()
	const groups = 12
	// A FillF32 writes once: each write gets its own.
	fixed := func() []WriteTensor {
		return []WriteTensor{{Name: "embed", DType: F32, Shape: []int{2}, Fill: FillF32([]float32{1, 2})}}
	}
	all := fixed()
	for g := range groups {
		all = append(all, groupTensors(g)...)
	}
	md := map[string]string{"format": "pt"}
	whole, streamed := filepath.Join(dir, "whole.safetensors"), filepath.Join(dir, "streamed.safetensors")
	if err := WriteFile(whole, all, md); err != nil {
		t.Fatal(err)
	}
	calls := map[bool][]int{}
	err := WriteGroups(streamed, fixed(), groups, func(g int, plan bool) ([]WriteTensor, error) {
		calls[plan] = append(calls[plan], g)
		return groupTensors(g), nil
	}, md)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(whole)
	b, _ := os.ReadFile(streamed)
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Errorf("WriteGroups wrote %d bytes differing from WriteFile's %d", len(b), len(a))
	}
	if len(calls[true]) != groups || len(calls[false]) != groups {
		t.Errorf("groups built %v to plan and %v to write, want each of the %d once", calls[true], calls[false], groups)
	}
	if got := fmt.Sprint(calls[false][:4]); got != "[0 1 10 11]" {
		t.Errorf("groups written in the order %s, want the data section's [0 1 10 11]", got)
	}
}

// A group that changes between planning and writing fails the write, naming
// the tensor, and leaves no file behind.
func TestWriteGroupsChanged(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.safetensors")
	err := WriteGroups(path, nil, 2, func(g int, plan bool) ([]WriteTensor, error) {
		ts := groupTensors(g)
		if !plan && g == 1 {
			ts[0].Shape = []int{1, ts[0].Shape[0]}
		}
		return ts, nil
	}, nil)
	if err == nil || !strings.Contains(err.Error(), `"layers.1.w"`) || !strings.Contains(err.Error(), "planned") {
		t.Errorf("a group changed after planning: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("the failed write left %d files", len(ents))
	}
	boom := fmt.Errorf("boom")
	err = WriteGroups(path, nil, 2, func(g int, plan bool) ([]WriteTensor, error) { return nil, boom }, nil)
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("a group that fails to build: %v", err)
	}
}
