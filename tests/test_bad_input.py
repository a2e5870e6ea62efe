"""Hostile input, round two: each case ends in one line naming the file, key or line and what to do,
with nothing half-written and nothing lost."""
from __future__ import annotations

import json
import logging
import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ssdlab
from ssdlab.__main__ import main
from ssdlab.config import PACKAGE_CONFIGS, load_config
from ssdlab.data.base import read_image
from ssdlab.data.coco import COCODataset
from ssdlab.data.loader import make_test_loader
from ssdlab.data.textset import TextDataset
from ssdlab.data.voc import VOCDataset
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.train import Trainer, train
from ssdlab.errors import CfgError, CheckpointError, ConfigError, DataError
from ssdlab.model.cfg import read_cfg
from ssdlab.model.ssd import feature_sizes
from test_loaders import make_voc, write_image

TESTS = Path(__file__).resolve().parent
TINY = str(TESTS / "data" / "tiny.yaml")
GARBAGE = bytes(range(128, 256)) * 4  # not UTF-8


def one_error_line(capsys, args: list[str]) -> str:
    """Run the CLI in-process; assert exit status 2 and one 'error:' line without a traceback; return it."""
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(shapes_dir, tmp_path_factory) -> Path:
    """A 4-iteration tiny model trained on the shapes set: its model_final.pt."""
    out = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config(TINY, ["DATASETS.TRAIN", f"['{shapes_dir}:train']", "DATASETS.TEST", f"['{shapes_dir}:val']",
                             "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", str(out)])
    return train(cfg, progress=False).checkpoint


def data_args(shapes_dir: Path) -> list[str]:
    return ["DATASETS.TRAIN", f"['{shapes_dir}:train']", "DATASETS.TEST", f"['{shapes_dir}:val']"]


# ----------------------------------------------------------------------------- recipes and cfgs

def test_binary_recipe_and_cfg_name_the_file(tmp_path, capsys):
    recipe = tmp_path / "garbage.yaml"
    recipe.write_bytes(GARBAGE)
    line = one_error_line(capsys, ["train", "--config-file", str(recipe)])
    assert f"{recipe} is not a text file" in line and "YAML recipe" in line
    cfg = tmp_path / "garbage.cfg"
    cfg.write_bytes(GARBAGE)
    with pytest.raises(CfgError, match="garbage.cfg is not a text file"):
        read_cfg(cfg)
    line = one_error_line(capsys, ["info", "--config-file", TINY, "MODEL.BACKBONE.CFG", str(cfg)])
    assert "garbage.cfg is not a text file" in line


@pytest.mark.parametrize("key, value, message", [
    ("SOLVER.BATCH_SIZE", "-4", "SOLVER.BATCH_SIZE = -4 must be at least 1"),
    ("SOLVER.BATCH_SIZE", "0", "SOLVER.BATCH_SIZE = 0 must be at least 1"),
    ("SOLVER.LR", "0", "SOLVER.LR = 0.0 must be above 0"),
    ("INPUT.IMAGE_SIZE", "0", "INPUT.IMAGE_SIZE = 0 must be at least 1"),
    ("SOLVER.LOG_PERIOD", "0", "SOLVER.LOG_PERIOD = 0 must be at least 1"),
    ("TEST.NMS_THRESHOLD", "1.5", "TEST.NMS_THRESHOLD = 1.5 must be between 0 and 1"),
])
def test_values_out_of_range_are_refused_where_they_are_set(key, value, message, tmp_path, capsys):
    line = one_error_line(capsys, ["train", "--config-file", TINY, key, value, "OUTPUT_DIR", str(tmp_path / "o")])
    assert "command line: " + message in line
    recipe = tmp_path / "r.yaml"
    section, name = key.split(".")
    recipe.write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError, match=f"{recipe}: {key}"):
        load_config(recipe)
    assert not (tmp_path / "o").exists()


def test_a_batch_larger_than_the_dataset_names_it_and_writes_nothing(shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    line = one_error_line(capsys, ["train", "--config-file", TINY, *data_args(shapes_dir), "SOLVER.BATCH_SIZE",
                                   "500", "OUTPUT_DIR", str(out)])
    assert "SOLVER.BATCH_SIZE = 500 is larger than the 160 images of shapes train" in line
    assert "lower SOLVER.BATCH_SIZE" in line and not out.exists()


def test_a_kernel_larger_than_its_input_names_the_layer_and_the_smallest_size(capsys):
    recipe = str(PACKAGE_CONFIGS / "vgg_bn_ssd300_voc0712.yaml")
    line = one_error_line(capsys, ["info", "--config-file", recipe, "INPUT.IMAGE_SIZE", "100"])
    assert "INPUT.IMAGE_SIZE = 100 is too small for vgg_bn_ssd300.cfg: layer 25 (line 222" in line
    assert "gets a 2x2 input" in line and "raise INPUT.IMAGE_SIZE to at least 268" in line
    layers = read_cfg(PACKAGE_CONFIGS / "backbones" / "vgg_bn_ssd300.cfg")
    assert feature_sizes(layers, 268, 3)[-1] == (1, 1)  # the size it names works ...
    with pytest.raises(ConfigError, match="at least 268"):
        feature_sizes(layers, 267, 3)  # ... and is the smallest that does


# ----------------------------------------------------------------------------- boxes and images

@pytest.fixture
def text_set(tmp_path) -> Path:
    """A one-image text-format dataset whose label file the tests write: its .data file."""
    write_image(tmp_path / "images/a.png", 100, 50)
    (tmp_path / "labels").mkdir()
    (tmp_path / "train.txt").write_text("images/a.png\n")
    (tmp_path / "x.names").write_text("hand\n")
    (tmp_path / "x.data").write_text("train= train.txt\nnames= x.names\n")
    return tmp_path / "x.data"


def test_text_pixel_coordinates_are_an_error_with_file_and_line(text_set):
    label = text_set.parent / "labels/a.txt"
    label.write_text("0 0.5 0.5 0.2 0.2\n0 50 25 20 10\n")
    with pytest.raises(DataError, match=r"a.txt:2: '0 50 25 20 10' looks like pixel coordinates"):
        TextDataset(text_set)


def test_text_invalid_boxes_are_dropped_with_one_warning_per_file(text_set, caplog):
    label = text_set.parent / "labels/a.txt"
    label.write_text("0 0.5 0.5 0.2 0.2\n0 nan 0.5 0.2 0.2\n0 0.5 0.5 -0.2 0.2\n")
    with caplog.at_level(logging.WARNING):
        data = TextDataset(text_set)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{label}: dropped 2 invalid boxes (line 2: a coordinate is not a finite number; "
                        "line 3: negative width); fix or remove them"]
    np.testing.assert_allclose(data.get_annotation(0)[0], [[40, 20, 60, 30]])  # the valid box, in pixels


def test_voc_reversed_and_nan_boxes_name_the_xml_and_the_object(tmp_path, caplog):
    root = make_voc(tmp_path / "VOC", {"1": (40, 30, [("dog", (1, 1, 11, 21), False),
                                                      ("cat", (20, 5, 10, 15), False),
                                                      ("dog", ("nan", 1, 5, 5), False)])})
    with caplog.at_level(logging.WARNING):
        data = VOCDataset(root, "trainval")
    xml = root / "Annotations" / "1.xml"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{xml}: dropped 2 invalid boxes (object 2 (cat): negative width; object 3 (dog): a coordinate is not "
        "a finite number); fix or remove them"]
    assert data.get_annotation(0)[1].tolist() == [data.class_names.index("dog")]


def test_boxes_outside_the_image_are_counted_per_image(tmp_path, caplog):
    root = make_voc(tmp_path / "VOC", {"1": (40, 30, [("dog", (50, 40, 60, 45), False)]),
                                       "2": (40, 30, [("dog", (1, 1, 11, 21), False)])})
    with caplog.at_level(logging.WARNING):
        VOCDataset(root, "trainval")
    message, = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "dropped 1 boxes of zero area after clipping to the image: 1.jpg (1)" in message


def coco_set(tmp_path: Path, annotations: list[dict], categories=None, image=None) -> tuple[Path, Path]:
    """One 60x40 image and an instances file with the given annotations."""
    write_image(tmp_path / "images/1.jpg", 60, 40)
    data = {"images": [image or {"id": 1, "file_name": "1.jpg", "width": 60, "height": 40}],
            "annotations": annotations, "categories": categories or [{"id": 1, "name": "cat"}]}
    (tmp_path / "instances.json").write_text(json.dumps(data))
    return tmp_path / "images", tmp_path / "instances.json"


def ann(id_: int, bbox, category: int = 1) -> dict:
    return {"id": id_, "image_id": 1, "category_id": category, "bbox": bbox, "iscrowd": 0}


def test_coco_bbox_of_three_numbers_names_the_annotation(tmp_path):
    images, file = coco_set(tmp_path, [ann(1, [1, 2, 3, 4]), ann(7, [1, 2, 3])])
    with pytest.raises(DataError, match=r"instances.json: annotation 7 has bbox \[1, 2, 3\]; a COCO bbox is "
                                        r"\[x, y, width, height\]"):
        COCODataset(images, file)


def test_coco_negative_size_is_dropped_naming_the_annotation(tmp_path, caplog):
    images, file = coco_set(tmp_path, [ann(1, [1, 2, 3, 4]), ann(5, [10, 10, -4, 5])])
    with caplog.at_level(logging.WARNING):
        data = COCODataset(images, file)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{file}: dropped 1 invalid box (annotation 5: negative width); fix or remove it"]
    np.testing.assert_allclose(data.get_annotation(0)[0], [[1, 2, 4, 6]])


def test_coco_annotations_of_an_unknown_image_are_named_in_one_warning(tmp_path, caplog):
    orphan = {**ann(9, [1, 2, 3, 4]), "image_id": 42}
    images, file = coco_set(tmp_path, [ann(1, [1, 2, 3, 4]), orphan, {**orphan, "id": 10}])
    with caplog.at_level(logging.WARNING):
        data = COCODataset(images, file)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{file}: 2 annotations name an image_id missing from 'images' (first: annotation 9); they are left out "
        "— fix the image_id or add the image"]
    assert len(data) == 1 and len(data.get_annotation(0)[0]) == 1


def test_a_score_threshold_outside_0_to_1_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--ckpt", "m.pt", "--images", ".", "--out", "drawn", "--score-threshold", "2"])
    assert stop.value.code == 2 and "--score-threshold: 2 is outside 0..1" in capsys.readouterr().err


def test_coco_image_without_width_takes_its_size_from_the_file(tmp_path):
    images, file = coco_set(tmp_path, [ann(1, [1, 2, 3, 4])], image={"id": 1, "file_name": "1.jpg"})
    info = COCODataset(images, file).get_img_info(0)
    assert (info["width"], info["height"]) == (60, 40)


def test_coco_background_category_is_not_a_class(tmp_path):
    """labelme's COCO export lists '_background_' with id 0: it must not become class 1."""
    categories = [{"id": 0, "name": "_background_"}, {"id": 1, "name": "hand"}, {"id": 2, "name": "face"}]
    images, file = coco_set(tmp_path, [ann(1, [1, 2, 3, 4], 2), ann(2, [5, 5, 9, 9], 1)], categories)
    data = COCODataset(images, file)
    assert data.class_names == ("__background__", "hand", "face")
    assert data.get_annotation(0)[1].tolist() == [2, 1]
    assert data.label_to_category == {1: 1, 2: 2}


def test_16_bit_grayscale_png_is_scaled_to_8_bits(tmp_path):
    values = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 54).astype(np.uint16)  # up to 64746
    Image.fromarray(values).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "I;16"
    image = read_image(tmp_path / "g.png")
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 1], np.round(values / 257).astype(np.uint8))
    assert 100 < image.mean() < 155  # not clipped to white


def test_an_error_in_a_loader_worker_is_the_same_one_line(tmp_path, text_set):
    (text_set.parent / "labels/a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    data = TextDataset(text_set, cache=False)
    (text_set.parent / "images/a.png").write_bytes(b"not a png")
    cfg = load_config(TINY)
    with pytest.raises(DataError) as in_process:
        next(iter(make_test_loader(cfg.clone().freeze(), data)))
    cfg = load_config(TINY, ["DATA_LOADER.NUM_WORKERS", "1"])
    with pytest.raises(DataError) as in_worker:
        next(iter(make_test_loader(cfg, data)))
    assert str(in_worker.value) == str(in_process.value)
    assert str(in_worker.value).startswith(f"cannot read image {text_set.parent / 'images/a.png'}")
    assert "\n" not in str(in_worker.value)


# ----------------------------------------------------------------------------- classes

def other_classes(shapes_dir: Path, tmp_path: Path, names: list[str]) -> Path:
    """The shapes val split under other class names: a .data file."""
    (tmp_path / "other.names").write_text("".join(f"{n}\n" for n in names))
    for split in ("train", "val"):  # the lists hold paths relative to the shapes folder: made absolute
        lines = (shapes_dir / f"{split}.txt").read_text().split()
        (tmp_path / f"{split}.txt").write_text("".join(f"{shapes_dir / line}\n" for line in lines))
    data = tmp_path / "other.data"
    data.write_text(f"valid= val.txt\ntrain= train.txt\nnames= other.names\n"
                    f"images= {shapes_dir / 'images'}\nlabels= {shapes_dir / 'labels'}\n")
    return data


@pytest.mark.parametrize("names", [["a", "b", "c", "d", "e"], ["circle", "square", "triangle", "star", "hexagon",
                                                               "moon", "cross"]])
def test_eval_on_other_classes_names_both_before_inference(names, tiny_run, shapes_dir, tmp_path, capsys,
                                                           monkeypatch):
    import ssdlab.engine.inference as inference

    monkeypatch.setattr(inference, "make_test_loader", lambda *a: pytest.fail("inference ran"))
    data = other_classes(shapes_dir, tmp_path, names)
    line = one_error_line(capsys, ["eval", "--ckpt", str(tiny_run), "DATASETS.TEST", f"['{data}']"])
    assert f"checkpoint {tiny_run} detects 5 classes (circle, square, triangle, star, hexagon)" in line
    assert f"but other valid has {len(names)} classes ({', '.join(names)})" in line


def test_fine_tuning_to_other_classes_gives_advice_that_works(tiny_run, shapes_dir, tmp_path, capsys):
    data = other_classes(shapes_dir, tmp_path, ["a", "b", "c", "d", "e", "f"])
    args = ["train", "--config-file", TINY, "DATASETS.TRAIN", f"['{data}']", "MODEL.FINE_TUNE", "True",
            "MODEL.WEIGHTS", str(tiny_run), "OUTPUT_DIR", str(tmp_path / "ft"), "SOLVER.MAX_ITER", "2"]
    line = one_error_line(capsys, args)
    assert f"MODEL.WEIGHTS {tiny_run} detects 5 classes" in line and "the training data has 6 classes (a, b, c, d, e, f)" in line
    advice = line.rsplit("from scratch: ", 1)[1].split()
    assert advice == ["MODEL.FINE_TUNE", "False", "MODEL.NUM_CLASSES", "7"]
    fresh = load_config(TINY, [*args[3:5], "OUTPUT_DIR", str(tmp_path / "ft"), "SOLVER.MAX_ITER", "2", *advice])
    assert train(fresh, progress=False).finished  # following the advice trains


def test_fine_tuning_another_network_than_the_recipe_names_is_refused(shapes_dir, tmp_path, capsys):
    """The residual baseline under the plain recipe would train the residual network recorded as course_plain.cfg."""
    from ssdlab.course import baseline

    recipe = PACKAGE_CONFIGS / "course" / "plain_shapes.yaml"
    args = ["train", "--config-file", str(recipe), *data_args(shapes_dir), "MODEL.FINE_TUNE", "True",
            "MODEL.WEIGHTS", str(baseline("residual")), "OUTPUT_DIR", str(tmp_path / "ft"), "SOLVER.MAX_ITER", "2"]
    line = one_error_line(capsys, args)
    assert f"MODEL.WEIGHTS {baseline('residual')} has a backbone of 19 layers that does not follow" in line
    assert "course_plain.cfg" in line and "pick the recipe whose cfg the checkpoint was trained from" in line
    assert not (tmp_path / "ft").exists()


# ----------------------------------------------------------------------------- checkpoints

def test_a_last_checkpoint_naming_a_missing_file_is_an_error_not_a_silent_restart(shapes_dir, tmp_path, capsys):
    """Resuming must not start over from iteration 0 because last_checkpoint names a file that is gone;
    --fresh still starts over."""
    out = tmp_path / "run"
    args = ["train", "--config-file", TINY, *data_args(shapes_dir), "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", str(out),
            "SOLVER.CHECKPOINT_PERIOD", "2"]
    assert main(args) == 0
    capsys.readouterr()
    (out / "model_final.pt").unlink()  # as if stopped before the end
    (out / "last_checkpoint").write_text("garbage-path.pt\n")
    line = one_error_line(capsys, args)
    assert f"{out / 'last_checkpoint'} names 'garbage-path.pt', which is not a file in {out}" in line
    assert "(checkpoints there: model_000002.pt, model_000004.pt)" in line and "--fresh" in line
    assert main(["train", "--fresh", *args[1:]]) == 0


def test_a_marked_checkpoint_without_its_config_is_refused(tiny_run, tmp_path):
    for key in ("config", "cfg_text", "model"):
        state = ckpt.read_checkpoint(tiny_run)
        del state[key]
        torch.save(state, tmp_path / "cut.pt")
        with pytest.raises(CheckpointError, match=f"has the ssdlab marker but lacks '{key}'"):
            ssdlab.load(tmp_path / "cut.pt")


class Payload:
    """Runs code when unpickled."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_malicious_backbone_weights_are_blocked_without_torch_advice(tmp_path, capsys):
    weights = tmp_path / "evil.pth"
    with weights.open("wb") as handle:
        torch.save({"features.0.weight": Payload()}, handle, pickle_module=pickle)
    cfg = load_config(PACKAGE_CONFIGS / "mobile_v2_ssd_voc0712.yaml",
                      ["MODEL.BACKBONE.PRETRAINED", "True", "MODEL.BACKBONE.WEIGHTS", str(weights)])
    with pytest.raises(CheckpointError) as err:
        ssdlab.build_model(cfg)
    assert f"{weights} is not a readable torchvision mobilenet_v2 state dict" in str(err.value)
    assert "weights_only" not in str(err.value) and "pwned" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- where outputs go

def test_outputs_that_are_existing_files_are_refused_before_any_work(tiny_run, shapes_dir, tmp_path, capsys,
                                                                      monkeypatch):
    import ssdlab.prune.report as report

    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    monkeypatch.setattr(report, "make_plan", lambda *a: pytest.fail("pruning ran"))
    line = one_error_line(capsys, ["prune", "--ckpt", str(tiny_run), "--percent", "0.3", "--out", str(blocker)])
    assert f"--out {blocker} cannot be a folder: {blocker} is an existing file" in line
    line = one_error_line(capsys, ["prune", "--ckpt", str(tiny_run), "--percent", "0.3", "--tag", "../x"])
    assert "--tag '../x' must be a plain file name" in line
    for force in ([], ["--force"]):
        line = one_error_line(capsys, ["export", "--ckpt", str(tiny_run), "--out", str(blocker), *force])
        assert "is an existing file" in line
    line = one_error_line(capsys, ["export", "--ckpt", str(tiny_run), "--out", str(blocker / "sub")])
    assert f"(inside {blocker}, which is a file)" in line
    line = one_error_line(capsys, ["export", "--ckpt", str(tiny_run), "--out", str(tmp_path / "w"),
                                   "--name", "../x"])
    assert "--name '../x' must be a plain file name" in line and not (tmp_path / "w").exists()
    images = tmp_path / "images"
    write_image(images / "a.png", 64, 64)
    line = one_error_line(capsys, ["demo", "--ckpt", str(tiny_run), "--images", str(images), "--out", str(blocker)])
    assert "--out" in line and "is an existing file" in line
    line = one_error_line(capsys, ["train", "--config-file", TINY, *data_args(shapes_dir), "OUTPUT_DIR",
                                   str(blocker)])
    assert f"OUTPUT_DIR {blocker} cannot be a folder" in line
    assert blocker.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "images"]


def test_demo_with_one_unreadable_image_writes_nothing(tiny_run, tmp_path, capsys):
    images = tmp_path / "images"
    for name in ("a.png", "b.png"):
        write_image(images / name, 64, 64)
    (images / "c.png").write_bytes(b"broken")
    out = tmp_path / "drawn"
    line = one_error_line(capsys, ["demo", "--ckpt", str(tiny_run), "--images", str(images), "--out", str(out)])
    assert f"cannot read image {images / 'c.png'}" in line and "nothing was written to --out" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # no out folder, no temporary folder
    (images / "c.png").unlink()
    assert main(["demo", "--ckpt", str(tiny_run), "--images", str(images), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]


# ----------------------------------------------------------------------------- Ctrl-C

def train_args(shapes_dir: Path, out: Path) -> list[str]:
    return ["train", "--config-file", TINY, *data_args(shapes_dir), "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", str(out)]


def test_ctrl_c_twice_or_while_starting_is_one_line_and_status_130(shapes_dir, tmp_path, capsys, monkeypatch):
    import ssdlab.engine.train as training

    real_step = Trainer.step

    def step_then_two_ctrl_c(self, images, targets, iteration):
        losses = real_step(self, images, targets, iteration)
        if iteration == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return losses

    monkeypatch.setattr(Trainer, "step", step_then_two_ctrl_c)
    assert main(train_args(shapes_dir, tmp_path / "twice")) == 130
    err = capsys.readouterr().err
    assert "interrupted (Ctrl-C): train stopped" in err and "Traceback" not in err
    monkeypatch.undo()

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "datasets", interrupted)
    assert main(train_args(shapes_dir, tmp_path / "start")) == 130
    err = capsys.readouterr().err
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err
    assert not (tmp_path / "start").exists()


def test_ctrl_c_in_the_final_evaluation_keeps_the_trained_weights(shapes_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"

    def interrupted(self, iteration):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "evaluate", interrupted)
    assert main([*train_args(shapes_dir, out), "SOLVER.CHECKPOINT_PERIOD", "0"]) == 130
    assert "interrupted (Ctrl-C)" in capsys.readouterr().err
    saved = ckpt.read_checkpoint(out / "model_final.pt")
    assert saved["iteration"] == 4 and "voc_map" not in saved["metrics"] and saved["metrics"]["train_seconds"] > 0
    monkeypatch.undo()
    monkeypatch.setattr(Trainer, "step", lambda *a: pytest.fail("the finished iterations were trained again"))
    assert main(train_args(shapes_dir, out)) == 0
    assert "training finished at iteration 4" in capsys.readouterr().out
    done = ckpt.read_checkpoint(out / "model_final.pt")
    assert "voc_map" in done["metrics"] and done["metrics"]["train_seconds"] == saved["metrics"]["train_seconds"]
    assert ckpt.weights_digest(done) == ckpt.weights_digest(saved)


# ----------------------------------------------------------------------------- seed fidelity

def test_ssdlite_has_the_seeds_parameter_count(capsys):
    """The seed's separable head has a bias on its depthwise conv: 3,023,128 parameters with 2 classes."""
    recipe = str(PACKAGE_CONFIGS / "mobile_v2_ssd_hand_normal_sparse.yaml")
    assert main(["info", "--config-file", recipe]) == 0
    totals = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert totals["params"] == 3_023_128


def test_an_ssdlite_checkpoint_from_before_the_depthwise_bias_still_loads(tmp_path):
    cfg = load_config(TINY, ["MODEL.BOX_HEAD.PREDICTOR", "SSDLiteBoxPredictor"])
    model = ssdlab.build_model(cfg).eval()
    with torch.no_grad():
        for head in [*model.box_head.cls_headers, *model.box_head.reg_headers]:
            if hasattr(head, "pointwise"):
                head.conv.bias.zero_()  # what an older checkpoint computed
    state = ckpt.make_checkpoint(model)
    dropped = [k for k in state["model"] if k.endswith(".conv.bias") and k.startswith("box_head.")]
    assert len(dropped) == 2  # level 0 of the class and box heads (the last level is a plain 1x1 conv)
    for key in dropped:
        del state["model"][key]
    ckpt.save_checkpoint(state, tmp_path / "old.pt")
    image = torch.randn(1, 3, 64, 64)
    assert torch.equal(ssdlab.load(tmp_path / "old.pt").forward_raw(image)[0], model.forward_raw(image)[0])


def test_staged_writes_all_targets_or_none(tmp_path):
    from ssdlab.files import staged

    first, second = tmp_path / "a.txt", tmp_path / "sub" / "b.txt"
    first.write_text("old")
    with pytest.raises(RuntimeError):
        with staged(first, second) as (a, b):
            a.write_text("new")
            raise RuntimeError("stopped half-way")
    assert first.read_text() == "old" and not second.exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.txt"]  # no temporary file left
    with staged(first, second) as (a, b):
        a.write_text("new")
        b.write_text("b")
    assert (first.read_text(), second.read_text()) == ("new", "b")
    mask = os.umask(0)
    os.umask(mask)
    assert first.stat().st_mode & 0o777 == 0o666 & ~mask  # as open() would make it, not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "sub"]
    with pytest.raises(RuntimeError):  # a folder made only for a target that was never written goes again
        with staged(tmp_path / "new" / "deep" / "c.txt"):
            raise RuntimeError("stopped")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "sub"]


def test_staged_folder_replaces_a_folder_whole_or_not_at_all(tmp_path):
    from ssdlab.files import staged_folder

    out = tmp_path / "export"
    out.mkdir()
    (out / "old.bin").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_folder(out) as work:
            (work / "new.bin").write_text("half")
            raise RuntimeError("stopped half-way")
    assert [p.name for p in tmp_path.iterdir()] == ["export"] and [p.name for p in out.iterdir()] == ["old.bin"]
    with staged_folder(out) as work:
        (work / "new.bin").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["export"] and [p.name for p in out.iterdir()] == ["new.bin"]
    assert out.stat().st_mode & 0o777 == 0o755


def test_a_checkpoint_whose_weights_changed_on_disk_is_refused(tiny_run, tmp_path):
    """Bytes flipped inside a tensor still unpickle; the digest written with the weights tells."""
    state = ckpt.read_checkpoint(tiny_run)
    assert state["weights_digest"] == ckpt.weights_digest(state)  # sealed by save_checkpoint
    state["model"]["backbone.module_list.0.conv.weight"][0, 0, 0, 0] += 1.0  # as a flipped byte would
    torch.save(state, tmp_path / "flipped.pt")  # written around save_checkpoint, digest kept
    with pytest.raises(CheckpointError, match=r"flipped.pt is damaged: its weights are not the ones it was saved"):
        ssdlab.load(tmp_path / "flipped.pt")
    ckpt.save_checkpoint(state, tmp_path / "edited.pt")  # saving through ssdlab seals the new weights
    assert ckpt.read_checkpoint(tmp_path / "edited.pt")["weights_digest"] == ckpt.weights_digest(state)
