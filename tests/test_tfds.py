"""source = "tfds": a dataset in the real TFDS format, built here once into a data_dir (a
GeneratorBasedBuilder, prepared offline), read back as a user's prepared dataset is (from its files, without
its code); bad datasets, splits and features refused by name; nothing downloaded unless allowed; a clear
message without the optional extra."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from runner.cli import app
from runner.data.files import DataError
from runner.data.sources import load_splits
from runner.spec import DataSpec, SpecError, spec_from_dict
from tests.conftest import ROOT, TINY_SPEC

cli = CliRunner()
NAME = "runner_tiny_colours"
CLASSES = ("red", "green", "blue")
COUNTS = {"train": 90, "test": 30}


def _colours(n: int, seed: int) -> list[dict[str, Any]]:
    """Examples of every feature kind the checks tell apart; class k's images are bright in channel k."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        image = rng.integers(0, 60, (8, 8, 3), dtype=np.uint8)
        image[..., i % 3] += 150
        side = 4 + i % 5
        examples.append(
            {
                "image": image,
                "photo": rng.integers(0, 256, (side, side + 1, 3), dtype=np.uint8),  # sizes vary
                "depth": np.full((8, 8, 1), i, np.uint16),
                "caption": f"example {i}",
                "score": i,
                "label": i % 3,
                "single": 0,
            }
        )
    return examples


def colours_builder(tfds: Any) -> type:
    """A TFDS dataset of two configs: "keyed" (supervised_keys image, label) and "unkeyed" (none).
    Defined without registering it, so TFDS finds it the way it finds a user's prepared dataset: by its
    files in data_dir alone."""

    with tfds.core.registered.skip_registration():

        class RunnerTinyColours(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")
            BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="keyed"), tfds.core.BuilderConfig(name="unkeyed")]

            def _info(self) -> Any:
                features = tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(8, 8, 3)),
                        "photo": tfds.features.Image(shape=(None, None, 3)),
                        "depth": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint16),
                        "caption": tfds.features.Text(),
                        "score": tfds.features.Scalar(dtype=np.int64),
                        "label": tfds.features.ClassLabel(names=CLASSES),
                        "single": tfds.features.ClassLabel(names=["only"]),
                    }
                )
                keys = ("image", "label") if self.builder_config.name == "keyed" else None
                return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=keys)

            def _split_generators(self, dl_manager: Any) -> Any:
                return {
                    split: self._generate_examples(n, seed) for seed, (split, n) in enumerate(COUNTS.items())
                }

            def _generate_examples(self, n: int, seed: int) -> Any:
                yield from enumerate(_colours(n, seed))

    return RunnerTinyColours


@pytest.fixture(scope="module")
def tfds() -> Any:
    return pytest.importorskip("tensorflow_datasets")


@pytest.fixture(scope="module")
def data_dir(tfds, tmp_path_factory) -> Path:
    """Both configs prepared once, offline (about 2 s), each split in 3 files as a large dataset's are:
    the order they are read in then shows."""
    root = tmp_path_factory.mktemp("tfds")
    shards = tfds.download.DownloadConfig(num_shards=3)
    for config in ("keyed", "unkeyed"):
        colours_builder(tfds)(config=config, data_dir=str(root)).download_and_prepare(download_config=shards)
    return root


@pytest.fixture
def no_network(monkeypatch) -> list[Any]:
    """Every attempt to resolve a host or open a connection, recorded and refused."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args[1:] if args and isinstance(args[0], socket.socket) else args)
        raise OSError("network access refused by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def _spec(data_dir: Path, **fields: Any) -> DataSpec:
    return DataSpec(source="tfds", name=f"{NAME}/keyed", data_dir=str(data_dir), batch_size=8, **fields)


def _expected(split: str) -> list[tuple[bytes, int]]:
    """What a split holds, order aside (TFDS shuffles examples as it prepares them)."""
    n, seed = COUNTS[split], list(COUNTS).index(split)
    return sorted((e["image"].tobytes(), e["label"]) for e in _colours(n, seed))


def _held(images: np.ndarray, labels: np.ndarray) -> list[tuple[bytes, int]]:
    return sorted((x.tobytes(), int(y)) for x, y in zip(images, labels, strict=True))


# ---------------------------------------------------------------- reading


def test_the_splits_are_read_whole_as_uint8_with_the_class_names(data_dir):
    splits = load_splits(_spec(data_dir, validation_fraction=0.1), seed=0)
    assert (splits.input_shape, splits.num_classes) == ((8, 8, 3), 3)
    assert [splits.count(s) for s in ("train", "validation", "test")] == [81, 9, 30]
    held = splits.held
    assert held.x_train.dtype == np.uint8 and held.y_train.dtype == np.int32
    train = _held(np.concatenate([held.x_train, held.x_val]), np.concatenate([held.y_train, held.y_val]))
    assert train == _expected("train") and _held(held.x_test, held.y_test) == _expected("test")
    summary = splits.summary()
    assert summary["class_names"] == list(CLASSES)
    assert summary["counts"]["test"] == {"red": 10, "green": 10, "blue": 10}
    assert summary["tfds"]["name"] == f"{NAME}/keyed/1.0.0"
    assert summary["tfds"]["splits"] == {"train": "train", "test": "test"}


def test_reading_is_deterministic_and_train_size_reads_the_splits_first_examples(data_dir):
    whole = load_splits(_spec(data_dir, validation_fraction=0), seed=0).held
    again = load_splits(_spec(data_dir, validation_fraction=0), seed=1).held  # the seed plays no part
    np.testing.assert_array_equal(whole.x_train, again.x_train)
    first = load_splits(_spec(data_dir, validation_fraction=0, train_size=20, test_size=5), seed=0).held
    np.testing.assert_array_equal(first.x_train, whole.x_train[:20])
    np.testing.assert_array_equal(first.y_test, whole.y_test[:5])
    sliced = load_splits(_spec(data_dir, validation_fraction=0, train_split="train[:20]"), seed=0).held
    np.testing.assert_array_equal(sliced.x_train, whole.x_train[:20])


def test_images_that_vary_in_size_are_resized_to_image_size(data_dir):
    spec = _spec(data_dir, image_key="photo", label_key="label", image_size=[6, 4], train_split="train[:50%]")
    splits = load_splits(spec, seed=0)
    assert splits.input_shape == (6, 4, 3) and splits.held.x_test.shape == (30, 6, 4, 3)
    assert splits.count("train") + splits.count("validation") == 45
    assert splits.summary()["notes"] == ["images resized from ?×? to 6×4 (bilinear, no crop)"]


def test_loading_reads_only_metadata_without_importing_tensorflow(data_dir):
    """Reading starts TensorFlow's runtime, after which a strategy cannot configure devices or
    collectives: the images wait for first use, the checks do not."""
    code = (
        "import sys; from runner.data.sources import load_splits; from runner.spec import DataSpec; "
        f"s = load_splits(DataSpec(source='tfds', name='{NAME}/keyed', data_dir=sys.argv[1]), 0); "
        "print(s.input_shape, s.num_classes, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(data_dir)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.split("\n")[0] == "(8, 8, 3) 3 False"


def test_a_train_split_smaller_than_a_batch_is_refused_before_any_image_is_read(data_dir):
    with pytest.raises(
        DataError, match="data: 4 training images after the validation split; expected at least"
    ):
        load_splits(_spec(data_dir, train_split="train[:4]", validation_fraction=0), seed=0)


# ---------------------------------------------------------------- bad datasets: exit 2, one message


def _spec_file(write_spec, data_lines: str) -> str:
    text = TINY_SPEC.replace('source = "shapes"', data_lines).replace("epochs = 2", "epochs = 1")
    return str(write_spec(text))


def _run(write_spec, tmp_path, data_lines: str) -> Any:
    return cli.invoke(app, ["run", _spec_file(write_spec, data_lines), "--output", str(tmp_path / "out")])


def _tfds_lines(data_dir: Path, **fields: Any) -> str:
    fields = {"name": f"{NAME}/keyed", "data_dir": str(data_dir)} | fields
    return 'source = "tfds"\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())


# fields of [data] → what the one message must hold
BAD_DATASETS = {
    "unknown-name": ({"name": "no_such_dataset"}, 'data.name: "no_such_dataset" is not a dataset in'),
    "unknown-config": ({"name": f"{NAME}/other"}, f'data.name: "{NAME}/other" is not a dataset in'),
    "unknown-version": ({"name": f"{NAME}/keyed:9.9.9"}, f"it holds {NAME}/keyed/1.0.0, {NAME}/unkeyed"),
    "missing-split": ({"test_split": "validation"}, 'data.test_split: "validation" is not a split of'),
    "bad-slice": ({"train_split": "train[200:]"}, 'data.train_split: "train[200:]" is not a split of'),
    "empty-split": ({"train_split": "train[:0]"}, 'data.train_split: "train[:0]" of'),
    "text-image": (
        {"image_key": "caption", "label_key": "label"},
        'data.image_key: "caption" of "runner_tiny_colours/keyed/1.0.0" is Text; expected Image',
    ),
    "scalar-label": ({"image_key": "image", "label_key": "score"}, '"score" of'),
    "absent-feature": (
        {"image_key": "image", "label_key": "nope"},
        'data.label_key: "nope" is not a feature',
    ),
    "uint16-image": ({"image_key": "depth", "label_key": "label"}, "images are uint16; expected uint8"),
    "varying-size": (
        {"image_key": "photo", "label_key": "label"},
        'data.image_size: "runner_tiny_colours/keyed/1.0.0" images vary in size (shape (None, None, 3))',
    ),
    "one-class": ({"image_key": "image", "label_key": "single"}, "has 1 class; expected at least two"),
    "no-supervised-keys": (
        {"name": f"{NAME}/unkeyed"},
        "has no (image, label) supervised_keys; expected data.image_key and data.label_key",
    ),
    "download-offline": (
        {"name": "mnist", "download": True},
        'data.download: "mnist" is not prepared in data_dir',
    ),
}


@pytest.mark.parametrize("bad", BAD_DATASETS)
def test_a_bad_dataset_is_exit_2_with_one_message(data_dir, write_spec, no_network, bad):
    fields, message = BAD_DATASETS[bad]
    result = cli.invoke(app, ["validate", _spec_file(write_spec, _tfds_lines(data_dir, **fields)), "--data"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("error:") == 1
    assert "Traceback" not in result.output and no_network == []


def test_a_damaged_record_file_is_exit_2_naming_the_split(data_dir, write_spec, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    (first, *_) = sorted((copy / NAME / "keyed" / "1.0.0").glob("*-test.tfrecord-*"))
    first.write_bytes(first.read_bytes()[:100])  # cut short, as an interrupted copy leaves it
    result = cli.invoke(app, ["validate", _spec_file(write_spec, _tfds_lines(copy)), "--data"])
    assert result.exit_code == 2, result.output
    assert f'data.test_split: "test" of "{NAME}/keyed/1.0.0" in' in result.stderr
    assert "cannot be read" in result.stderr and "Traceback" not in result.output


def test_runner_run_on_a_bad_dataset_is_exit_2_and_leaves_no_run_directory(data_dir, write_spec, tmp_path):
    result = _run(write_spec, tmp_path, _tfds_lines(data_dir, test_split="validation"))
    assert result.exit_code == 2, result.output
    assert 'data.test_split: "validation" is not a split of' in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_an_absent_dataset_is_never_downloaded_unless_allowed(tfds, tmp_path, monkeypatch, no_network):
    """A dataset whose code TFDS has (mnist here, this test's own builder next) but not its files: with
    download = false (the default) exit 2 at once, nothing fetched and nothing written."""
    empty = tmp_path / "empty"
    empty.mkdir()
    mnist = DataSpec(source="tfds", name="mnist", data_dir=str(empty))
    with pytest.raises(DataError, match=r'"mnist" is not prepared in data_dir .*\n.*tfds build mnist'):
        load_splits(mnist, seed=0)
    builder = colours_builder(tfds)
    monkeypatch.setitem(tfds.core.registered._DATASET_REGISTRY, NAME, builder)  # its code, registered
    with pytest.raises(DataError, match="data.download is false, so nothing was downloaded"):
        load_splits(_spec(empty), seed=0)
    assert list(empty.iterdir()) == [] and no_network == []
    monkeypatch.delenv("RUNNER_OFFLINE")
    splits = load_splits(_spec(empty, download=True), seed=0)  # prepared by its generator: no network
    assert splits.count("test") == 30 and (empty / NAME / "keyed" / "1.0.0" / "dataset_info.json").exists()


def test_without_the_extra_one_message_names_the_install(write_spec, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import tensorflow_datasets` fails
    result = _run(write_spec, tmp_path, 'source = "tfds"\nname = "mnist"')
    assert result.exit_code == 2, result.output
    assert "expected the tensorflow-datasets package (the optional extra: pip install -e '.[tfds]')" in (
        result.stderr
    )
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- the spec's fields


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            {"source": "tfds"}, 'data.name: expected the TFDS dataset name for source = "tfds"', id="no-name"
        ),
        pytest.param(
            {"source": "tfds", "name": "huggingface:mnist"},
            "data.name: expected a TFDS dataset name",
            id="namespace",
        ),
        pytest.param(
            {"source": "tfds", "name": "mnist", "path": "x"}, "data.path: expected data.data_dir", id="path"
        ),
        pytest.param(
            {"source": "tfds", "name": "mnist", "image_key": "image"},
            "data.image_key: expected image_key and label_key together",
            id="image-key-alone",
        ),
        pytest.param(
            {"source": "shapes", "data_dir": "x"},
            'data.data_dir: expected only with source = "tfds"',
            id="other-source",
        ),
        pytest.param(
            {"source": "npz", "path": "x.npz", "image_size": [8, 8]},
            'data.image_size: expected only with source = "image_folder" or "tfds"',
            id="image-size-npz",
        ),
    ],
)
def test_the_spec_refuses_tfds_fields_out_of_place(data, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        spec_from_dict({"name": "t", "data": data})


def test_validate_refuses_a_tfds_spec_without_a_name_and_reads_a_good_one_with_data(data_dir, write_spec):
    bad = cli.invoke(app, ["validate", str(write_spec('name = "t"\n[data]\nsource = "tfds"\n'))])
    assert bad.exit_code == 2 and "data.name: expected the TFDS dataset name" in bad.stderr
    good = write_spec(TINY_SPEC.replace('source = "shapes"', _tfds_lines(data_dir)), "good.toml")
    result = cli.invoke(app, ["validate", str(good), "--data"])
    assert result.exit_code == 0, result.output
    assert "data tfds: 3 classes, 81 train, 9 validation, 30 test" in result.stdout


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_runner_run_on_a_tfds_dataset_completes_and_reports_its_classes(data_dir, write_spec, tmp_path):
    result = _run(write_spec, tmp_path, _tfds_lines(data_dir))
    assert result.exit_code == 0, result.output
    (report,) = (tmp_path / "out").glob("*/report.json")
    data = json.loads(report.read_text())["data"]
    assert data["class_names"] == list(CLASSES) and data["input_shape"] == [8, 8, 3]
    assert data["tfds"]["name"] == f"{NAME}/keyed/1.0.0" and data["train"] == 81
