"""raylift preprocessing: dataset sources, cameras and skeletons, windowing, Parquet shards."""
