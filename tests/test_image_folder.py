"""source = "image_folder": the scan (Keras' rules, bad layouts refused by name), the spec's fields,
the tf.data file pipeline, and real runs on a folder of PNGs made here."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from runner.cli import app
from runner.data.files import DataError
from runner.data.image_folder import (
    MAGIC,
    FolderIndex,
    known_format,
    load_folder,
    scan_folder,
    scan_test_folder,
)
from runner.data.pipeline import TrainingBatches, train_pipeline
from runner.spec import AugmentationSpec, DataSpec, SpecError, load_spec

COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


def write_png(path: Path, colour: tuple[int, int, int], rng: np.random.Generator, size: int = 32) -> None:
    """A solid colour with noise: three classes a small model separates within an epoch or two."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(np.array(colour) + rng.integers(-40, 41, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def make_folder(root: Path, per_class: int = 4, seed: int = 0, classes=COLOURS) -> Path:
    rng = np.random.default_rng(seed)
    for name in classes:
        for i in range(per_class):
            write_png(root / name / f"{i:03d}.png", COLOURS.get(name, (128, 128, 128)), rng)
    return root


def error_of(root: Path, class_names=None) -> str:
    with pytest.raises(DataError) as caught:
        scan_folder(root, "data.path", class_names)
    return str(caught.value)


# ---------------------------------------------------------------- the scan


def test_classes_are_the_sorted_subfolders_and_files_follow_keras_order(tmp_path):
    make_folder(tmp_path, per_class=2)
    (tmp_path / ".hidden").mkdir()  # Keras leaves dot-folders out
    (tmp_path / "red" / "notes.txt").write_text("not an image")
    write_png(tmp_path / "red" / "deep" / "A.PNG", (1, 2, 3), np.random.default_rng(1))  # walked, any case
    index = scan_folder(tmp_path, "data.path")
    assert index.class_names == ("blue", "green", "red")
    assert index.files == (
        "blue/000.png",
        "blue/001.png",
        "green/000.png",
        "green/001.png",
        "red/000.png",
        "red/001.png",
        "red/deep/A.PNG",
    )
    assert index.labels == (0, 0, 1, 1, 2, 2, 2)
    assert index.counts() == {"blue": 2, "green": 2, "red": 3}


def test_class_names_given_set_the_label_order(tmp_path):
    make_folder(tmp_path, per_class=1)
    index = scan_folder(tmp_path, "data.path", ["red", "blue", "green"])
    assert index.class_names == ("red", "blue", "green")
    assert index.files[0] == "red/000.png" and index.labels == (0, 1, 2)


def test_the_fingerprint_changes_with_a_file_and_not_with_the_label_order(tmp_path):
    make_folder(tmp_path, per_class=2)
    first = scan_folder(tmp_path, "data.path").fingerprint()
    assert scan_folder(tmp_path, "data.path", ["red", "green", "blue"]).fingerprint() == first
    with (tmp_path / "red" / "000.png").open("ab") as f:
        f.write(b"x")
    assert scan_folder(tmp_path, "data.path").fingerprint() != first


@pytest.mark.parametrize(
    ("layout", "class_names", "expected"),
    [
        pytest.param({}, None, "has 0 class subfolders", id="empty-folder"),
        pytest.param({"red": 2}, None, "has 1 class subfolder (red)", id="one-class"),
        pytest.param(
            {"red": 2, "blue": 0}, None, 'blue" holds no images (0 other files)', id="class-no-images"
        ),
        pytest.param(
            {"red": 1, "blue": 1},
            ["red", "green"],
            "not given: blue; no such subfolder: green",
            id="names-differ",
        ),
        pytest.param({"red": 1, "blue": 1}, ["red", "red"], "twice: red", id="names-twice"),
        pytest.param({"red": 1, "blue": 1}, ["red"], "not given: blue", id="names-fewer"),
    ],
)
def test_bad_layouts_are_one_data_error_naming_folder_expected_and_found(
    tmp_path, layout, class_names, expected
):
    for name, count in layout.items():
        (tmp_path / name).mkdir()
        make_folder(tmp_path, per_class=count, classes={name: None})
    message = error_of(tmp_path, class_names)
    assert expected in message and "expected" in message
    assert str(tmp_path) in message


def test_a_missing_folder_and_a_file_are_refused(tmp_path):
    assert "does not exist" in error_of(tmp_path / "nowhere")
    (tmp_path / "file").write_text("")
    assert "is a regular file; expected a folder" in error_of(tmp_path / "file")


def test_a_link_loop_does_not_trap_the_scan_and_a_fifo_is_refused_unopened(tmp_path):
    make_folder(tmp_path, per_class=1)
    (tmp_path / "red" / "loop").symlink_to(tmp_path / "red")  # followed, this walk would never end
    assert scan_folder(tmp_path, "data.path").counts() == {"blue": 1, "green": 1, "red": 1}
    os.mkfifo(tmp_path / "red" / "pipe.png")  # opened, it would block until a writer came
    assert f'"{tmp_path / "red" / "pipe.png"}" is a FIFO (named pipe); expected an image file' in error_of(
        tmp_path
    )
    (tmp_path / "red" / "pipe.png").unlink()
    (tmp_path / "red" / "gone.png").symlink_to(tmp_path / "nothing")
    assert 'gone.png" does not exist' in error_of(tmp_path)


def test_the_test_folder_must_hold_the_same_classes(tmp_path):
    make_folder(tmp_path / "train", per_class=1)
    make_folder(tmp_path / "test", per_class=1, classes={"red": 0, "blue": 0})
    with pytest.raises(DataError, match=r"data.test_path: .* has the classes \['blue', 'red'\]; expected"):
        scan_test_folder(tmp_path / "test", ("red", "green", "blue"))
    make_folder(tmp_path / "test", per_class=1)
    index = scan_test_folder(tmp_path / "test", ("red", "green", "blue"))
    assert isinstance(index, FolderIndex) and index.class_names == ("red", "green", "blue")


# ---------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param('source = "image_folder"', "data.path: expected a folder", id="no-path"),
        pytest.param(
            'source = "image_folder"\npath = "x"\nimage_size = [0, 32]', "data.image_size.0", id="size-zero"
        ),
        pytest.param(
            'source = "image_folder"\npath = "x"\nimage_size = [32]', "data.image_size", id="size-one"
        ),
        pytest.param('source = "image_folder"\npath = "x"\nchannels = 4', "data.channels", id="channels"),
        pytest.param(
            'source = "image_folder"\npath = "x"\ntest_path = "y"\ntest_fraction = 0.2',
            "either",
            id="both-tests",
        ),
        pytest.param(
            'source = "shapes"\nimage_size = [8, 8]', "data.image_size: expected only with", id="not-folder"
        ),
    ],
)
def test_bad_image_folder_fields_are_spec_errors(write_spec, data, expected):
    with pytest.raises(SpecError, match=expected.replace("[", r"\[")):
        load_spec(write_spec(f'name = "x"\n[data]\n{data}\n'))


# ---------------------------------------------------------------- `runner run`: bad data is exit 2

cli = CliRunner()

SPEC = """
name = "folder"
seed = 1
[precision]
policy = "float32"
[model]
kind = "seed_cnn"
filters = [8, 16]
dense_units = 16
[data]
source = "image_folder"
path = "{path}"
image_size = [32, 32]
batch_size = 16
{extra}
[training]
epochs = 2
learning_rate = 0.003
steps_per_execution = 1
[runtime]
tensorboard = false
"""


def folder_spec(write_spec, path: Path, extra: str = "") -> Path:
    return write_spec(SPEC.format(path=path, extra=extra))


@pytest.mark.parametrize(
    ("per_class", "extra", "expected"),
    [
        pytest.param({}, "", "has 0 class subfolders", id="empty"),
        pytest.param({"red": 3, "blue": 0}, "", 'blue" holds no images', id="class-without-images"),
        pytest.param({"red": 3}, "", "has 1 class subfolder (red)", id="one-class"),
        pytest.param({"red": 3, "blue": 3}, 'class_names = ["blue", "pink"]', "data.class_names", id="names"),
        pytest.param(
            {"red": 10, "blue": 10}, "", "training images after the validation and test", id="too-few"
        ),
    ],
)
def test_runner_run_on_bad_data_exits_2_with_one_message_and_no_run_dir(
    tmp_path, write_spec, per_class, extra, expected
):
    data = tmp_path / "data"
    data.mkdir()
    for name, count in per_class.items():
        (data / name).mkdir()
        make_folder(data, per_class=count, classes={name: None})
    out = tmp_path / "out"
    result = cli.invoke(app, ["run", str(folder_spec(write_spec, data, extra)), "--output", str(out)])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------- the file pipeline


def folder_data(path: Path, **fields) -> DataSpec:
    return DataSpec(**{"source": "image_folder", "path": str(path), "batch_size": 8, **fields})


def test_decoded_images_are_the_files_pixels_as_uint8(tmp_path):
    make_folder(tmp_path, per_class=4)
    splits = load_folder(folder_data(tmp_path, image_size=[32, 32], test_fraction=0.5, batch_size=4), seed=0)
    x, y = next(iter(splits.eval_dataset("test", 64)))
    assert x.dtype.name == "uint8" and x.shape == (6, 32, 32, 3) and list(y.numpy()) == sorted(y.numpy())
    for image, file in zip(x.numpy(), splits.files["test"], strict=True):
        assert np.array_equal(image, np.asarray(Image.open(file)))  # same size: the resize changes nothing
    grey = load_folder(folder_data(tmp_path, image_size=[16, 8], channels=1, batch_size=4), seed=0)
    images, _ = grey.first_batch(3)
    assert images.shape == (3, 16, 8, 1) and grey.input_shape == (16, 8, 1)


@pytest.mark.parametrize("size, channels", [((20, 12), 3), ((48, 40), 1)], ids=["shrunk-rgb", "grown-grey"])
def test_resized_pixels_are_keras_image_dataset_from_directory_rounded_to_uint8(tmp_path, size, channels):
    """The same bilinear resize (no crop, no antialias) and channel conversion as Keras' loader; its float
    pixels rounded half to even are ours, so a model sees what it would have seen through Keras."""
    import keras

    make_folder(tmp_path, per_class=2)
    spec = folder_data(tmp_path, image_size=list(size), channels=channels, test_fraction=0.5, batch_size=2)
    ours = load_folder(spec, seed=0)
    mode = "rgb" if channels == 3 else "grayscale"
    theirs = keras.utils.image_dataset_from_directory(
        tmp_path, image_size=size, color_mode=mode, shuffle=False, batch_size=None, verbose=False
    )
    keras_pixels = {f: x.numpy() for f, (x, _) in zip(theirs.file_paths, theirs, strict=True)}
    x, _ = next(iter(ours.eval_dataset("test", 8)))
    for image, file in zip(x.numpy(), ours.files["test"], strict=True):
        assert image.shape == (*size, channels)
        assert np.array_equal(image, np.round(keras_pixels[file]).astype(np.uint8)), file


# Bytes near the magic numbers: each magic, cut short, followed by anything, or anything at all.
heads = st.one_of(
    st.binary(max_size=6),
    st.builds(
        lambda m, cut, tail: m[:cut] + tail, st.sampled_from(MAGIC), st.integers(0, 4), st.binary(max_size=3)
    ),
)


@given(heads)
def test_the_format_check_is_a_prefix_test_on_the_magic_numbers(raw):
    """The integer check on the first 4 bytes says what bytes.startswith says, short files included."""
    from runner import compat

    tf = compat.tensorflow()
    assert bool(known_format(tf, tf.constant(raw))) == raw.startswith(MAGIC)


def test_an_empty_split_is_an_empty_dataset(tmp_path):
    """test_fraction = 0, no validation: an empty file list (its paths were float32: ReadFile failed)."""
    make_folder(tmp_path, per_class=4)
    splits = load_folder(
        folder_data(tmp_path, image_size=[8, 8], test_fraction=0.0, validation_fraction=0.0), 0
    )
    assert splits.count("test") == splits.count("validation") == 0
    assert list(splits.eval_dataset("test", 4)) == list(splits.eval_dataset("validation", 4)) == []


def test_each_epoch_sees_the_array_sources_order_so_a_resume_sees_the_same_batches(tmp_path):
    """The same stateless shuffle over the index as data.train_pipeline, `skip` included, and the same
    augmentation keys."""
    make_folder(tmp_path, per_class=12)
    splits = load_folder(folder_data(tmp_path, image_size=[32, 32]), seed=3)
    x, y = splits.first_batch(splits.count("train"))
    for augmentation in (None, AugmentationSpec(horizontal_flip=True, pad_crop=3, brightness=0.2)):
        from_files = list(splits.train_dataset(TrainingBatches(8, 5, range(1, 3), 2, augmentation)))
        from_arrays = list(train_pipeline(x, y, TrainingBatches(8, 5, range(1, 3), 2, augmentation)))
        assert len(from_files) == len(from_arrays) > 0
        for (xf, yf), (xa, ya) in zip(from_files, from_arrays, strict=True):
            assert np.array_equal(xf.numpy(), xa.numpy()) and np.array_equal(yf.numpy(), ya.numpy())


def test_splits_are_drawn_with_the_seed_and_the_summary_counts_them(tmp_path):
    make_folder(tmp_path, per_class=10)
    splits = load_folder(folder_data(tmp_path, test_fraction=0.3, validation_fraction=0.25), seed=1)
    again = load_folder(folder_data(tmp_path, test_fraction=0.3, validation_fraction=0.25), seed=1)
    other = load_folder(folder_data(tmp_path, test_fraction=0.3, validation_fraction=0.25), seed=2)
    assert splits.files == again.files and splits.files["test"] != other.files["test"]
    summary = splits.summary()
    assert (summary["train"], summary["validation"], summary["test"]) == (16, 5, 9)
    assert sum(summary["counts"]["test"].values()) == 9 and summary["input_shape"] == [256, 256, 3]
    assert set().union(*map(set, splits.files.values())) == {
        str(tmp_path / f) for f in scan_folder(tmp_path, "p").files
    }


def test_skip_bad_files_leaves_out_what_does_not_decode_and_lists_it(tmp_path):
    make_folder(tmp_path / "train", per_class=6)
    make_folder(tmp_path / "test", per_class=2)
    (tmp_path / "train" / "red" / "002.png").write_bytes(b"not an image")
    cut = (tmp_path / "train" / "blue" / "004.png").read_bytes()[:100]
    (tmp_path / "train" / "blue" / "004.png").write_bytes(cut)  # a valid header, then nothing
    (tmp_path / "test" / "green" / "000.png").write_bytes(b"")
    spec = folder_data(tmp_path / "train", test_path=str(tmp_path / "test"), batch_size=4)
    skipping = load_folder(spec.model_copy(update={"skip_bad_files": True}), seed=0)
    bad = [tmp_path / "train/blue/004.png", tmp_path / "train/red/002.png", tmp_path / "test/green/000.png"]
    assert skipping.skipped == tuple(map(str, bad))
    assert skipping.summary()["skipped_files"] == {"count": 3, "first": list(map(str, bad))}
    assert skipping.count("train") + skipping.count("validation") == 16 and skipping.count("test") == 5
    assert not set(map(str, bad)) & set().union(*map(set, skipping.files.values()))
    assert skipping.fingerprints == load_folder(spec, seed=0).fingerprints  # what is on disk
    assert load_folder(spec, seed=0).count("test") == 6  # without the flag nothing is decoded before the run


# ---------------------------------------------------------------- real runs (slow)


def run_report(out: Path) -> dict:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return json.loads((run_dir / "report.json").read_text())


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("colours"), per_class=100)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "class_names"),
    [
        pytest.param("", ["blue", "green", "red"], id="sorted"),
        pytest.param('class_names = ["red", "blue", "green"]', ["red", "blue", "green"], id="given"),
    ],
)
def test_a_run_on_a_folder_learns_and_records_its_classes(colours, tmp_path, write_spec, extra, class_names):
    out = tmp_path / "out"
    result = cli.invoke(app, ["run", str(folder_spec(write_spec, colours, extra)), "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = run_report(out)
    assert report["status"] == "completed" and report["metrics"]["test_accuracy"] >= 0.9
    data = report["data"]
    assert data["class_names"] == class_names and data["input_shape"] == [32, 32, 3]
    assert (data["train"], data["validation"], data["test"]) == (216, 24, 60)
    assert sum(sum(c.values()) for c in data["counts"].values()) == 300
    assert data["fingerprint"]["path"] == scan_folder(colours, "data.path").fingerprint()


@pytest.mark.slow
def test_a_run_without_a_test_split_reports_no_test_metrics_rather_than_zeros(tmp_path, write_spec):
    """test_fraction = 0: the mean over no test images is not an accuracy of 0; there is none."""
    folder = make_folder(tmp_path / "images", per_class=6)
    spec = (
        folder_spec(write_spec, folder, "test_fraction = 0.0").read_text().replace("epochs = 2", "epochs = 1")
    )
    path = write_spec(spec.replace("batch_size = 16", "batch_size = 4"), "no-test.toml")
    result = cli.invoke(app, ["run", str(path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = run_report(tmp_path / "out")
    assert report["data"]["test"] == 0
    assert (report["metrics"]["test_loss"], report["metrics"]["test_accuracy"]) == (None, None)
    (finding,) = [c for c in report["checks"] if c["name"] == "finite_metrics"]
    assert finding["passed"] and finding["detail"] == "no test split: no test metrics to check"


@pytest.mark.slow
def test_a_file_that_cannot_be_decoded_fails_the_run_naming_it(colours, tmp_path, write_spec):
    """Two kinds: not an image at all (caught inside tf.data) and a PNG cut short (found afterwards)."""
    data = tmp_path / "data"
    shutil.copytree(colours, data)
    (data / "red" / "050.png").write_bytes(b"not an image")
    truncated = (data / "green" / "070.png").read_bytes()[:200]
    for bad, expected in (("red/050.png", "expected a BMP"), ("green/070.png", "Invalid PNG data")):
        out = tmp_path / f"out-{bad[:3]}"
        result = cli.invoke(app, ["run", str(folder_spec(write_spec, data)), "--output", str(out)])
        assert result.exit_code == 3, result.output
        report = run_report(out)
        assert report["status"] == "failed"
        assert f'data: cannot decode "{data / bad}"' in report["error"] and expected in report["error"]
        (data / "red" / "050.png").write_bytes((colours / "red" / "050.png").read_bytes())
        (data / "green" / "070.png").write_bytes(truncated)


RESUMABLE = (
    SPEC.replace("epochs = 2", "epochs = 3")
    .replace("tensorboard = false", "tensorboard = false\ndeterministic = true\ncheckpoint_every_steps = 3")
    .replace("batch_size = 16", "batch_size = 8")
    .replace("image_size = [32, 32]", "image_size = [64, 64]")
)


@pytest.mark.slow
def test_interrupted_mid_epoch_then_resumed_equals_the_uninterrupted_run(colours, tmp_path):
    """Files streamed from disk, augmented in the pipeline: a resume sees the same images."""
    from tests.test_resume import checkpoint_position, in_mid_epoch, model_metrics, only_run, runner, wait_for

    spec = tmp_path / "spec.toml"
    augmentation = "[data.augmentation]\nhorizontal_flip = true\npad_crop = 4\nbrightness = 0.1"
    spec.write_text(RESUMABLE.format(path=colours, extra=augmentation).replace("[8, 16]", "[16, 32]"))
    whole = runner("run", spec, "--output", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    child = runner("run", spec, "--output", tmp_path / "cut", wait=False)
    wait_for(lambda: in_mid_epoch(checkpoint_position(tmp_path / "cut"), 1))
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    run_dir = only_run(tmp_path / "cut")
    position = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    assert position["epoch"] == 1 and position["step"] > 0  # resumes inside an epoch: `skip` batches
    resumed = runner("resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    reference = only_run(tmp_path / "whole")
    assert model_metrics(run_dir) == model_metrics(reference)
    final, uninterrupted = run_report(tmp_path / "cut")["metrics"], run_report(tmp_path / "whole")["metrics"]
    assert (final["test_loss"], final["test_accuracy"]) == (
        uninterrupted["test_loss"],
        uninterrupted["test_accuracy"],
    )


def test_validate_data_and_check_name_every_file_that_does_not_decode(tmp_path, write_spec):
    """`runner validate --data` (no model built) and `runner check`: each image decoded once, as a run
    would, and every file that does not decode named with the reason."""
    folder = make_folder(tmp_path / "images", per_class=10)
    spec = folder_spec(write_spec, folder)
    good = cli.invoke(app, ["validate", str(spec), "--data"])
    assert good.exit_code == 0, good.output
    assert "data image_folder: 3 classes, 22 train, 2 validation, 6 test" in good.output
    (folder / "red" / "002.png").write_bytes(b"not an image")
    cut = folder / "blue" / "004.png"
    cut.write_bytes(cut.read_bytes()[:100])  # a valid header, then nothing
    for command in (["validate", str(spec), "--data"], ["check", str(spec), "--steps", "0"]):
        bad = cli.invoke(app, command)
        assert bad.exit_code == 2, bad.output
        assert f"cannot decode {folder / 'red' / '002.png'}" in bad.output
        assert f"cannot decode {folder / 'blue' / '004.png'}" in bad.output
        assert "2 file(s) cannot be decoded" in bad.output and "Traceback" not in bad.output
    shutil.rmtree(folder / "green")
    (folder / "green").mkdir()
    empty = cli.invoke(app, ["validate", str(spec), "--data"])
    assert empty.exit_code == 2 and str(spec) in empty.output and "green" in empty.output
