"""raylift models: one file per paper's model, the layers they share, checkpoints and imports.

    worker batch (B, T, J, 2) → model (mixste, poseformer, crossformer, fusionformer, multiview)
    → (B, T, J, 3) or (B, 1, J, 3) → losses.py → optimiser;  checkpoint.py ⇄ disk

- `registry.py`: model names → classes and their validated config dataclasses.
- `layers.py`: attention, MLP, blocks, drop-path shared by the transformer models.
- `losses.py`: MPJPE-family training losses per model, as each paper's code defines them.
- `checkpoint.py`: raylift's checkpoint format (weights + meta.json), loaded without pickled code.
- `convert.py`: the authors' released checkpoints → raylift's models, key by key (one engine).
- `official.py`: the spec (`OfficialCheckpoint`) each model file exports for `convert.py`: its key
  tables and how its config is read off the official weights.
"""
