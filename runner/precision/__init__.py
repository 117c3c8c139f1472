"""Precision: the dtype policy and what proves it right.

`policy.py` sets the policy before anything is built and restores it, wraps the optimizer for loss
scaling and audits the dtypes of every layer of a built model; `checks.py` holds the invariants of
DESIGN.md as pure functions over that audit (plain data, so hypothesis can drive them);
`layers.py` gives layers their own policy ([precision.layers], by path pattern);
`fidelity.py` measures what the policy does to one training step's numbers against float32.

Imports: spec, compat, models.
"""
