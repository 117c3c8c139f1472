"""What a run recorded and how it is shown.

`report.py` holds the typed, versioned models of the files runner writes for others to read
(report.json, comparison.json, sweep.json, study.json, export.json), their JSON Schemas and the
migration of older versions; `record.py` turns a run's state into report.json; `compare.py` reads
finished runs back and lays them side by side; `parity.py` gives each point's mean over seeds and the
verdict of `max_accuracy_drop_vs`; `views.py` renders runs, checks, environments and comparisons in a terminal
(rich: only the CLI imports it); `documents.py` writes report.md/.html and comparison.md/.html, with
`plots.py`'s inline SVG; `tracking.py` logs finished runs to MLflow (an optional extra).

Imports: spec, compat, runs, events, memory, precision, training, preflight.
"""
