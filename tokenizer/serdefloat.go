package tokenizer

import (
	"fmt"
	"math"
	"strconv"
)

// pow10 is serde_json's POW10 table: 1e0 … 1e308, each correctly rounded.
var pow10 = func() (t [309]float64) {
	for i := range t {
		t[i], _ = strconv.ParseFloat("1e"+strconv.Itoa(i), 64)
	}
	return t
}()

// serdeFloat parses a JSON number as serde_json does without its
// float_roundtrip feature, which is how the tokenizers library reads
// tokenizer.json: the decimal significand (at most 19 digits; later digits
// are dropped) converted to float64, then one multiplication or division by
// a power of ten. The result can differ from the correctly rounded value in
// the last bit, which decides ties between Unigram segmentations.
func serdeFloat(s string) (float64, error) {
	bad := fmt.Errorf("invalid number %q", s)
	i := 0
	neg := false
	if i < len(s) && s[i] == '-' {
		neg = true
		i++
	}
	if i >= len(s) || s[i] < '0' || s[i] > '9' {
		return 0, bad
	}
	const max = math.MaxUint64
	overflow := func(a, b uint64) bool { return a >= max/10 && (a > max/10 || b > max%10) }
	var sig uint64
	exp := 0
	for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
		d := uint64(s[i] - '0')
		if exp > 0 || overflow(sig, d) {
			exp++ // digits past u64 only scale
			continue
		}
		sig = sig*10 + d
	}
	if i < len(s) && s[i] == '.' {
		i++
		start := i
		dropping := false
		for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
			d := uint64(s[i] - '0')
			if dropping || overflow(sig, d) {
				dropping = true
				continue
			}
			sig = sig*10 + d
			exp--
		}
		if i == start {
			return 0, bad
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		posExp := true
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			posExp = s[i] == '+'
			i++
		}
		if i >= len(s) {
			return 0, bad
		}
		e := 0
		for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
			d := int(s[i] - '0')
			if e >= math.MaxInt32/10 && (e > math.MaxInt32/10 || d > math.MaxInt32%10) {
				if sig != 0 && posExp {
					return 0, fmt.Errorf("number %q out of range", s)
				}
				if neg {
					return math.Copysign(0, -1), nil
				}
				return 0, nil
			}
			e = e*10 + d
		}
		if posExp {
			exp += e
		} else {
			exp -= e
		}
	}
	if i != len(s) {
		return 0, bad
	}
	f := float64(sig)
	for {
		a := exp
		if a < 0 {
			a = -a
		}
		if a < len(pow10) {
			if exp >= 0 {
				f *= pow10[a]
				if math.IsInf(f, 0) {
					return 0, fmt.Errorf("number %q out of range", s)
				}
			} else {
				f /= pow10[a]
			}
			break
		}
		if f == 0 {
			break
		}
		if exp >= 0 {
			return 0, fmt.Errorf("number %q out of range", s)
		}
		f /= 1e308
		exp += 308
	}
	if neg {
		f = -f
	}
	return f, nil
}
