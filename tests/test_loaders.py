"""The VOC, COCO and text-format loaders, the dataset catalog and the conversion scripts."""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssdlab.data.base import ConcatDetectionDataset
from ssdlab.data.catalog import build_dataset, known_names
from ssdlab.data.coco import COCODataset
from ssdlab.data.shapes import SHAPES_CLASS_NAMES, generate_shapes
from ssdlab.data.textset import TextDataset
from ssdlab.data.voc import VOCDataset
from ssdlab.errors import DataError

SCRIPTS = Path(__file__).resolve().parents[1] / "data_scripts"


# ----------------------------------------------------------------------------- fixture writers

def write_image(path: Path, width: int, height: int, seed: int = 0) -> np.ndarray:
    """A random RGB image saved losslessly (PNG) or as JPEG, by suffix; returns the pixels written."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def voc_annotation(width: int, height: int, objects: list[tuple]) -> str:
    """VOC XML text; objects are (name, (xmin, ymin, xmax, ymax) 1-based, difficult)."""
    parts = [f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, (x1, y1, x2, y2), difficult in objects:
        parts.append(f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox>"
                     f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def make_voc(root: Path, images: dict[str, tuple], split: str = "trainval", suffix: str = ".jpg") -> Path:
    """A VOC year folder; images maps id -> (width, height, objects)."""
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets/Main").mkdir(parents=True)
    for seed, (image_id, (width, height, objects)) in enumerate(images.items()):
        write_image(root / "JPEGImages" / f"{image_id}{suffix}", width, height, seed)
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_annotation(width, height, objects))
    (root / "ImageSets/Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    return root


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory) -> Path:
    """A small shapes dataset shared by the tests of this file."""
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", n_train=24, n_val=6, seed=2, workers=1)


@pytest.fixture
def voc_root(tmp_path) -> Path:
    """Two images: one with a difficult object, one box beyond the image, one of zero area."""
    return make_voc(tmp_path / "VOC2007", {
        "000001": (40, 30, [("dog", (1, 1, 11, 21), False), ("cat", (5, 6, 25, 26), True)]),
        "000002": (50, 40, [("person", (10, 10, 80, 45), False), ("car", (20, 5, 20, 30), False)]),
    })


@pytest.fixture
def text_root(tmp_path) -> Path:
    """A text-format dataset: relative paths, an absolute path, an empty label file."""
    root = tmp_path / "hand"
    write_image(root / "images/a.png", 100, 50, 1)
    write_image(root / "images/sub/b.png", 20, 40, 2)
    (root / "labels/sub").mkdir(parents=True)
    (root / "labels/a.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.1 0.2 0.1 0.2\n\n")
    (root / "labels/sub/b.txt").write_text("")
    (root / "lists").mkdir()
    (root / "lists/train.txt").write_text(f"images/a.png\n{root / 'images/sub/b.png'}\n")
    (root / "lists/valid.txt").write_text("images/sub/b.png\n")
    (root / "hand.names").write_text("hand\nface\n")
    (root / "hand.data").write_text("# two classes\nclasses= 2\ntrain = lists/train.txt\nvalid=lists/valid.txt\n"
                                    "names= hand.names\nimages= images\nlabels= labels\n")
    return root


# ----------------------------------------------------------------------------- one set, three formats

def three_views(root: Path, split: str) -> list:
    """The same shapes split through the VOC, COCO and text loaders."""
    return [VOCDataset(root / "VOC", split, class_names=SHAPES_CLASS_NAMES),
            COCODataset(root / "images", root / f"annotations/instances_{split}.json"),
            TextDataset(root / "shapes.data", "train" if split == "train" else "valid")]


@pytest.mark.parametrize("split", ["train", "val"])
def test_three_formats_agree(small_shapes, split):
    voc, coco, text = three_views(small_shapes, split)
    assert len(voc) == len(coco) == len(text) == (24 if split == "train" else 6)
    assert voc.class_names == coco.class_names == text.class_names == SHAPES_CLASS_NAMES
    objects = 0
    for i in range(len(voc)):
        reference = voc.get_image(i)
        assert reference.dtype == np.uint8 and reference.shape[2] == 3
        assert np.array_equal(reference, coco.get_image(i)) and np.array_equal(reference, text.get_image(i))
        boxes, labels, difficult = voc.get_annotation(i)
        assert boxes.dtype == np.float32 and labels.dtype == np.int64 and not difficult.any()
        assert labels.min() >= 1 and labels.max() <= 5
        for other in (coco, text):
            other_boxes, other_labels, _ = other.get_annotation(i)
            np.testing.assert_allclose(other_boxes, boxes, atol=1e-3, rtol=0)
            np.testing.assert_array_equal(other_labels, labels)
            info, reference_info = other.get_img_info(i), voc.get_img_info(i)
            assert (info["width"], info["height"]) == (reference_info["width"], reference_info["height"])
            assert Path(info["file"]).resolve() == Path(reference_info["file"]).resolve()
        objects += len(labels)
    assert objects >= len(voc)


def test_getitem_transform_and_target_transform(small_shapes):
    seen = {}

    def transform(image, boxes, labels, rng=None):
        seen["rng"] = rng
        return image[::2, ::2], boxes / 2, labels

    def target_transform(boxes, labels):
        return boxes + 1, labels * 10

    data = TextDataset(small_shapes / "shapes.data", "valid", transform=transform, target_transform=target_transform)
    image, targets, index = data[3]
    boxes, labels, _ = data.get_annotation(3)
    assert index == 3 and image.shape[0] == (data.get_img_info(3)["height"] + 1) // 2
    np.testing.assert_allclose(targets["boxes"], boxes / 2 + 1)
    np.testing.assert_array_equal(targets["labels"], labels * 10)
    assert seen["rng"] is None
    rng = np.random.default_rng(0)
    data.get_item(2, rng=rng)
    assert seen["rng"] is rng


def test_cache_keeps_decoded_images(small_shapes, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_shapes, copy)
    data = TextDataset(copy / "shapes.data", "valid", cache=True)
    first = data.get_image(0)
    Path(data.get_img_info(0)["file"]).unlink()
    assert data.get_image(0) is first and not first.flags.writeable
    sample, _, _ = data[0]
    sample[:] = 0                                   # a transform may write into its sample
    assert first.any() and np.array_equal(data.get_image(0), first)
    with pytest.raises(DataError, match=r"val/000000\.png does not exist"):
        TextDataset(copy / "shapes.data", "valid")


# ----------------------------------------------------------------------------- VOC

def test_voc_difficult_clipping_and_zero_area(voc_root, caplog):
    with caplog.at_level(logging.WARNING):
        data = VOCDataset(voc_root, "trainval")
    warnings = [r for r in caplog.records if "zero area" in r.getMessage()]
    assert len(warnings) == 1 and "dropped 1 " in warnings[0].getMessage()
    boxes, labels, difficult = data.get_annotation(0)
    np.testing.assert_allclose(boxes, [[0, 0, 10, 20], [4, 5, 24, 25]])      # 1-based -> 0-based
    assert labels.tolist() == [12, 8] and difficult.tolist() == [False, True]  # dog, cat in VOC_CLASSES
    _, targets, _ = data[0]
    assert targets["labels"].tolist() == [12]                                # difficult left out
    _, kept, _ = VOCDataset(voc_root, "trainval", keep_difficult=True)[0]
    assert kept["labels"].tolist() == [12, 8]
    boxes, labels, _ = data.get_annotation(1)                                # clipped to 50x40, car dropped
    np.testing.assert_allclose(boxes, [[9, 9, 50, 40]])
    assert labels.tolist() == [15]
    assert data.ids == ["000001", "000002"]
    assert data.get_img_info(1) == {"height": 40, "width": 50, "file": str(voc_root / "JPEGImages/000002.jpg")}


def test_voc_png_images_and_size_from_image(tmp_path):
    root = make_voc(tmp_path / "VOC", {"x": (30, 20, [("bird", (2, 2, 5, 5), False)])}, "train", ".png")
    xml = root / "Annotations/x.xml"
    xml.write_text(xml.read_text().replace("<size><width>30</width><height>20</height><depth>3</depth></size>", ""))
    data = VOCDataset(root, "train")
    assert data.get_img_info(0)["width"] == 30 and data.get_img_info(0)["file"].endswith("x.png")
    assert data.get_image(0).shape == (20, 30, 3)


def test_voc_missing_parts_name_the_path(voc_root):
    with pytest.raises(DataError, match=r"ImageSets/Main/test\.txt"):
        VOCDataset(voc_root, "test")
    with pytest.raises(DataError, match="nowhere"):
        VOCDataset(voc_root.parent / "nowhere", "trainval")
    (voc_root / "Annotations/000002.xml").unlink()
    with pytest.raises(DataError, match="000002.xml"):
        VOCDataset(voc_root, "trainval")
    (voc_root / "JPEGImages").rename(voc_root / "pictures")
    with pytest.raises(DataError, match="JPEGImages"):
        VOCDataset(voc_root, "trainval")


def test_voc_unknown_class_names_the_file(voc_root):
    xml = voc_root / "Annotations/000001.xml"
    xml.write_text(xml.read_text().replace("dog", "dragon"))
    with pytest.raises(DataError, match=r"000001\.xml.*'dragon'"):
        VOCDataset(voc_root, "trainval")


def test_corrupt_image_and_skip_option(voc_root, caplog):
    bad = voc_root / "JPEGImages/000002.jpg"
    bad.write_bytes(b"this is not a jpeg")
    data = VOCDataset(voc_root, "trainval")
    data.get_image(0)
    with pytest.raises(DataError, match="000002.jpg"):
        data.get_image(1)
    with caplog.at_level(logging.WARNING):
        skipped = VOCDataset(voc_root, "trainval", skip_bad_images=True)
    assert skipped.ids == ["000001"]
    assert any("skipped 1 " in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- COCO

def make_coco(tmp_path: Path) -> tuple[Path, Path]:
    """Three images; categories 7 and 3 (unsorted, with gaps); a crowd box; an image without boxes."""
    images = tmp_path / "images"
    for i, (w, h) in enumerate([(60, 40), (30, 30), (20, 50)], start=1):
        write_image(images / f"{i}.jpg", w, h, i)
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": w, "height": h}
                   for i, (w, h) in enumerate([(60, 40), (30, 30), (20, 50)], start=1)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10], "iscrowd": 0, "area": 200},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 30, 30, 30], "iscrowd": 0, "area": 900},
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [0, 0, 60, 40], "iscrowd": 1, "area": 2400},
            {"id": 4, "image_id": 2, "category_id": 3, "bbox": [0, 0, 30, 30], "iscrowd": 1, "area": 900},
            {"id": 5, "image_id": 3, "category_id": 3, "bbox": [1, 2, 3, 4], "iscrowd": 0, "area": 12},
        ],
        "categories": [{"id": 7, "name": "zebra"}, {"id": 3, "name": "cat"}],
    }
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(data))
    return images, ann


def test_coco_loader(tmp_path, capsys):
    images, ann = make_coco(tmp_path)
    data = COCODataset(images, ann, remove_empty=False)
    assert capsys.readouterr().out == ""                                      # pycocotools prints silenced
    assert data.class_names == ("__background__", "cat", "zebra")
    assert data.ids == [1, 2, 3] and data.label_to_category == {1: 3, 2: 7}
    boxes, labels, difficult = data.get_annotation(0)
    np.testing.assert_allclose(boxes, [[10, 5, 30, 15], [50, 30, 60, 40]])  # xywh -> xyxy, clipped
    assert labels.tolist() == [2, 1] and not difficult.any()
    assert len(data.get_annotation(1)[0]) == 0                                # only a crowd box
    train = COCODataset(images, ann, remove_empty=True)
    assert train.ids == [1, 3] and train.get_img_info(1)["width"] == 20
    assert np.array_equal(train.get_image(1), data.get_image(2))


def test_coco_errors_name_the_file(tmp_path):
    images, ann = make_coco(tmp_path)
    with pytest.raises(DataError, match="missing.json"):
        COCODataset(images, tmp_path / "missing.json")
    with pytest.raises(DataError, match="nowhere"):
        COCODataset(tmp_path / "nowhere", ann)
    ann.write_text("{not json")
    with pytest.raises(DataError, match="instances.json"):
        COCODataset(images, ann)


# ----------------------------------------------------------------------------- text format

def test_text_loader(text_root):
    data = TextDataset(text_root / "hand.data", "train")
    assert data.class_names == ("__background__", "hand", "face")
    assert data.ids == ["a", "sub/b"]
    boxes, labels, _ = data.get_annotation(0)
    np.testing.assert_allclose(boxes, [[40, 15, 60, 35], [5, 5, 15, 15]], atol=1e-4)
    assert labels.tolist() == [1, 2]
    boxes, labels, _ = data.get_annotation(1)                                 # empty label file
    assert boxes.shape == (0, 4) and labels.shape == (0,)
    _, targets, _ = data[1]
    assert targets["boxes"].shape == (0, 4)
    assert data.get_img_info(1) == {"height": 40, "width": 20, "file": str(text_root / "images/sub/b.png")}
    assert len(TextDataset(text_root / "hand.data", "valid")) == 1


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.2\n", r"a\.txt:2: expected 5 fields"),
    ("2 0.5 0.5 0.2 0.2\n", r"a\.txt:2: class id 2 is out of range"),
    ("-1 0.5 0.5 0.2 0.2\n", r"a\.txt:2: class id -1"),
    ("x 0.5 0.5 0.2 0.2\n", r"a\.txt:2: expected an integer class"),
])
def test_text_bad_label_lines(text_root, line, message):
    (text_root / "labels/a.txt").write_text("0 0.5 0.5 0.2 0.2\n" + line)
    with pytest.raises(DataError, match=message):
        TextDataset(text_root / "hand.data", "train")


def test_text_missing_files_name_the_path(text_root):
    (text_root / "labels/sub/b.txt").unlink()
    with pytest.raises(DataError, match=r"labels/sub/b\.txt"):
        TextDataset(text_root / "hand.data", "train")
    (text_root / "hand.names").unlink()
    with pytest.raises(DataError, match=r"hand\.names"):
        TextDataset(text_root / "hand.data", "valid")
    with pytest.raises(DataError, match=r"nothing\.data"):
        TextDataset(text_root / "nothing.data", "valid")
    with pytest.raises(DataError, match="no 'test=' entry"):
        TextDataset(text_root / "hand.data", "test")


def test_text_missing_list_and_images_folder(text_root):
    (text_root / "lists/valid.txt").unlink()
    with pytest.raises(DataError, match=r"lists/valid\.txt"):
        TextDataset(text_root / "hand.data", "valid")
    (text_root / "images").rename(text_root / "pics")
    with pytest.raises(DataError, match="images folder .*images"):
        TextDataset(text_root / "hand.data", "train")


def test_text_bad_data_file_and_class_count(text_root):
    data_file = text_root / "hand.data"
    data_file.write_text(data_file.read_text().replace("classes= 2", "classes= 3"))
    with pytest.raises(DataError, match="classes= 3"):
        TextDataset(data_file, "train")
    data_file.write_text("classes 2\n")
    with pytest.raises(DataError, match=r"hand\.data:1: expected 'key= value'"):
        TextDataset(data_file, "train")


def test_text_corrupt_image_and_skip(text_root, caplog):
    (text_root / "images/a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"images/a\.png"):
        TextDataset(text_root / "hand.data", "train")
    with caplog.at_level(logging.WARNING):
        data = TextDataset(text_root / "hand.data", "train", skip_bad_images=True)
    assert data.ids == ["sub/b"] and any("skipped 1 " in r.getMessage() for r in caplog.records)
    from ssdlab.config import load_config
    from ssdlab.data.catalog import datasets

    train = ["DATASETS.TRAIN", str([str(text_root / "hand.data")])]
    with pytest.raises(DataError, match=r"images/a\.png .*DATASETS\.SKIP_BAD_IMAGES True"):
        datasets(load_config(None, train), True, with_transforms=False)
    chosen = datasets(load_config(None, [*train, "DATASETS.SKIP_BAD_IMAGES", "True"]), True, with_transforms=False)
    assert chosen.ids == ["sub/b"]  # the CLI's way to the same skip: a config key


def test_text_zero_area_warning_once(text_root, caplog):
    (text_root / "labels/a.txt").write_text("0 0.5 0.5 0 0.4\n1 0.5 0.5 0.2 0.0\n0 1.2 0.5 0.2 0.2\n")
    with caplog.at_level(logging.WARNING):
        data = TextDataset(text_root / "hand.data", "train")
    messages = [r.getMessage() for r in caplog.records if "zero area" in r.getMessage()]
    assert len(messages) == 1 and "dropped 3 " in messages[0]
    assert len(data.get_annotation(0)[0]) == 0


# ----------------------------------------------------------------------------- catalog

def test_catalog_shapes_names_and_paths(small_shapes, monkeypatch):
    monkeypatch.setenv("SHAPES_ROOT", str(small_shapes))
    assert len(build_dataset("shapes_train", is_train=True)) == 24
    assert len(build_dataset("shapes_val", is_train=False)) == 6
    assert len(build_dataset(str(small_shapes), is_train=False)) == 6
    assert len(build_dataset(f"{small_shapes}:train", is_train=False)) == 24
    assert len(build_dataset(str(small_shapes / "shapes.data"), is_train=True)) == 24
    both = build_dataset([f"{small_shapes}:train", f"{small_shapes}:val"], is_train=True)
    assert isinstance(both, ConcatDetectionDataset) and len(both) == 30
    assert both.class_names == SHAPES_CLASS_NAMES
    image, targets, index = both[26]
    val = build_dataset(f"{small_shapes}:val", is_train=False)
    assert index == 26 and np.array_equal(image, val.get_image(2))
    np.testing.assert_array_equal(both.get_annotation(26)[0], val.get_annotation(2)[0])
    assert both.get_img_info(26) == val.get_img_info(2)


def test_catalog_voc_and_coco_roots(voc_root, tmp_path, monkeypatch):
    monkeypatch.setenv("VOC_ROOT", str(voc_root.parent))
    train = build_dataset("voc_2007_trainval", is_train=True)
    test = build_dataset("voc_2007_trainval", is_train=False)
    assert train[0][1]["labels"].tolist() == [12] and test[0][1]["labels"].tolist() == [12, 8]
    coco_root = tmp_path / "coco"
    images, ann = make_coco(coco_root)
    images.rename(coco_root / "val2014")
    (coco_root / "annotations").mkdir()
    ann.rename(coco_root / "annotations/instances_minival2014.json")
    monkeypatch.setenv("COCO_ROOT", str(coco_root))
    assert len(build_dataset("coco_2014_minival", is_train=False)) == 3
    assert len(build_dataset("coco_2014_minival", is_train=True)) == 2


def test_catalog_errors(tmp_path, monkeypatch, voc_root):
    monkeypatch.setenv("SHAPES_ROOT", str(tmp_path / "no_shapes"))
    with pytest.raises(DataError, match=r"python -m ssdlab data shapes --out .*no_shapes"):
        build_dataset("shapes_train", is_train=True)
    with pytest.raises(DataError, match=r"missing .*gone/shapes\.data.*python -m ssdlab data shapes"):
        build_dataset(f"{tmp_path / 'gone'}:val", is_train=False)
    with pytest.raises(DataError, match="voc_2007_trainval.*coco_2014_train.*shapes_val"):
        build_dataset("imagenet", is_train=True)
    assert "voc_2012_trainval" in known_names() and "coco_2014_valminusminival" in known_names()
    monkeypatch.setenv("VOC_ROOT", str(voc_root.parent))
    shapes = generate_shapes(tmp_path / "s", n_train=2, n_val=1, workers=1)
    with pytest.raises(DataError, match="different class names"):
        build_dataset(["voc_2007_trainval", str(shapes)], is_train=True)


# ----------------------------------------------------------------------------- data_scripts

def load_script(name: str):
    """Import a data_scripts/*.py file as a module."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_to_text_format_round_trip(small_shapes, tmp_path):
    convert = load_script("to_text_format")
    out = tmp_path / "text"
    assert convert.main(["--voc", str(small_shapes / "VOC"), "val", "--out", str(out), "--as", "valid",
                         "--name", "shp"]) == 1                                # VOC class names differ
    coco_args = ["--coco", str(small_shapes / "images"), str(small_shapes / "annotations/instances_val.json")]
    assert convert.main([*coco_args, "--out", str(out), "--as", "valid", "--name", "shp"]) == 0
    converted = TextDataset(out / "shp.data", "valid")
    original = TextDataset(small_shapes / "shapes.data", "valid")
    assert converted.class_names == original.class_names and len(converted) == len(original)
    for i in range(len(original)):
        np.testing.assert_allclose(converted.get_annotation(i)[0], original.get_annotation(i)[0], atol=1e-3)
        assert np.array_equal(converted.get_image(i), original.get_image(i))


def test_oxford_hand_conversion(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    hand = load_script("oxford_hand_to_text")
    root = tmp_path / "hand_dataset"
    for split, folder in (("train", "training"), ("valid", "validation"), ("test", "test")):
        data = root / f"{folder}_dataset" / f"{folder}_data"
        write_image(data / "images/Buffy_1.jpg", 80, 60)
        (data / "annotations").mkdir(parents=True)
        # a rotated square with corners (y, x), 1-based, and one box reaching beyond the image
        quad = {"a": np.array([[11.0, 21.0]]), "b": np.array([[21.0, 31.0]]),
                "c": np.array([[31.0, 21.0]]), "d": np.array([[21.0, 11.0]])}
        edge = {"a": np.array([[50.0, 70.0]]), "b": np.array([[50.0, 90.0]]),
                "c": np.array([[70.0, 90.0]]), "d": np.array([[70.0, 70.0]])}
        cells = np.empty((1, 2), dtype=object)
        cells[0, 0], cells[0, 1] = quad, edge
        scipy_io.savemat(data / "annotations/Buffy_1.mat", {"boxes": cells})
    assert hand.main([str(root), str(tmp_path / "out")]) == 0
    dataset = TextDataset(tmp_path / "out/hand.data", "valid")
    assert dataset.class_names == ("__background__", "hand")
    boxes, labels, _ = dataset.get_annotation(0)
    np.testing.assert_allclose(boxes, [[10, 10, 30, 30], [69, 49, 80, 60]], atol=1e-4)
    assert labels.tolist() == [1, 1]
    assert len(TextDataset(tmp_path / "out/hand.data", "test")) == 1


@pytest.mark.parametrize("script", ["VOC2007.sh", "VOC2012.sh", "COCO2014.sh", "_download.sh"])
def test_shell_scripts_parse(script):
    text = (SCRIPTS / script).read_text()
    assert subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True).returncode == 0
    assert "Usage" in text or script.startswith("_")
