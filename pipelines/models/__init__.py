"""`raylift models {summary,import}`: the command around the top-level `models` package.

- `tools.py`: parameter and FLOP summaries of a configured model; import of the authors' released
  checkpoints into raylift's checkpoint format.
"""
