"""`raylift two-stage`: the image-to-2D model, its predicted 2D, and a lifter trained on it."""
