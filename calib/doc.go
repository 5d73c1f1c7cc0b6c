// Package calib reads and writes the calibration and evaluation datasets that
// rankzip feeds through a model, and collects activation statistics from them.
//
// # Dataset format
//
// A dataset is a Parquet file with one row per sequence. The column input_ids
// holds the token ids of the sequence as a LIST of INT32; INT64 is accepted on
// read, provided every value fits in an int32. Ids are never negative. An
// optional text column (STRING) may sit next to it; the reader ignores it for
// now (tokenizing text is not implemented yet), and so does every column other
// than input_ids.
//
// Files written by other tools (DuckDB, pyarrow, Spark) read as they are: any
// codec parquet-go supports, any row-group size, data pages v1 or v2, required
// or optional list and element nodes, the standard 3-level LIST
//
//	optional group input_ids (LIST) { repeated group list { optional int32 element; } }
//
// and the legacy 2-level (repeated int32 element inside the group) and bare
// repeated (repeated int32 input_ids) forms. A null list, a null element, a
// negative id or an INT64 id beyond the int32 range is an error naming the file
// and the row.
//
// [Open] reads row group by row group, so memory stays bounded by one row
// group whatever the file size. [Write] and [Writer] produce the standard
// 3-level required LIST<INT32>, zstd-compressed, cut into row groups of a
// bounded number of tokens; the output appears atomically (temporary file in
// the same directory, fsync, rename) and nothing is left behind on error.
// [ImportJSONL] converts {"input_ids": [...]} lines into such a file.
package calib
