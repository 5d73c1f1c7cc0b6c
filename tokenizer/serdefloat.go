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
	d, err := scanSerde(s)
	switch {
	case err != nil:
		return 0, err
	case d.zero && d.neg:
		return math.Copysign(0, -1), nil
	case d.zero:
		return 0, nil
	}
	f, ok := scalePow10(float64(d.sig), d.exp)
	if !ok {
		return 0, fmt.Errorf("number %q out of range", s)
	}
	if d.neg {
		f = -f
	}
	return f, nil
}

// serdeDecimal is a JSON number as serde_json scans it: sign, significand
// (its first 19 or 20 digits, what fits a uint64) and the power of ten
// scaling it; zero when the exponent underflows.
type serdeDecimal struct {
	neg  bool
	sig  uint64
	exp  int
	zero bool
}

// scanSerde scans s (the whole of it, unless an exponent too small to read
// makes the number 0, where serde_json stops).
func scanSerde(s string) (serdeDecimal, error) {
	var d serdeDecimal
	bad := fmt.Errorf("invalid number %q", s)
	i := 0
	if i < len(s) && s[i] == '-' {
		d.neg = true
		i++
	}
	if i >= len(s) || s[i] < '0' || s[i] > '9' {
		return d, bad
	}
	i, ok := d.significand(s, i)
	if !ok {
		return d, bad
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		var err error
		if i, err = d.exponent(s, i+1); err != nil || d.zero {
			return d, err
		}
	}
	if i != len(s) {
		return d, bad
	}
	return d, nil
}

// significand reads the integer digits and fraction starting at s[i] and
// returns where they end; false for a '.' with no digit after it.
func (d *serdeDecimal) significand(s string, i int) (int, bool) {
	const max = math.MaxUint64
	overflow := func(a, b uint64) bool { return a >= max/10 && (a > max/10 || b > max%10) }
	for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
		dig := uint64(s[i] - '0')
		if d.exp > 0 || overflow(d.sig, dig) {
			d.exp++ // digits past u64 only scale
			continue
		}
		d.sig = d.sig*10 + dig
	}
	if i < len(s) && s[i] == '.' {
		i++
		start := i
		dropping := false
		for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
			dig := uint64(s[i] - '0')
			if dropping || overflow(d.sig, dig) {
				dropping = true
				continue
			}
			d.sig = d.sig*10 + dig
			d.exp--
		}
		if i == start {
			return i, false
		}
	}
	return i, true
}

// exponent reads the exponent after the 'e' at s[i-1] into d.exp and
// returns where it ends. An exponent past int32 makes the number 0 (d.zero)
// or, positive with a significand not 0, out of range.
func (d *serdeDecimal) exponent(s string, i int) (int, error) {
	posExp := true
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		posExp = s[i] == '+'
		i++
	}
	if i >= len(s) {
		return i, fmt.Errorf("invalid number %q", s)
	}
	e := 0
	for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
		dig := int(s[i] - '0')
		if e >= math.MaxInt32/10 && (e > math.MaxInt32/10 || dig > math.MaxInt32%10) {
			if d.sig != 0 && posExp {
				return i, fmt.Errorf("number %q out of range", s)
			}
			d.zero = true
			return i, nil
		}
		e = e*10 + dig
	}
	if posExp {
		d.exp += e
	} else {
		d.exp -= e
	}
	return i, nil
}

// scalePow10 is f·10^exp by one multiplication or division by pow10 (more
// divisions by 1e308 first for exponents below -308); false when it
// overflows.
func scalePow10(f float64, exp int) (float64, bool) {
	for {
		a := exp
		if a < 0 {
			a = -a
		}
		if a < len(pow10) {
			if exp >= 0 {
				f *= pow10[a]
				if math.IsInf(f, 0) {
					return 0, false
				}
			} else {
				f /= pow10[a]
			}
			return f, true
		}
		if f == 0 {
			return f, true
		}
		if exp >= 0 {
			return 0, false
		}
		f /= 1e308
		exp += 308
	}
}
