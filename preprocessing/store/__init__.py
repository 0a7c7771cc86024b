"""Where dataset bytes live and how they are written and read back, for every kind of dataset:
`storage` (local paths and object-store URIs), `lease` (one writer per dataset id or run
directory), `manifest` (the mark of a complete dataset), `writer` (the one shard writer and
publisher), `parquet` (checked Parquet reads, the Ray Data datasource, shuffled batches) and
`dataset` (the `Dataset` handle of a prepared dataset)."""
