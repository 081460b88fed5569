"""`rafale sweep`: one ordinary run per point of a grid of config values, and a table of their results.

    points.py    the grid, its product or a random draw, each point's name and validated config
    runner.py    run the points one at a time (in this process, or under torchrun), skip finished ones
    results.py   results.csv and results.png, rebuilt from the points' files; the best point per group
"""

from rafale.sweep.runner import plan_sweep, print_points, run_sweep

__all__ = ["plan_sweep", "print_points", "run_sweep"]
