"""raylift models: 3D pose lifting transformers, shared layers, checkpoints and official imports."""
