package calib

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// CheckText accepts a text dataset after its first non-blank document and
// names the file and column of one it cannot use.
func TestCheckText(t *testing.T) {
	if err := CheckText(textFixture, "text"); err != nil {
		t.Errorf("texts.parquet: %v", err)
	}
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.jsonl", "{\"text\": null}\n{\"text\": \"  \"}\n{\"text\": \"hello\"}\n{\"text\": 3}\n")
	if err := CheckText(good, "text"); err != nil {
		t.Errorf("the first text is on line 3 (line 4 is never read): %v", err)
	}
	for _, c := range []struct{ path, column, want string }{
		{textFixture, "body", `no column "body"`},
		{textFixture, "score", `column "score" is DOUBLE, not a string column`},
		{"../tokenizer/testdata/text/empty.parquet", "text", `column "text" holds no text`},
		{write("blank.jsonl", "{\"text\": null}\n{\"text\": \" \"}\n"), "text", `column "text" holds no text`},
		{write("number.jsonl", "{\"text\": 3}\n"), "text", `"text" is not a string`},
		{write("blank.txt", "\n  \n"), "text", "no text: the file is empty or blank"},
	} {
		err := CheckText(c.path, c.column)
		if err == nil || !strings.Contains(err.Error(), c.path) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s column %s: got %v, want an error naming the file and %q", c.path, c.column, err, c.want)
		}
	}
	if !IsTextFile("a/b.TXT") || IsTextFile("a.parquet") || IsTextFile("a.jsonl") {
		t.Error("IsTextFile")
	}
}
