"""The three proxy tasks, with no I/O: geometry over numpy arrays, item contents and prompts.

`geometry` holds the pure task functions (crops, tiles, pasted cells),
`items` turns images into an item's content and Parquet row, and `prompts`
the Direct / CoT questions and canonical answers.
"""
