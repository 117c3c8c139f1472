"""Cluster membership: TF_CONFIG as cluster managers write it, TensorFlow's chief rule, Slurm through
TensorFlow's own resolver, and a local cluster on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.training import distribution
from runner.training.distribution import ClusterConfig, ClusterError, parse_tf_config

TWO = {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}


def tf_config(cluster, kind="worker", index=0) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


def test_a_tf_config_as_kubeflow_or_ray_write_it():
    config = parse_tf_config(tf_config(TWO, "worker", 1))
    assert config == ClusterConfig(TWO, "worker", 1)
    assert config.num_workers == 2 and not config.is_chief and config.worker_rank == 1


BAD = {
    "unset": (None, "TF_CONFIG is not set"),
    "blank": ("  ", "TF_CONFIG is not set"),
    "not_json": ("{cluster: 1}", "TF_CONFIG: expected JSON"),
    "not_an_object": ("[1, 2]", 'TF_CONFIG: expected {"cluster": ..., "task": ...}'),
    "no_cluster": (
        json.dumps({"task": {"type": "worker", "index": 0}}),
        "TF_CONFIG: cluster: expected a table",
    ),
    "parameter_server": (tf_config({"worker": ["a:1"], "ps": ["b:2"]}), "got ps (parameter servers"),
    "empty_list": (tf_config({"worker": []}), 'cluster.worker: expected a non-empty list of "host:port"'),
    "no_port": (
        tf_config({"worker": ["localhost"]}),
        'cluster.worker: expected "host:port" addresses; got "localhost"',
    ),
    "port_too_large": (tf_config({"worker": ["h:70000"]}), 'got "h:70000"'),
    "two_chiefs": (tf_config({"chief": ["a:1", "b:1"]}, "chief"), "expected at most one chief; got 2"),
    "same_address": (tf_config({"chief": ["a:1"], "worker": ["a:1"]}, "chief"), "a:1 appears twice"),
    "unknown_type": (tf_config(TWO, "evaluator"), 'task.type: expected one of worker; got "evaluator"'),
    "index_out_of_range": (tf_config(TWO, "worker", 2), "task.index: expected 0..1 for the 2 worker task(s)"),
    "negative_index": (tf_config(TWO, "worker", -1), "got -1"),
    "index_not_int": (tf_config(TWO, "worker", "0"), 'got "0"'),
    "no_task": (json.dumps({"cluster": TWO}), "task: expected"),
}


@pytest.mark.parametrize(("text", "message"), BAD.values(), ids=BAD.keys())
def test_a_tf_config_that_cannot_train_is_one_clear_error(text, message):
    with pytest.raises(ClusterError) as raised:
        parse_tf_config(text)
    assert message in str(raised.value) and "\n" not in str(raised.value)


clusters = st.builds(
    lambda chief, workers: (
        ({"chief": ["10.0.0.1:2000"]} if chief else {})
        | {"worker": [f"10.0.1.{i}:2000" for i in range(workers)]}
    ),
    st.booleans(),
    st.integers(1, 6),
)


@given(clusters)
def test_exactly_one_task_is_chief_and_it_is_tensorflows(cluster):
    """runner's rule against TensorFlow's own (multi_worker_util.is_chief), for every task."""
    from tensorflow.python.distribute import multi_worker_util

    tasks = [(kind, i) for kind, addresses in cluster.items() for i in range(len(addresses))]
    configs = [parse_tf_config(tf_config(cluster, kind, i)) for kind, i in tasks]
    assert sum(c.is_chief for c in configs) == 1
    for config in configs:
        assert config.is_chief == multi_worker_util.is_chief(cluster, config.task_type, config.task_index)
        assert parse_tf_config(config.to_tf_config()) == config
    assert sorted(c.worker_rank for c in configs) == list(range(len(configs)))


SLURM_STEP = {  # what srun sets for task 3 of 4: two nodes, two tasks each
    "SLURM_PROCID": "3",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_STEP_NODELIST": "node[01-02]",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
}


def test_a_slurm_job_step_is_laid_out_as_tensorflows_resolver_does(monkeypatch):
    """TensorFlow's SlurmClusterResolver needs a GPU on every node (range step 0 otherwise): given one
    GPU per task to satisfy it, its cluster and task are runner's."""
    from tensorflow.python.distribute.cluster_resolver import slurm_cluster_resolver as slurm

    config = distribution.from_environment("slurm", SLURM_STEP)
    assert config.cluster["worker"] == ["node01:8888", "node01:8889", "node02:8888", "node02:8889"]
    assert (config.task_type, config.task_index, config.num_workers, config.is_chief) == (
        "worker",
        3,
        4,
        False,
    )
    for name, value in SLURM_STEP.items():
        monkeypatch.setenv(name, value)
    reference = slurm.SlurmClusterResolver(gpus_per_node=2, gpus_per_task=1, auto_set_gpu=False)
    assert reference.cluster_spec().as_dict() == config.cluster
    assert (reference.task_type, reference.task_id) == (config.task_type, config.task_index)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["n", "gpu-", "a1b"]), st.integers(0, 30), st.integers(0, 5), st.integers(1, 3)
        ),
        min_size=1,
        max_size=4,
    )
)
def test_hostlists_expand_as_tensorflow_expands_them(groups):
    from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import expand_hostlist

    text = ",".join(
        f"{prefix}[{str(start).zfill(width)}-{start + length}]" for prefix, start, length, width in groups
    )
    assert distribution.expand_hostlist(text) == expand_hostlist(text)
    assert distribution.expand_hostlist("n[1-2],m5,o[08-10]") == ["n1", "n2", "m5", "o08", "o09", "o10"]


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({}, "SLURM_PROCID is not set; expected a process started by srun"),
        ({**SLURM_STEP, "SLURM_PROCID": "x"}, "SLURM_PROCID: expected a number"),
        ({**SLURM_STEP, "SLURM_STEP_TASKS_PER_NODE": "2(y2)"}, 'expected counts like "2(x3),1"'),
        ({**SLURM_STEP, "SLURM_PROCID": "4"}, "task.index: expected 0..3 for the 4 worker task(s)"),
    ],
    ids=["outside_srun", "bad_rank", "bad_tasks_per_node", "rank_out_of_range"],
)
def test_a_slurm_step_that_cannot_train_is_one_clear_error(variables, message):
    with pytest.raises(
        ClusterError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        distribution.from_environment("slurm", variables)


def test_tf_config_from_the_environment(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", tf_config(TWO, "worker", 0))
    assert distribution.from_environment("tf_config").is_chief


def test_a_local_cluster_has_one_free_port_per_worker_on_loopback():
    configs = distribution.local_cluster(3)
    addresses = configs[0].cluster["worker"]
    assert len(set(addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)
    assert [c.task_index for c in configs] == [0, 1, 2] and [c.is_chief for c in configs] == [
        True,
        False,
        False,
    ]
    assert all(parse_tf_config(c.to_tf_config()) == c for c in configs)
    with pytest.raises(ClusterError, match="--workers: expected at least 1; got 0"):
        distribution.local_cluster(0)
