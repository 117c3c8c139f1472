#!/usr/bin/env bash
# CI: this project's tests, and every experiment spec in specs/ as a test item (preflight, or a
# training run with its [checks] where a spec sets run_in_tests), with a JUnit report for the CI.
set -euo pipefail
python -m pytest --runner-specs specs --junitxml=test-results.xml
