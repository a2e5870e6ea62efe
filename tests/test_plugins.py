"""How the library is put together: lessons reach training as plugins, quantization travels as one QuantSpec in the
checkpoint, and the detector, the training loop and the export package import no lesson and no cycle."""
import ast
import subprocess
import sys

import pytest
import torch
from torch import nn

import ssdlab
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.plugins import Plugin
from ssdlab.engine.train import read_metrics, train
from ssdlab.errors import QuantError
from ssdlab.quant.layers import QuantSpec
from tests.conftest import TESTS

PACKAGE = TESTS.parent / "ssdlab"
QUAN = ["MODEL.BACKBONE.CFG", str(TESTS / "data" / "tiny_quan.cfg")]


class CountingLoss(nn.Module):
    """Wraps a criterion and records the plugin's extra target of every batch it sees."""

    def __init__(self, base: nn.Module, seen: list):
        super().__init__()
        self.base, self.seen = base, seen

    def forward(self, cls_logits, bbox_pred, targets):
        self.seen.append(int(targets["batch_size"]))
        return self.base(cls_logits, bbox_pred, targets)


class Probe(Plugin):
    """Uses all four plugin points."""

    def __init__(self):
        self.seen, self.steps = [], []

    def setup(self, model, device):
        model.criterion = CountingLoss(model.criterion, self.seen)

    def targets(self, images):
        return {"batch_size": torch.tensor(images.shape[0])}

    def after_backward(self, model, iteration):
        self.steps.append(iteration)

    def eval_record(self, model):
        return {"probe": len(self.steps)}


def test_a_plugin_changes_the_criterion_adds_targets_steps_and_logs(tiny_cfg):
    cfg = tiny_cfg("SOLVER.MAX_ITER", "3", "SOLVER.BATCH_SIZE", "4")
    probe = Probe()
    result = train(cfg, plugins=[probe], progress=False)
    assert probe.seen == [4, 4, 4] and probe.steps == [0, 1, 2]
    assert [r["probe"] for r in read_metrics(result.checkpoint, "probe")] == [3]  # logged with the final evaluation


def test_sparse_training_logs_gamma_through_its_plugin(tiny_cfg):
    result = train(tiny_cfg("SOLVER.MAX_ITER", "2", "PRUNE.TYPE", "normal"), progress=False)
    (record,) = read_metrics(result.checkpoint, "gamma")
    model = ckpt.load(result.checkpoint)
    layer, gammas = next(iter(record["gamma"].items()))
    assert record["iter"] == 2 and gammas == pytest.approx(
        model.backbone.module_list[int(layer)].bn.weight.abs().tolist(), abs=1e-5)


def test_a_checkpoint_rebuilds_the_quantization_it_stored(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*QUAN, "QUANTIZATION.TYPE", "IAO", "QUANTIZATION.FINAL", "True")
    model = ssdlab.build_model(cfg)
    spec = model.quant_spec
    assert spec.kind == "IAO" and spec.heads and spec.layers == tuple(
        i for i, layer in enumerate(model.backbone.defs) if layer.get("quantization"))
    state = ckpt.make_checkpoint(model)
    assert QuantSpec.from_dict(state["quant"]) == spec
    state["config"]["QUANTIZATION"]["WBITS"] = 4  # the stored spec, not the config, says what the model is
    ckpt.save_checkpoint(state, tmp_path / "q.pt")
    assert ssdlab.load(tmp_path / "q.pt").quant_spec == spec
    state.pop("quant")  # written before the spec was stored: from the config and the cfg's own marks
    state["config"]["QUANTIZATION"]["WBITS"] = 8
    ckpt.save_checkpoint(state, tmp_path / "old.pt")
    assert ssdlab.load(tmp_path / "old.pt").quant_spec == spec
    assert ckpt.make_checkpoint(ssdlab.build_model(tiny_cfg()))["quant"] is None


@pytest.mark.parametrize("args, key", [(("IAO", 1, 8), "WBITS"), (("BWN", 2, 8), "ABITS"), (("int4", 4, 4), "TYPE"),
                                       (("IAO", 8, 8, 0.1, "per-tensor"), "IAO_MODE")])
def test_a_quant_spec_is_checked_once_when_made(args, key):
    with pytest.raises(QuantError, match=f"QUANTIZATION.{key}"):
        QuantSpec(*args)


def _imports(path) -> set[str]:
    """Every ssdlab module a file imports, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ssdlab"):
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("ssdlab")}
    return names


@pytest.mark.parametrize("module", ["model/ssd.py", "engine/train.py", "engine/checkpoint.py"])
def test_the_detector_and_the_training_loop_import_no_lesson(module):
    lessons = {name for name in _imports(PACKAGE / module) if name.startswith(("ssdlab.prune", "ssdlab.quant.apply"))}
    assert not lessons, f"{module} imports {sorted(lessons)}: lessons reach it through ssdlab.lessons or build_model"


def test_the_detector_module_loads_no_lesson():
    code = ("import sys, ssdlab.model.ssd; print(sorted(m for m in sys.modules "
            "if m.startswith(('ssdlab.prune', 'ssdlab.quant', 'ssdlab.engine'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def _module(path) -> str:
    """ssdlab.a.b for PACKAGE/a/b.py."""
    return ".".join(("ssdlab", *path.relative_to(PACKAGE).with_suffix("").parts))


def test_the_package_has_no_import_cycle():
    modules = {_module(p): p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    done, path = set(), []

    def visit(name):
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name not in done:
            path.append(name)
            for other in sorted(graph[name]):
                visit(other)
            path.pop()
            done.add(name)

    for name in sorted(graph):
        visit(name)
