"""Before training: the gate every run passes and the choices runner measures instead of assuming.

`gate.py` enters a run's scopes (device and strategy, dtype policy, seeds), builds the model and
runs the preflight (the audit of every layer, one probed training step, the numerics against
float32); `speed.py` times training steps per policy, with XLA and without, on this machine;
`choices.py` turns those timings into the automatic choices (`jit_compile = "auto"`, `policy =
"auto"`, the warning that a policy is slow here) and records their figures; `check.py` is
`runner check`: all of the above, and nothing trained; `fix.py` is `runner check --fix`: the
smallest [precision.layers] override that removes an overflow inside attention, proven by checking
again with it, mixed_bfloat16 measured beside it.

Imports: spec, compat, runs, exits, memory, data, precision, training.
"""
