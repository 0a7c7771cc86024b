"""`raylift tune`: Ray Tune over any config key, each trial a Ray Train run.

    base config × search space (space.py) → one dataset per distinct `data.*` variant
    → Tune trials (driver.py: a Ray Train run each, ASHA early stopping) → trials table, plot, best.yaml
"""
