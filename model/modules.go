package model

import (
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
)

// The module vocabulary: how a block's linear layers are named, selected by
// a recipe's target globs, and shaped. Every package names modules through
// these, so that a name written in one place parses in another.

// LayerPrefix is the checkpoint name prefix of block i, "model.layers.<i>.".
func LayerPrefix(i int) string { return "model.layers." + strconv.Itoa(i) + "." }

// ModuleName is the checkpoint name of module mod of block i,
// "model.layers.<i>.<mod>" (a linear layer's tensors add ".weight" and the like).
func ModuleName(i int, mod string) string { return LayerPrefix(i) + mod }

// ParseModuleName splits "model.layers.<i>.<mod>" into i and mod; ok is
// false for any other name, or an index not written as ModuleName writes it.
func ParseModuleName(name string) (i int, mod string, ok bool) {
	rest, ok := strings.CutPrefix(name, "model.layers.")
	if !ok {
		return 0, "", false
	}
	idx, mod, ok := strings.Cut(rest, ".")
	i, err := strconv.Atoi(idx)
	if !ok || err != nil || i < 0 || strconv.Itoa(i) != idx {
		return 0, "", false
	}
	return i, mod, true
}

// CheckGlob says whether g is a well-formed target glob (path.Match syntax).
func CheckGlob(g string) error {
	_, err := path.Match(g, "")
	return err
}

// GlobMatches reports whether the target glob g selects module mod; a
// malformed glob selects nothing.
func GlobMatches(g, mod string) bool {
	ok, _ := path.Match(g, mod)
	return ok
}

// AnyGlobMatches reports whether one of the globs selects module mod.
func AnyGlobMatches(globs []string, mod string) bool {
	return slices.ContainsFunc(globs, func(g string) bool { return GlobMatches(g, mod) })
}

// MatchModules expands target globs to the block modules they select, in
// block order; no targets select all seven. It returns a problem per glob
// that is malformed or matches nothing.
func MatchModules(targets []string) (mods, problems []string) {
	if len(targets) == 0 {
		return slices.Clone(Modules), nil
	}
	for _, g := range targets {
		if err := CheckGlob(g); err != nil {
			problems = append(problems, fmt.Sprintf("target %q is not a valid glob: %v", g, err))
			continue
		}
		hit := false
		for _, m := range Modules {
			if GlobMatches(g, m) {
				hit = true
				if !slices.Contains(mods, m) {
					mods = append(mods, m)
				}
			}
		}
		if !hit {
			problems = append(problems, fmt.Sprintf("target %q matches no module (modules: %s)", g, strings.Join(Modules, ", ")))
		}
	}
	slices.SortFunc(mods, func(a, b string) int { return slices.Index(Modules, a) - slices.Index(Modules, b) })
	return mods, problems
}

// ModuleShape is (out, in) of a block module under config c, as a checkpoint
// stores it (latent attention's q_proj and o_proj where c has MLA).
func (c *Config) ModuleShape(module string) (out, in int) {
	if e, j, ok := ParseExpertModule(module); ok && c.MoE != nil {
		inter := c.MoE.Inter
		if e == SharedExpert {
			inter = c.MoE.SharedInter
		}
		if j == 2 {
			return c.HiddenSize, inter // down_proj
		}
		return inter, c.HiddenSize
	}
	out, in, _ = linearShape(c, module)
	return out, in
}
