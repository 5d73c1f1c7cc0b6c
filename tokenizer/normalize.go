package tokenizer

import (
	"encoding/json"
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

type normalizer interface {
	normalize(s string) string
}

type normSequence []normalizer

func (q normSequence) normalize(s string) string {
	for _, n := range q {
		s = n.normalize(s)
	}
	return s
}

type normUnicode struct{ form norm.Form }

func (n normUnicode) normalize(s string) string { return n.form.String(s) }

type normLowercase struct{}

func (normLowercase) normalize(s string) string { return strings.ToLower(s) }

type normStrip struct{ left, right bool }

func (n normStrip) normalize(s string) string {
	if n.left {
		s = strings.TrimLeftFunc(s, unicode.IsSpace)
	}
	if n.right {
		s = strings.TrimRightFunc(s, unicode.IsSpace)
	}
	return s
}

type normPrepend struct{ prefix string }

func (n normPrepend) normalize(s string) string {
	if s == "" {
		return s
	}
	return n.prefix + s
}

type normReplace struct{ old, new string }

func (n normReplace) normalize(s string) string { return strings.ReplaceAll(s, n.old, n.new) }

// pattern is a Replace/Split pattern: {"String": "..."} or {"Regex": "..."}.
type pattern struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

func parseNormalizer(raw json.RawMessage, file string) (normalizer, error) {
	var h struct {
		Type        string            `json:"type"`
		Normalizers []json.RawMessage `json:"normalizers"`
		Prepend     string            `json:"prepend"`
		Pattern     pattern           `json:"pattern"`
		Content     string            `json:"content"`
		StripLeft   bool              `json:"strip_left"`
		StripRight  bool              `json:"strip_right"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, componentError(file, "normalizer", "unreadable: %v", err)
	}
	switch h.Type {
	case "Sequence":
		var q normSequence
		for _, r := range h.Normalizers {
			n, err := parseNormalizer(r, file)
			if err != nil {
				return nil, err
			}
			q = append(q, n)
		}
		return q, nil
	case "NFC":
		return normUnicode{norm.NFC}, nil
	case "NFD":
		return normUnicode{norm.NFD}, nil
	case "NFKC":
		return normUnicode{norm.NFKC}, nil
	case "NFKD":
		return normUnicode{norm.NFKD}, nil
	case "Lowercase":
		return normLowercase{}, nil
	case "Strip":
		return normStrip{h.StripLeft, h.StripRight}, nil
	case "Prepend":
		return normPrepend{h.Prepend}, nil
	case "Replace":
		if h.Pattern.String == nil {
			return nil, componentError(file, "normalizer", "Replace with a regular expression is not supported")
		}
		return normReplace{*h.Pattern.String, h.Content}, nil
	default:
		return nil, componentError(file, "normalizer", "type %q not supported", h.Type)
	}
}
