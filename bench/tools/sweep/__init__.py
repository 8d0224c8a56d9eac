"""`bench sweep`: a grid of runs (methods x seeds x settings) submitted as submitit jobs.

- :mod:`bench.tools.sweep.spec`   the YAML spec as typed dataclasses, the grid it expands to, its checks;
- :mod:`bench.tools.sweep.state`  the sweep directory (spec copy, grid, each cell's jobs and run), cell status;
- :mod:`bench.tools.sweep.launch` submitit executors (local, SLURM) and the job each cell runs.

The command line is ``bench/cli/commands/sweep.py``; ``docs/scale.md`` shows the commands.
"""
