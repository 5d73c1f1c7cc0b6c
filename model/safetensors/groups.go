package safetensors

import (
	"fmt"
	"io"
	"slices"
)

// WriteGroups writes path as WriteFile does, holding in memory only fixed and
// one group of tensors at a time: a model's blocks, read one after another.
// group(g, plan) returns the tensors of group g (g in [0, groups)), built
// afresh on every call. WriteGroups calls it first for every group in order
// with plan true, to lay out the header from the names, dtypes and shapes,
// dropping each group's tensors at once; then with plan false as the data
// section reaches the group, keeping it until the next group is needed. A
// group whose tensors are contiguous in name order (a block's, all under one
// prefix) is so read twice; a group's second call must give the tensors of
// the first, else the write fails. The bytes written are those WriteFile
// writes for fixed and every group's tensors.
func WriteGroups(path string, fixed []WriteTensor, groups int, group func(g int, plan bool) ([]WriteTensor, error), metadata map[string]string) error {
	cur := -1
	var tensors map[string]WriteTensor // group cur's, by name
	load := func(g int) error {
		cur, tensors = -1, nil // the group before is dropped before the next is read
		ts, err := group(g, false)
		if err != nil {
			return err
		}
		tensors = make(map[string]WriteTensor, len(ts))
		for _, t := range ts {
			tensors[t.Name] = t
		}
		cur = g
		return nil
	}
	all := slices.Clone(fixed)
	for g := range groups {
		ts, err := group(g, true)
		if err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		for _, t := range ts {
			if t.Data != nil && t.Fill != nil {
				return fmt.Errorf("write %s: tensor %q: both Data and Fill are set", path, t.Name)
			}
			planned := WriteTensor{Name: t.Name, DType: t.DType, Shape: t.Shape}
			planned.Fill = func(w io.Writer) error {
				if cur != g {
					if err := load(g); err != nil {
						return err
					}
				}
				t, ok := tensors[planned.Name]
				if !ok || t.DType != planned.DType || !slices.Equal(t.Shape, planned.Shape) {
					return fmt.Errorf("group %d no longer holds the tensor it held when the header was planned (%s %v)", g, planned.DType, planned.Shape)
				}
				if t.Fill == nil {
					_, err := w.Write(t.Data)
					return err
				}
				return t.Fill(w)
			}
			all = append(all, planned)
		}
	}
	return WriteFile(path, all, metadata)
}
