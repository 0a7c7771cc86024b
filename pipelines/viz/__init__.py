"""`raylift viz {anim,curves,results}`: what a person looks at.

- `commands.py`: the command: skeleton animations, training curves, per-activity result bars.
- `render.py`: skeleton drawing and GIF/MP4 writing (matplotlib, Pillow, ffmpeg when present).
- `plots.py`: training-curve figures, shared with `raylift train`.
"""
