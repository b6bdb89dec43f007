"""The pipeline: per-speaker sessions fed on a clock, grouped into rooms (source + output + captions)."""
