package calib

import (
	"errors"
	"path/filepath"
	"strings"
)

// IsTextFile reports whether path names a file that can only hold text
// (.txt, .text, .md): such data needs no text column.
func IsTextFile(path string) bool {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".txt", ".text", ".md":
		return true
	}
	return false
}

var errFoundText = errors.New("found text")

// CheckText checks a text dataset (as EachText reads it) before any
// tokenization: the column exists and holds strings, and at least one
// document is not blank. It reads no further than the first such document.
func CheckText(path, column string) error {
	err := EachText(path, column, nil, func(s string) error {
		if strings.TrimSpace(s) != "" {
			return errFoundText
		}
		return nil
	})
	switch {
	case err == errFoundText:
		return nil
	case err != nil:
		return err
	case IsTextFile(path):
		return fileError(path, nil, "no text: the file is empty or blank")
	}
	return fileError(path, nil, "column %q holds no text (no rows, or only nulls and blank strings)", column)
}
