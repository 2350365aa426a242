"""Parquet schemas and the knowledge column contract, durable I/O and digests, ragged arrays,
the atomic shard writer, the numpy streaming reader and the knowledge cache (no torch here)."""
