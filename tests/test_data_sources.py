"""The array sources: `npz` (the user's own arrays) and `cifar100` (the real python archive, made small
here in its original format). Every bad array is one DataError naming the file and the array."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from typer.testing import CliRunner

from runner.cli import app
from runner.data import archives, npz
from runner.data.archives import keras_cache
from runner.data.files import DataError
from runner.data.sources import LOADERS, Source, load_splits
from runner.session import run_experiment
from runner.spec import DataSpec, SourceName, SpecError, load_spec, spec_from_dict
from tests.conftest import ROOT, TINY_SPEC
from tests.test_data import DROPPED_CONNECTIONS, _fake_urlopen, unpack

cli = CliRunner()
RNG = np.random.default_rng(0)


def test_every_source_a_spec_can_name_has_a_loader():
    assert set(LOADERS) == set(get_args(SourceName))


@pytest.mark.parametrize("source", ["shapes", "npz"])
def test_array_sources_give_the_source_interface(source, tmp_path):
    """What a run asks of its data, whatever the source: the Protocol's members, present and typed."""
    path = write_npz(tmp_path / "d.npz", **good_arrays()) if source == "npz" else None
    spec = DataSpec(source=source, path=path and str(path), train_size=48, test_size=16, batch_size=8)
    splits: Source = load_splits(spec, seed=0)
    assert splits.source == source and splits.num_classes >= 2 and len(splits.input_shape) == 3
    assert splits.count("train") + splits.count("validation") == 48 and splits.count("test") == 16
    assert list(splits.undecodable()) == [] and splits.explain(ValueError("x")) is None
    assert splits.summary()["train"] == splits.count("train")


def _images(n: int, shape: tuple[int, ...] = (8, 8, 3)) -> np.ndarray:
    return RNG.integers(0, 256, (n, *shape), dtype=np.uint8)


def _labels(n: int, classes: int = 4) -> np.ndarray:
    return np.arange(n) % classes  # every class present, so num_classes = classes


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def good_arrays(n: int = 60, n_test: int = 20) -> dict[str, np.ndarray]:
    return {
        "x_train": _images(n),
        "y_train": _labels(n),
        "x_test": _images(n_test),
        "y_test": _labels(n_test),
    }


def _npz_spec(path: Path, **fields) -> DataSpec:
    return DataSpec(source="npz", path=str(path), batch_size=8, **fields)


# ---------------------------------------------------------------- npz: good files


def test_npz_nhwc_uint8_loads_as_is(tmp_path):
    arrays = good_arrays()
    splits = load_splits(_npz_spec(write_npz(tmp_path / "d.npz", **arrays), validation_fraction=0.25), seed=0)
    assert splits.input_shape == (8, 8, 3) and splits.num_classes == 4
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (45, 15, 20)
    assert splits.x_train.dtype == np.uint8 and splits.y_train.dtype == np.int32
    np.testing.assert_array_equal(splits.x_test, arrays["x_test"])
    assert "notes" not in splits.summary()


def test_npz_nhw_images_get_one_channel_and_labels_of_shape_n_1_are_accepted(tmp_path):
    arrays = good_arrays() | {"x_train": _images(60, (6, 5)), "x_test": _images(20, (6, 5))}
    arrays["y_train"] = arrays["y_train"].reshape(-1, 1).astype(np.uint8)
    splits = load_splits(_npz_spec(write_npz(tmp_path / "d.npz", **arrays)), seed=0)
    assert splits.input_shape == (6, 5, 1)
    np.testing.assert_array_equal(splits.x_test[..., 0], arrays["x_test"])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_npz_float_images_in_0_1_become_uint8_and_the_summary_says_so(tmp_path, dtype):
    arrays = good_arrays()
    expected = arrays["x_train"]
    arrays["x_train"] = (expected / 255).astype(dtype)
    splits = load_splits(_npz_spec(write_npz(tmp_path / "d.npz", **arrays), validation_fraction=0), seed=0)
    np.testing.assert_array_equal(splits.x_train, expected)
    (note,) = splits.summary()["notes"]
    assert f"x_train: {np.dtype(dtype).name} images in [0, 1] converted to uint8" in note


def test_npz_without_a_test_split_holds_out_a_seeded_tenth_of_train(tmp_path):
    arrays = good_arrays(n=100)
    path = write_npz(tmp_path / "d.npz", x_train=arrays["x_train"], y_train=arrays["y_train"])
    first, again, other = (load_splits(_npz_spec(path), seed) for seed in (1, 1, 2))
    assert (len(first.y_train) + len(first.y_val), len(first.y_test)) == (90, 10)
    np.testing.assert_array_equal(first.x_test, again.x_test)
    assert not np.array_equal(first.x_test, other.x_test)
    # train + validation + test are x_train, each image once
    together = np.concatenate([first.x_train, first.x_val, first.x_test]).reshape(100, -1)
    assert sorted(map(bytes, together)) == sorted(map(bytes, arrays["x_train"].reshape(100, -1)))
    assert any("no x_test: 10 images of x_train held out as the test split" in n for n in first.notes)
    assert len(load_splits(_npz_spec(path, test_size=30), 1).y_test) == 30  # test_size sets the hold-out


# ---------------------------------------------------------------- npz: bad files, one message each


def _object_array(path: Path) -> Path:
    return write_npz(path, x_train=np.array([{"a": 1}] * 10, dtype=object), y_train=_labels(10))


def _not_a_zip(path: Path) -> Path:
    np.save(path.with_suffix(".npy"), _images(4))  # a bare .npy, not an npz
    return path.with_suffix(".npy")


def _bytes_member(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train", b"not an array")
        archive.writestr("y_train.npy", b"neither")
    return path


def _with(**changes):
    def make(path: Path) -> Path:
        arrays = {k: v for k, v in (good_arrays() | changes).items() if v is not None}
        return write_npz(path, **arrays)

    return make


# (make the file, what the one message must hold)
BAD_NPZ = {
    "float_above_1": (_with(x_train=_images(60) / 128), "x_train: expected (n, H, W) or (n, H, W, C) images"),
    "float_below_0": (_with(x_train=_images(60) / 255 - 0.5), "got float64 values in -0.5"),
    "float_nan": (_with(x_test=np.full((20, 8, 8, 3), np.nan)), "x_test: expected"),
    "int64_images": (_with(x_train=_images(60).astype(np.int64)), "x_train: expected (n, H, W) or"),
    "rank_2_images": (
        _with(x_train=_images(60).reshape(60, -1)),
        "x_train: expected (n, H, W) or (n, H, W, C)",
    ),
    "rank_5_images": (_with(x_test=_images(20)[:, None]), "got shape (20, 1, 8, 8, 3)"),
    "no_images": (_with(x_train=_images(0), y_train=_labels(0)), "got shape (0, 8, 8, 3)"),
    "length_mismatch": (_with(y_train=_labels(59)), "y_train: expected 60 integer labels"),
    "float_labels": (_with(y_train=_labels(60).astype(np.float32)), "y_train: expected 60 integer labels"),
    "text_labels": (_with(y_test=_labels(20).astype(str)), "y_test: expected 20 integer labels"),
    "labels_n_2": (_with(y_train=np.zeros((60, 2), np.int64)), "got shape (60, 2)"),
    "negative_label": (_with(y_train=_labels(60) - 1), "y_train: expected labels in 0..9999"),
    "huge_label": (_with(y_train=_labels(60) + 10**6), "found 1000000..1000003"),
    "test_label_not_in_train": (
        _with(y_test=_labels(20) + 2),
        "y_test: expected labels in 0..3, the classes of",
    ),
    "one_class": (_with(y_train=np.zeros(60, np.int64)), "y_train: expected at least two classes"),
    "no_x_train": (_with(x_train=None), "x_train: missing; expected an .npz file with x_train"),
    "no_y_train": (_with(y_train=None), "found x_train, x_test, y_test"),
    "x_test_alone": (_with(y_test=None), "y_test: missing"),
    "pickled_object": (_object_array, "x_train: expected a numeric array saved without pickle"),
    "not_a_zip": (_not_a_zip, "is not a readable .npz"),
    "bytes_member": (_bytes_member, "x_train: expected (n, H, W) or (n, H, W, C) images, uint8 or floats"),
}


@pytest.mark.parametrize("bad", BAD_NPZ)
def test_a_bad_npz_is_one_data_error_naming_the_file_and_the_array(tmp_path, bad):
    make, message = BAD_NPZ[bad]
    path = make(tmp_path / "d.npz")
    with pytest.raises(DataError) as caught:
        load_splits(_npz_spec(path), seed=0)
    text = str(caught.value)
    assert text.startswith(f'data.path: "{path}"') and message in text
    assert "\n" not in text


def test_npz_without_data_path_or_at_a_fifo_or_over_the_bound(tmp_path, monkeypatch):
    with pytest.raises(DataError, match='data.path: required with data.source = "npz"'):
        load_splits(DataSpec.model_construct(source="npz"), seed=0)  # past the spec's own check
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="is a FIFO"):  # judged by stat: opening it would hang
        load_splits(_npz_spec(fifo), seed=0)
    monkeypatch.setattr(npz, "NPZ_MAX", 1000)
    with pytest.raises(DataError, match="unpacks to|at most 1,000 bytes"):
        load_splits(_npz_spec(write_npz(tmp_path / "d.npz", **good_arrays())), seed=0)


def test_npz_with_too_few_images_to_hold_out_a_test_split(tmp_path):
    path = write_npz(tmp_path / "d.npz", x_train=_images(20), y_train=_labels(20))
    with pytest.raises(DataError, match="x_train has 20 images and no x_test"):
        load_splits(_npz_spec(path, test_size=20), seed=0)


# ---------------------------------------------------------------- cifar100


def make_cifar100_archive(path: Path, n_train: int = 300, n_test: int = 100, seed: int = 0) -> dict:
    """cifar-100-python.tar.gz in the original layout (protocol-2 pickles, bytes keys, (n, 3072) rows,
    labels as lists); returns the expected arrays per split."""
    rng = np.random.default_rng(seed)
    expected = {}
    with tarfile.open(path, "w:gz") as tar:
        for name, n in (("train", n_train), ("test", n_test)):
            images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            fine = np.arange(n) % 100
            coarse = fine // 5
            batch = {
                b"filenames": [f"{i}.png".encode() for i in range(n)],
                b"batch_label": f"{name} batch".encode(),
                b"fine_labels": [int(v) for v in fine],
                b"coarse_labels": [int(v) for v in coarse],
                b"data": images.transpose(0, 3, 1, 2).reshape(n, 3072),
            }
            blob = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
            expected[name] = (images, fine, coarse)
        meta = pickle.dumps({b"fine_label_names": [], b"coarse_label_names": []}, protocol=2)
        info = tarfile.TarInfo("cifar-100-python/meta")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    return expected


@pytest.mark.parametrize(("mode", "classes", "column"), [("fine", 100, 1), ("coarse", 20, 2)])
def test_cifar100_archive_loads_with_fine_or_coarse_labels(tmp_path, mode, classes, column):
    path = tmp_path / "cifar-100-python.tar.gz"
    expected = make_cifar100_archive(path)
    spec = DataSpec(source="cifar100", path=str(path), label_mode=mode, validation_fraction=0)
    splits = load_splits(spec, seed=0)
    assert splits.num_classes == classes and splits.input_shape == (32, 32, 3)
    assert (len(splits.y_train), len(splits.y_test)) == (300, 100)
    np.testing.assert_array_equal(splits.x_train, expected["train"][0])
    np.testing.assert_array_equal(splits.y_test, expected["test"][column])


def test_cifar100_from_keras_cache_and_its_extracted_folder(tmp_path):
    cache = keras_cache()
    cache.mkdir(parents=True)
    expected = make_cifar100_archive(cache / "cifar-100-python.tar.gz", n_train=40, n_test=10)
    assert len(load_splits(DataSpec(source="cifar100", validation_fraction=0), 0).y_train) == 40
    unpack(cache / "cifar-100-python.tar.gz", tmp_path / "unpacked")
    for path in (tmp_path / "unpacked", tmp_path / "unpacked" / "cifar-100-python"):
        splits = load_splits(DataSpec(source="cifar100", path=str(path), label_mode="coarse"), 0)
        np.testing.assert_array_equal(splits.y_test, expected["test"][2])


def test_cifar100_missing_or_broken_is_a_data_error(tmp_path):
    with pytest.raises(
        DataError, match='data.source = "cifar100": not in Keras\' cache.*cifar-100-python.tar.gz failed'
    ):
        load_splits(DataSpec(source="cifar100"), 0)
    only_train = tmp_path / "c.tar.gz"
    with tarfile.open(only_train, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-100-python/train")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(DataError, match="lacks test; expected cifar-100-python.tar.gz"):
        load_splits(DataSpec(source="cifar100", path=str(only_train)), 0)
    cifar10_like = tmp_path / "d.tar.gz"
    with tarfile.open(cifar10_like, "w:gz") as tar:  # right names, CIFAR-10's label key
        for name in ("train", "test"):
            blob = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(DataError, match="train is not a CIFAR-100 python file.*fine_labels"):
        load_splits(DataSpec(source="cifar100", path=str(cifar10_like)), 0)


@pytest.mark.parametrize("dropped", DROPPED_CONNECTIONS)
def test_cifar100_download_is_atomic_and_checked(tmp_path, monkeypatch, dropped):
    """The cifar10 download path, offline: a server (faked) that drops the connection leaves nothing in
    the cache; a whole archive with the registry's hash lands under Keras' name; a wrong hash is refused."""
    monkeypatch.delenv("RUNNER_OFFLINE")
    made = tmp_path / "cifar-100-python.tar.gz"
    make_cifar100_archive(made, n_train=40, n_test=10)
    files = {made.name: made.read_bytes()}
    spec = DataSpec(source="cifar100", validation_fraction=0)
    monkeypatch.setattr(
        archives.urllib.request, "urlopen", _fake_urlopen(files, made.name, DROPPED_CONNECTIONS[dropped])
    )
    with pytest.raises(DataError, match="cifar-100-python.tar.gz failed"):
        load_splits(spec, seed=0)
    assert list(keras_cache().iterdir()) == []
    monkeypatch.setattr(archives.urllib.request, "urlopen", _fake_urlopen(files))
    with pytest.raises(DataError, match="checksum mismatch"):  # the real archive's hash, not this one's
        load_splits(spec, seed=0)
    assert list(keras_cache().iterdir()) == []
    digest = hashlib.sha256(files[made.name]).hexdigest()
    monkeypatch.setitem(
        archives.ARCHIVES, "cifar100", dataclasses.replace(archives.ARCHIVES["cifar100"], sha256=digest)
    )
    assert len(load_splits(spec, seed=0).y_test) == 10
    assert [p.name for p in keras_cache().iterdir()] == ["cifar-100-python.tar.gz"]


def test_label_mode_coarse_is_cifar100s_alone():
    assert spec_from_dict({"name": "t", "data": {"source": "cifar100", "label_mode": "coarse"}})
    with pytest.raises(SpecError, match='data.label_mode: expected only with source = "cifar100"'):
        spec_from_dict({"name": "t", "data": {"source": "cifar10", "label_mode": "coarse"}})


# ---------------------------------------------------------------- through the CLI


def test_cli_a_bad_npz_is_exit_2_with_one_message(write_spec, tmp_path):
    path = _with(y_train=_labels(60).astype(np.float32))(tmp_path / "d.npz")
    spec = write_spec(TINY_SPEC.replace('source = "shapes"', f'source = "npz"\npath = "{path}"'))
    result = cli.invoke(app, ["run", str(spec), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f'data.path: "{path}": y_train: expected' in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_cli_validate_refuses_coarse_labels_for_cifar10(write_spec):
    spec = write_spec('name = "t"\n[data]\nsource = "cifar10"\nlabel_mode = "coarse"\n')
    result = cli.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2, result.output
    assert "data.label_mode: expected only with" in result.stderr and "Traceback" not in result.output


# ---------------------------------------------------------------- end to end


def _tiny(write_spec, data_lines: str):
    text = TINY_SPEC.replace('source = "shapes"', data_lines).replace("epochs = 2", "epochs = 1")
    return load_spec(write_spec(text))


@pytest.mark.slow
def test_a_tiny_run_on_an_npz_completes(write_spec, tmp_path):
    arrays = good_arrays(n=300, n_test=64)
    arrays["x_train"] = arrays["x_train"] / 255.0  # floats in [0, 1]: the note reaches the report
    path = write_npz(tmp_path / "d.npz", **arrays)
    outcome = run_experiment(_tiny(write_spec, f'source = "npz"\npath = "{path}"'), tmp_path / "reports")
    assert (outcome.status, outcome.exit_code) == ("completed", 0)
    assert outcome.report["data"]["num_classes"] == 4
    assert "converted to uint8" in outcome.report["data"]["notes"][0]


@pytest.mark.slow
def test_a_tiny_run_on_a_cifar100_archive_completes(write_spec, tmp_path):
    path = tmp_path / "cifar-100-python.tar.gz"
    make_cifar100_archive(path)
    spec = _tiny(write_spec, f'source = "cifar100"\npath = "{path}"\nlabel_mode = "coarse"')
    outcome = run_experiment(spec, tmp_path / "reports")
    assert (outcome.status, outcome.exit_code) == ("completed", 0)
    assert outcome.report["data"]["num_classes"] == 20


def test_an_npz_source_without_a_path_is_refused_by_validate():
    result = cli.invoke(
        app, ["validate", str(ROOT / "specs" / "quickstart.toml"), "--set", "data.source=npz"]
    )
    assert result.exit_code == 2
    assert 'data.path: expected the .npz file for source = "npz"; got none' in result.output
