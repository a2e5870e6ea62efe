"""Two CPU processes under torchrun (gloo): DDP training, gathered evaluation, a loadable checkpoint."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ssdlab

TESTS = Path(__file__).resolve().parent


def run(args, cwd):
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "ssdlab", *args]


def detections(path):
    rows = json.loads(Path(path).read_text())
    return sorted((r["image_id"], r["category_id"], *[round(v, 2) for v in r["bbox"]], round(r["score"], 4))
                  for r in rows if r["score"] > 0.05)


@pytest.mark.slow
def test_two_process_training_and_gathered_evaluation(shapes_dir, tmp_path):
    data = ["DATASETS.TRAIN", f"['{shapes_dir}:train']", "DATASETS.TEST", f"['{shapes_dir}:val']"]
    recipe = str(TESTS / "data" / "tiny.yaml")
    out = tmp_path / "ddp"
    log = run(torchrun("train", "--config-file", recipe, *data, "OUTPUT_DIR", str(out),
                       "SOLVER.MAX_ITER", "8", "SOLVER.LR_STEPS", "[6]"), tmp_path)
    assert "finished at iteration 4" in log  # MAX_ITER 8 / 2 processes (the seed's scaling)
    model = ssdlab.load(out / "model_final.pt")
    assert model.cfg.SOLVER.MAX_ITER == 4 and model.cfg.SOLVER.LR == pytest.approx(2 * 0.003)

    ckpt = out / "model_final.pt"
    run(torchrun("eval", "--ckpt", str(ckpt), "--detections", str(tmp_path / "two.json"), *data), tmp_path)
    two = detections(tmp_path / "two.json")
    run([sys.executable, "-m", "ssdlab", "eval", "--ckpt", str(ckpt), "--detections", str(tmp_path / "one.json"),
         *data], tmp_path)
    one = detections(tmp_path / "one.json")
    assert len(one) > 0 and len({r[0] for r in two}) > 12  # images from both ranks are present
    assert one == two
