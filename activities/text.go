package activities

import (
	"errors"
	"fmt"
	"strings"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store"
	"github.com/rankzip/rankzip/tokenizer"
)

// textSpec is everything that determines the token rows made from a text
// dataset: the text file's and the tokenizer files' digests and the packing
// options (EOS and BOS come from the tokenizer files).
type textSpec struct {
	Data      string   `json:"data"`      // sha256 of the text file
	Column    string   `json:"column"`    // its text column
	Tokenizer []string `json:"tokenizer"` // sha256 of tokenizer.json, tokenizer_config.json
	Pack      bool     `json:"pack"`      // documents packed with EOS between them, BOS first in each row
	SeqLen    int      `json:"seq_len"`   // tokens per row
	Sequences int      `json:"sequences"` // the first rows kept
}

// textInput is a text dataset of a job.
type textInput struct {
	what   string // calibration or evaluation
	file   recipe.File
	column string
	seqLen int
	n      int
}

func (t textInput) spec(job recipe.Job) textSpec {
	s := textSpec{Data: t.file.SHA256, Column: t.column, Pack: true, SeqLen: t.seqLen, Sequences: t.n}
	for _, f := range job.Tokenizer {
		s.Tokenizer = append(s.Tokenizer, f.SHA256)
	}
	return s
}

func (t textInput) key(job recipe.Job) string {
	return store.Key("text-data", Version, t.spec(job))
}

// digest stands for the token rows in the keys of the artifacts made from
// them (they are not known before tokenizing).
func (t textInput) digest(job recipe.Job) string {
	k := t.key(job)
	return k[strings.IndexByte(k, '/')+1:]
}

func calibText(job recipe.Job) (textInput, bool) {
	c := job.Recipe.Calibration
	return textInput{"calibration", job.Calibration, c.TextColumn, c.SeqLen, c.Sequences}, c.IsText()
}

func evalText(job recipe.Job) (textInput, bool) {
	e := job.Recipe.Evaluation
	if e == nil || job.Evaluation == nil {
		return textInput{}, false
	}
	return textInput{"evaluation", *job.Evaluation, e.TextColumn, e.SeqLen, e.Sequences}, e.IsText()
}

// calibDigest identifies the job's calibration rows: the data file's sha256
// for token ids; for text, the digest of its text spec.
func calibDigest(job recipe.Job) string {
	if t, ok := calibText(job); ok {
		return t.digest(job)
	}
	return job.Calibration.SHA256
}

// evalDigest is calibDigest for the evaluation data.
func evalDigest(job recipe.Job) string {
	if t, ok := evalText(job); ok {
		return t.digest(job)
	}
	return job.Evaluation.SHA256
}

// textData returns the local file of the token rows of a text dataset and
// their ref: tokenized with the model's tokenizer and packed the first time,
// then found in the store (by the digests of the text and tokenizer files and
// the packing options), so a resumed or repeated job does not tokenize again.
func (a *Activities) textData(job recipe.Job, t textInput) (string, store.Ref, error) {
	if len(job.Tokenizer) == 0 {
		return "", store.Ref{}, badInput(fmt.Errorf("%s data %s is text, but the job names no tokenizer files: submit a recipe loaded with recipe.Load", t.what, t.file.Path))
	}
	if err := checkInputs(append([]recipe.File{t.file}, job.Tokenizer...)); err != nil {
		return "", store.Ref{}, err
	}
	key := t.key(job)
	// One tokenization at a time in a worker: blocks run in parallel would
	// otherwise all tokenize the same data at once.
	a.textMu.Lock()
	defer a.textMu.Unlock()
	ref, ok, err := a.Store.Lookup(key)
	if err != nil {
		return "", store.Ref{}, err
	}
	if !ok {
		if ref, err = a.tokenize(job, t, key); err != nil {
			return "", store.Ref{}, err
		}
	}
	p, err := a.Store.Verify(ref)
	if err != nil {
		return "", store.Ref{}, a.storeError(err)
	}
	return p, ref, nil
}

func (a *Activities) tokenize(job recipe.Job, t textInput, key string) (store.Ref, error) {
	dir := job.Recipe.Model
	tok, err := tokenizer.Load(dir)
	if err != nil {
		return store.Ref{}, badInput(fmt.Errorf("%s data %s: %w", t.what, t.file.Path, err))
	}
	eos, ok := tok.EOS()
	if !ok {
		return store.Ref{}, badInput(fmt.Errorf("%s data %s: the tokenizer of %s has no eos_token: packing text needs one between documents", t.what, t.file.Path, dir))
	}
	prefix, _ := tok.SpecialTokens()
	var st calib.TextStats
	ref, err := a.Store.Create(key, func(tmp string) error {
		var err error
		st, err = calib.ImportText(calib.TextImport{
			From: t.file.Path, Column: t.column, Out: tmp,
			Encoder: tok, EOS: eos, Prefix: prefix, SeqLen: t.seqLen, Sequences: t.n,
		})
		var fe *calib.FormatError
		switch {
		case errors.As(err, &fe):
			return badInput(fmt.Errorf("%s data: %w", t.what, err))
		case err != nil:
			return err
		case st.Rows < int64(t.n):
			return badInput(fmt.Errorf("%s data %s (column %q): %d documents give %d tokens, %d sequences of %d tokens; the recipe asks for %d",
				t.what, t.file.Path, t.column, st.Docs, st.Tokens, st.Rows, t.seqLen, t.n))
		}
		return nil
	})
	if err != nil {
		return store.Ref{}, a.storeError(inputError(err))
	}
	a.log().Info("tokenized", "job", job.ID, "data", t.what, "file", t.file.Path, "documents", st.Docs, "tokens", st.Tokens, "sequences", st.Rows, "artifact", short(ref.SHA256))
	return ref, nil
}

// dataset opens the token rows of a job's data (a text dataset's from the
// store) and checks that it has n of them.
func (a *Activities) dataset(job recipe.Job, t textInput, isText bool) (*calib.Dataset, store.Ref, error) {
	path, ref := t.file.Path, store.Ref{}
	if isText {
		var err error
		if path, ref, err = a.textData(job, t); err != nil {
			return nil, ref, err
		}
	} else if err := checkInputs([]recipe.File{t.file}); err != nil {
		return nil, ref, err
	}
	ds, err := calib.Open(path)
	if err != nil {
		return nil, ref, inputError(err)
	}
	if have := ds.NumSequences(); isText && have < int64(t.n) {
		ds.Close()
		return nil, ref, badInput(fmt.Errorf("%s data %s gives %d sequences; the recipe asks for %d", t.what, t.file.Path, have, t.n))
	}
	return ds, ref, nil
}
