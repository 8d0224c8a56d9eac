"""`bench sweep`: a grid of runs submitted through submitit, one run per cell, whose run records are
the cells' state. ``spec.py`` reads the YAML spec, ``grid.py`` expands it, ``state.py`` reads where
each cell stands, ``launch.py`` holds the job and the executors, ``submit.py`` the commands; see
docs/scale.md."""
