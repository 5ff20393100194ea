"""Files for the tools researchers already use: training exports (ms-swift, generic JSONL) and previews."""
