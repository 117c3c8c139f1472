"""benchmarks/data_pipeline.py on 48 images: the folder it generates, and P7's sides all reading the
same images, so the figures it prints compare like with like."""

from __future__ import annotations

import io

from benchmarks import data_pipeline


def test_the_generated_folder_is_made_once_and_reused(tmp_path):
    root = data_pipeline.generated_folder(tmp_path, 48, 16)
    files = sorted(root.glob("*/*.jpg"))
    assert len(files) == 48 and len({f.parent.name for f in files}) == data_pipeline.CLASSES
    assert files[0].read_bytes()[:3] == b"\xff\xd8\xff"
    stamp = files[0].stat().st_mtime_ns
    assert data_pipeline.generated_folder(tmp_path, 48, 16) == root
    assert files[0].stat().st_mtime_ns == stamp


def test_every_p7_side_reads_every_image_once_per_epoch(tmp_path):
    folder = data_pipeline.generated_folder(tmp_path, 48, 16)
    for name, epochs in data_pipeline.p7_sides(folder, 16, 8).items():
        shapes = [tuple(b[0].shape if isinstance(b, tuple) else b.shape) for b in epochs(0)]
        assert sum(s[0] for s in shapes) == 48, name
        assert {s[1:] for s in shapes} == {(16, 16, 3)}, name
    figures = data_pipeline.p7(folder, 16, 8, repeats=1)
    assert set(figures) == set(data_pipeline.SIDES)
    assert figures["keras"]["ratio_to_keras"] == 1.0
    assert figures["decode_only"]["fraction_of_decode_limit"] == 1.0


def test_the_table_names_each_measure_and_its_target():
    side = {
        "images_per_second": 1000.0,
        "ratio_to_keras": 1.0,
        "fraction_of_decode_limit": 0.5,
        "images_per_cpu_second": 900.0,
        "cpu_ratio_to_keras": 1.0,
    }
    figures = {
        "P7": {name: side for name in data_pipeline.SIDES},
        "P8": {"peak_rss_mb": {"10000": 700.0, "40000": 714.0}, "growth": 0.02},
    }
    out = io.StringIO()
    data_pipeline.print_table(figures, out)
    text = out.getvalue()
    assert "P7 runner, augmented" in text and ">= 1.00" in text
    assert "10,000 → 40,000 images" in text and "+2.0%" in text and "<= +10 %" in text
