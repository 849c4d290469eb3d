"""The batch machinery: storage (local or fsspec), image decode/encode, and the archive's shards and Parquet rows."""
