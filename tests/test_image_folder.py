"""source = "image_folder": the scan (Keras' rules, bad layouts refused by name), the spec's fields,
the tf.data file pipeline, and real runs on a folder of PNGs made here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner.data import DataError
from runner.folders import FolderIndex, scan_folder, scan_test_folder
from runner.spec import SpecError, load_spec

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
