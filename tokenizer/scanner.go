package tokenizer

// knownScanner returns a hand-written matcher for a pattern whose exact
// behaviour it reproduces, or nil.
func knownScanner(pat string) func(s string) [][2]int { return nil }
