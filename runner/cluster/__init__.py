"""One spec trained by several workers: `launch.py` starts N worker processes on this machine
(`runner launch`), `ray.py` runs them as Ray Train workers on a local Ray cluster (`python -m
runner.cluster.ray`). Real clusters start their workers themselves (docs/distributed.md); how a
worker finds its peers is training/distribution.py's.

Imports: spec, runs, processes, exits, training, session, sweeps.
"""
