"""Run directories and atomic files."""

from __future__ import annotations

import json
import os
import sys

from runner import runs


def test_run_dirs_are_unique_in_the_same_second(tmp_path):
    dirs = [runs.create_run_dir(tmp_path, "x", "abcd1234") for _ in range(3)]
    assert len(set(dirs)) == 3 and all(d.is_dir() for d in dirs)
    assert dirs[0].name.startswith("x-") and dirs[0].name.endswith("-abcd1234")


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "report.json"
    runs.write_json_atomic(target, {"a": 1})
    runs.write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["report.json"]


def test_jsonl_reader_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert runs.read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]
    assert runs.read_jsonl(tmp_path / "none.jsonl") == []


def test_environment_records_versions_and_device():
    env = runs.environment_info()
    for key in ("python", "tensorflow", "keras", "device", "device_facts", "packages"):
        assert env[key]
    # The Keras that trains: tf.keras's own version (the keras package, or tf-keras when asked for).
    import tensorflow as tf

    keras_module = sys.modules[tf.keras.Model.__module__.split(".")[0]]
    assert env["keras"].split(" ")[0] == keras_module.__version__
    assert env["tensorflow"] == tf.__version__ and env["supported"]["ok"]
