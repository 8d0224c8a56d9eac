"""Models trained elsewhere (e.g. the RobustBench zoo), evaluated under this benchmark's protocols.

``external.py`` wraps any classifier as an energy model and keeps its results in a run record of
``kind: "external"``; ``robustbench.py`` loads RobustBench zoo models from a local folder.
"""
