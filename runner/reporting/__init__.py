"""What a run recorded and how it is shown.

`record.py` turns a run's typed state into report.json; `compare.py` reads finished runs back and
lays them side by side; `views.py` renders runs, checks, environments and comparisons in a terminal
(rich: only the CLI imports it); `documents.py` writes report.md/.html and comparison.md/.html, with
`plots.py`'s inline SVG; `tracking.py` logs finished runs to MLflow (an optional extra).

Imports: spec, compat, runs, events, memory, precision, training, preflight.
"""
