"""`bench doctor`: checks a machine before a long run, as library code.

- :mod:`bench.tools.doctor.checks`: one check's result, a check that raises as a failed one, the table;
- :mod:`bench.tools.doctor.environment`: versions, device, precision flags, free memory;
- :mod:`bench.tools.doctor.one_step`: one step from the seed's weights and the fast path's tolerances
  (also used by ``tests/test_fast_path.py``);
- :mod:`bench.tools.doctor.steps`: fast vs plain, compiled vs eager, host sync, peak memory, throughput;
- :mod:`bench.tools.doctor.evaluation`: the evaluation runs fp32 in eval mode;
- :mod:`bench.tools.doctor.process_group`: a 1-rank process group reducing the logged values;
- :mod:`bench.tools.doctor.run`: the options and the order the checks run in.
"""
