"""`bench sweep`: a grid of runs (methods x seeds x settings) submitted as submitit jobs.

- :mod:`bench.sweep.spec`   the YAML spec as typed dataclasses, the grid it expands to, its checks;
- :mod:`bench.sweep.state`  the sweep directory (spec copy, grid, each cell's jobs and run), cell status;
- :mod:`bench.sweep.launch` submitit executors (local, SLURM) and the job each cell runs.

The command line is ``bench/commands/sweep.py``; ``docs/scale.md`` shows the commands.
"""
