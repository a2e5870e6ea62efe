"""The synthetic shapes dataset: determinism, statistics, layout and atomic writing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ssdlab.data import shapes
from ssdlab.data.shapes import DISTRACTOR_KINDS, SHAPE_CLASSES, generate_shapes, make_scene
from ssdlab.errors import DataError

N_SCENES = 150


@pytest.fixture(scope="module")
def scenes() -> list:
    """A few hundred objects' worth of scenes, rendered in memory."""
    return [make_scene(7, "train", i) for i in range(N_SCENES)]


def files_of(root: Path) -> dict[str, bytes]:
    """Every file below root except the manifest (it holds the generation time); links as their target."""
    return {p.relative_to(root).as_posix(): str(p.readlink()).encode() if p.is_symlink() else p.read_bytes()
            for p in sorted(root.rglob("*")) if (p.is_file() or p.is_symlink()) and p.name != "MANIFEST.json"}


def mask(polygon: np.ndarray, width: int, height: int) -> np.ndarray:
    """The test's own rasterisation of an outline (pixel centres inside)."""
    image = Image.new("L", (width, height), 0)
    ImageDraw.Draw(image).polygon([tuple(p) for p in polygon - 0.5], fill=1)
    return np.asarray(image, bool)


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    one = generate_shapes(tmp_path / "a", n_train=12, n_val=4, seed=3, workers=1)
    two = generate_shapes(tmp_path / "b", n_train=12, n_val=4, seed=3, workers=2)
    first, second = files_of(one), files_of(two)
    assert len(first) == 16 * 3 + 8 + 1 and first == second  # PNG, txt, xml per image; 8 files; 1 link


def test_different_seeds_and_splits_differ():
    base = make_scene(0, "train", 5).image
    assert not np.array_equal(base, make_scene(1, "train", 5).image)
    assert not np.array_equal(base, make_scene(0, "val", 5).image)
    assert np.array_equal(base, make_scene(0, "train", 5).image)


def test_image_sizes_vary_within_range(scenes):
    sizes = {scene.image.shape for scene in scenes}
    assert all(128 <= h <= 192 and 128 <= w <= 192 and c == 3 for h, w, c in sizes)
    assert len({h for h, _, _ in sizes}) > 20 and len({w for _, w, _ in sizes}) > 20


def test_object_counts_and_classes(scenes):
    counts = [len(scene.objects) for scene in scenes]
    assert min(counts) >= 1 and max(counts) <= 6
    assert set(counts) == {1, 2, 3, 4, 5, 6}
    labels = [obj.label for scene in scenes for obj in scene.objects]
    assert set(labels) == set(range(len(SHAPE_CLASSES)))
    assert SHAPE_CLASSES == ("circle", "square", "triangle", "star", "hexagon")


def test_object_sizes_between_8_and_60_percent(scenes):
    full = []
    for scene in scenes:
        height, width = scene.image.shape[:2]
        side = min(width, height)
        for obj in scene.objects:
            extent = np.ptp(obj.polygon, 0).max() / side    # full outline, before clipping
            full.append(extent)
            x1, y1, x2, y2 = obj.box
            assert max(x2 - x1, y2 - y1) <= 0.6 * side + 0.02
            inside = x1 > 0 and y1 > 0 and x2 < width and y2 < height
            if inside:
                assert max(x2 - x1, y2 - y1) >= 0.08 * side - 0.02
    full = np.array(full)
    assert full.min() >= 0.08 - 1e-6 and full.max() <= 0.6 + 1e-6
    assert (full < 0.12).any() and (full > 0.45).any()  # both ends of the log-uniform range occur
    assert 0.12 < np.median(full) < 0.35                  # log-uniform: median near sqrt(0.08 * 0.6)


def test_boxes_are_the_full_outline_clipped(scenes):
    for scene in scenes[:30]:
        height, width = scene.image.shape[:2]
        for obj in scene.objects:
            low = np.maximum(obj.polygon.min(0), 0)
            high = np.minimum(obj.polygon.max(0), [width, height])
            np.testing.assert_allclose(obj.box, [*low, *high], atol=0.006)


def test_cut_or_occluded_share_and_visibility(scenes):
    """Recompute border cuts from the boxes and occlusion from the test's own masks."""
    hard, total = 0, 0
    for scene in scenes:
        height, width = scene.image.shape[:2]
        masks = [mask(obj.polygon, width, height) for obj in scene.objects]
        for i, obj in enumerate(scene.objects):
            x1, y1, x2, y2 = obj.box
            touches = x1 <= 0 or y1 <= 0 or x2 >= width or y2 >= height
            later = np.zeros_like(masks[i])
            for other in masks[i + 1:]:
                later |= other
            covered = (masks[i] & later).sum() / max(masks[i].sum(), 1)
            hard += touches or covered >= 0.05
            total += 1
            assert obj.visible >= shapes.MIN_VISIBLE - 1e-9
            assert not obj.cut or touches
            full_area = shapes.polygon_area(obj.polygon)
            assert (masks[i] & ~later).sum() / full_area >= 0.2  # nothing is hidden beyond ~3/4
    assert total >= 300
    assert hard / total >= 0.2


def test_distractors_are_not_targets(scenes):
    kinds = [kind for scene in scenes for kind in scene.distractors]
    assert all(scene.distractors for scene in scenes)
    assert set(kinds) <= set(DISTRACTOR_KINDS) and not set(kinds) & set(SHAPE_CLASSES)
    assert set(kinds) == set(DISTRACTOR_KINDS)


def test_layout_manifest_and_reuse(tmp_path, monkeypatch):
    out = generate_shapes(tmp_path / "shapes", n_train=6, n_val=3, seed=1, workers=1)
    for rel in ("images/train/000005.png", "VOC/JPEGImages/val/000002.png",
                "VOC/Annotations/train/000000.xml", "VOC/ImageSets/Main/val.txt", "labels/val/000002.txt",
                "shapes.names", "shapes.data", "train.txt", "val.txt", "annotations/instances_train.json"):
        assert (out / rel).is_file(), rel
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert (manifest["seed"], manifest["n_train"], manifest["n_val"]) == (1, 6, 3)
    assert manifest["stats"]["train"]["images"] == 6
    assert (out / "shapes.names").read_text().split() == list(SHAPE_CLASSES)
    assert (out / "val.txt").read_text().split() == [f"images/val/{i:06d}.png" for i in range(3)]
    assert (out / "VOC/JPEGImages").is_symlink() and (out / "VOC/JPEGImages").resolve() == (out / "images").resolve()
    monkeypatch.setattr(shapes, "write_dataset", lambda *a: pytest.fail("regenerated a complete dataset"))
    assert generate_shapes(out, n_train=6, n_val=3, seed=1, workers=1) == out


def test_other_parameters_replace_the_dataset(tmp_path):
    out = generate_shapes(tmp_path / "s", n_train=3, n_val=1, seed=0, workers=1)
    generate_shapes(out, n_train=2, n_val=1, seed=4, workers=1)
    assert json.loads((out / "MANIFEST.json").read_text())["seed"] == 4
    assert len(list((out / "images/train").iterdir())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not an ssdlab shapes dataset"):
        generate_shapes(tmp_path / "mine", n_train=2, n_val=1, workers=1)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(task):
        calls.append(task)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return shapes_write_sample(task)

    shapes_write_sample = shapes.write_sample
    monkeypatch.setattr(shapes, "write_sample", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes(tmp_path / "s", n_train=5, n_val=2, workers=1)
    assert list(tmp_path.iterdir()) == []
