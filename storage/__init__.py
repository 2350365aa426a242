"""Parquet schemas, atomic shard writer, streaming reader and the knowledge cache."""
