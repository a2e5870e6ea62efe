"""The command line as a user runs it: train, eval, demo (subprocesses) and info (every recipe)."""
import json
import os
import re
import signal
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ssdlab.__main__ import main
from ssdlab.config import PACKAGE_CONFIGS

TESTS = Path(__file__).resolve().parent
RECIPES = sorted(PACKAGE_CONFIGS.glob("*.yaml")) + sorted((PACKAGE_CONFIGS / "course").glob("*.yaml"))


def ssdlab_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ssdlab", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=900)


def voc_map(stdout: str) -> float:
    return float(re.search(r"VOC mAP@0.5 \(area\): ([0-9.]+)", stdout).group(1))


@pytest.mark.slow
def test_train_eval_demo_detect_the_shapes(shapes_dir, tmp_path):
    data = ["DATASETS.TRAIN", f"['{shapes_dir}:train']", "DATASETS.TEST", f"['{shapes_dir}:val']"]
    out = tmp_path / "run"
    trained = ssdlab_cli("train", "--config-file", str(TESTS / "data" / "slim.yaml"), *data,
                         "OUTPUT_DIR", str(out), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (out / "model_final.pt").is_file() and (out / "metrics.jsonl").is_file()

    # 160 images are far too few to generalise (benchmarks/RESULTS.md has the course-size numbers),
    # but a detector that trains must find the shapes it was trained on: chance is about 0.01
    seen = ssdlab_cli("eval", "--ckpt", str(out / "model_final.pt"), "--errors", "DATASETS.TEST",
                      f"['{shapes_dir}:train']", cwd=tmp_path)
    assert seen.returncode == 0, seen.stderr[-3000:]
    assert voc_map(seen.stdout) > 0.5, seen.stdout
    assert "objects at detections scoring >= 0.3" in seen.stdout and "detections: correct" in seen.stdout
    evaluated = ssdlab_cli("eval", "--ckpt", str(out / "model_final.pt"), *data, cwd=tmp_path)
    assert not list(out.glob("*.json")), "eval writes no file unless asked (--detections)"
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert 0.0 <= voc_map(evaluated.stdout) <= 1.0
    assert "circle" in evaluated.stdout and "AP50" in evaluated.stdout
    # TEST.* overrides reach the model's post-processing (it was built with the stored config)
    found = tmp_path / "detections.json"
    capped = ssdlab_cli("eval", "--ckpt", str(out / "model_final.pt"), "--detections", str(found), *data,
                        "TEST.MAX_PER_IMAGE", "1", cwd=tmp_path)
    assert capped.returncode == 0, capped.stderr[-3000:]
    per_image = Counter(d["image_id"] for d in json.loads(found.read_text()))
    truth = json.loads((tmp_path / "detections.gt.json").read_text())
    assert {image["id"] for image in truth["images"]} >= set(per_image)
    assert per_image and max(per_image.values()) == 1

    images, drawn = tmp_path / "images", tmp_path / "drawn"
    images.mkdir()
    for path in sorted((shapes_dir / "images" / "train").glob("*.png"))[:12]:
        shutil.copy(path, images)
    demo = ssdlab_cli("demo", "--ckpt", str(out / "model_final.pt"), "--images", str(images),
                      "--out", str(drawn), "--score-threshold", "0.4", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr[-3000:]
    lines = [line for line in demo.stdout.splitlines() if "FPS" in line]
    assert len(lines) == 12 and len(list(drawn.glob("*.png"))) == 12
    assert sum(int(re.search(r": (\d+) objects?,", line).group(1)) for line in lines) >= 12


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_info_for_every_shipped_recipe(recipe, capsys):
    assert main(["info", "--config-file", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"params [\d,]+ .* MACs [\d.]+ M .* priors \d+", out), out


def test_info_macs_per_layer_add_up_and_match_a_hand_count(capsys):
    main(["info", "--config-file", str(PACKAGE_CONFIGS / "course" / "plain_shapes.yaml")])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.split()[0].isdigit()
            or line.startswith("head")}
    assert int(rows["0"][-1].replace(",", "")) == 16 * 3 * 3 * 3 * 64 * 64  # 3->16 3x3 conv, 64x64 output
    assert int(rows["1"][-1].replace(",", "")) == 24 * 16 * 3 * 3 * 64 * 64
    assert int(rows["2"][-1]) == 0  # max-pool: no multiply-accumulates
    total = json.loads(out.splitlines()[-1])["macs"]
    assert sum(int(r[-1].replace(",", "")) for r in rows.values()) == total


def test_info_latency_adds_a_time_column_and_says_how_it_was_measured(capsys):
    main(["info", "--ckpt", str(PACKAGE_CONFIGS.parent / "checkpoints" / "plain_shapes.pt"), "--latency"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "ms"
    rows = [line.split() for line in lines[1:] if line.split()[0].isdigit() or line.startswith("head")]
    assert len(rows) == 14 and all(float(row[-1]) >= 0 for row in rows)
    assert float(rows[1][-1]) > 0  # a conv takes time
    assert any(line.startswith("ms: ") and "CPU flags" in line for line in lines)


def test_info_piped_into_a_reader_that_stops_early_is_quiet(tmp_path):
    recipe = PACKAGE_CONFIGS / "course" / "plain_shapes.yaml"
    piped = subprocess.run(f"'{sys.executable}' -m ssdlab info --config-file '{recipe}' | head -n 1", shell=True,
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert piped.stdout.count("\n") == 1
    assert "Traceback" not in piped.stderr and "BrokenPipeError" not in piped.stderr, piped.stderr


def test_info_prior_counts_of_seed_recipes(capsys):
    for name, priors in [("vgg_bn_ssd300_voc0712", 8732), ("mobile_v2_ssd_voc0712", 3234),
                         ("vgg_bn_ssd512_voc0712", 24564)]:
        main(["info", "--config-file", str(PACKAGE_CONFIGS / f"{name}.yaml")])
        assert f"priors {priors}" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["train", "--config-file", "nope.yaml"], "does not exist"),
    (["train", "--config-file", str(TESTS / "data" / "tiny.yaml"), "SOLVER.MAX_ITERS", "3"], "SOLVER.MAX_ITER"),
    (["eval", "--ckpt", "missing.pt"], "missing.pt"),
    (["eval", "--ckpt", "missing.pt", "--detections", "."], "is a folder"),
    (["train", "--config-file", str(TESTS / "data" / "tiny.yaml"), "SOLVER.MAX_ITER", "3", "--fresh"],
     "--fresh comes after the KEY VALUE overrides; put options first"),
    (["eval", "--ckpt", "missing.pt", "--detections", "no/such/folder/d.json"], "does not exist; create it first"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    done = ssdlab_cli(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_demo_wants_a_folder_of_images(tmp_path):
    from ssdlab.errors import DataError
    from ssdlab.viz.demo import image_files

    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="a.png is a file; give the folder"):
        image_files(tmp_path / "a.png")
    assert image_files(tmp_path) == [tmp_path / "a.png"]


def test_ctrl_c_exits_130_and_a_finished_run_says_it_was_reused(shapes_dir, tmp_path, monkeypatch, capsys):
    from ssdlab.engine.train import Trainer

    command = ["train", "--config-file", str(TESTS / "data" / "tiny.yaml"), "DATASETS.TRAIN", f"['{shapes_dir}:train']",
               "DATASETS.TEST", "[]", "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", str(tmp_path / "run")]
    real_step = Trainer.step

    def step_then_ctrl_c(self, images, targets, iteration):
        losses = real_step(self, images, targets, iteration)
        if iteration == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return losses

    monkeypatch.setattr(Trainer, "step", step_then_ctrl_c)
    assert main(command) == 130  # so that `train && eval` stops here
    assert "training stopped (run the same command to resume) at iteration 2" in capsys.readouterr().out
    monkeypatch.undo()
    assert main(command) == 0
    assert "training finished at iteration 4" in capsys.readouterr().out
    assert main(command) == 0
    assert "training had already finished (reused as it is; --fresh trains it again) at iteration 4" in \
        capsys.readouterr().out
