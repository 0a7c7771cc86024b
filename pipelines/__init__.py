"""raylift pipelines: the `raylift` CLI, experiment configs, and the Ray jobs behind each command."""

__version__ = "0.1.0"
