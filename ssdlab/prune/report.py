"""Prune a checkpoint end to end: plan, mask, compensate, compact, measure, and write the results.

    report = prune_checkpoint("runs/plain_sparse/model_final.pt", cfg, percent=0.5)
    report = prune_checkpoint("runs/plain_sparse/model_final.pt", cfg, None, macs=0.5)  # keep half the MACs
    print(report.text)          # the table also written to <tag>.txt

Writes `<tag>.pt` (the compact model, self-describing), `<tag>.cfg` and `<tag>.txt` into the
output folder, all or nothing: nothing is written when any step fails.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ssdlab.config import CfgNode, get_default_config
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.inference import check_classes
from ssdlab.engine.profile import compare_latency, latency_note, measure, torch_call
from ssdlab.errors import PruneError
from ssdlab.files import check_file_stem, check_output_folder, staged
from ssdlab.model.ssd import SSD
from ssdlab.prune.plan import PrunePlan
from ssdlab.prune.surgery import compact_model, make_budget_plan, make_plan, masked_model

DEFAULT_ROUND_TO = get_default_config().PRUNE.ROUND_TO
log = logging.getLogger(__name__)

NOT_SPARSE = ("{path} was not sparse-trained (its PRUNE.TYPE is 'no'), so its BN γ are not pushed towards zero: "
              "pruning will remove channels that still carry signal and the accuracy will collapse. Sparse-train "
              "it first (PRUNE.TYPE normal and PRUNE.SR 0.005, as ssdlab/configs/course/plain_sparse.yaml, with "
              "MODEL.FINE_TUNE True MODEL.WEIGHTS {path}), or fine-tune the pruned model afterwards")


@dataclass
class PruneReport:
    """What `prune_checkpoint` measured and wrote."""

    plan: PrunePlan
    rows: list[dict]
    text: str
    files: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    model: SSD | None = None


def _cell(value, fmt: str) -> str:
    """A table cell; '-' for values not measured."""
    width = int(fmt.split(".")[0])
    return f"{'-':>{width}}" if value is None else format(value, fmt)


def format_table(rows: list[dict]) -> str:
    """The report table: one line per model variant."""
    lines = [f"{'model':<22} {'params':>11} {'MiB':>7} {'MACs(M)':>9} {'ms':>7} {'VOC mAP@0.5':>12} {'COCO AP':>8}"]
    for r in rows:
        lines.append(f"{r['model']:<22} {r['params']:>11,} {r['size_mib']:>7.2f} {r['macs'] / 1e6:>9.1f} "
                     f"{_cell(r['latency_ms'], '7.1f')} {_cell(r['voc_map'], '12.4f')} {_cell(r['coco_ap'], '8.4f')}")
    return "\n".join(lines)


def summary_lines(result: PrunePlan, rows: list[dict], timing: dict | None = None,
                  gamma_scale: str = "global") -> list[str]:
    """Threshold, channels and compression below the table."""
    original, compact = rows[0], rows[-1]
    ranked = "|γ| / largest |γ| of its layer" if gamma_scale == "layer" else "|γ|"
    lines = [f"mode {result.mode}, percent {result.percent:g}, threshold {ranked} >= {result.threshold:.6g}, "
             f"highest safe percent {result.highest_safe:.4f}",
             f"channels kept {result.channels_after} of {result.channels_before} in the pruned layers; "
             f"head levels kept {result.levels}",
             f"compression (params) {1 - compact['params'] / original['params']:.1%}, "
             f"MACs {1 - compact['macs'] / original['macs']:.1%} fewer"]
    if timing:
        before, after = timing["original"], timing["compact"]
        lines.append(f"CPU latency {before['median_ms']:.2f} ms -> {after['median_ms']:.2f} ms "
                     f"({before['median_ms'] / after['median_ms']:.2f}x; quartiles {before['p25_ms']:.2f}-"
                     f"{before['p75_ms']:.2f} and {after['p25_ms']:.2f}-{after['p75_ms']:.2f} ms; "
                     f"{latency_note(after)})")
    if original["voc_map"] is not None and compact["voc_map"] is not None:
        lines.append(f"VOC mAP@0.5 change {compact['voc_map'] - original['voc_map']:+.4f}")
    return lines


def budget_line(result: PrunePlan, macs: float) -> str:
    """What a MACs budget chose: the percent and the share of the MACs its plan keeps."""
    return (f"MACs budget {macs:g}: percent {result.percent:.4f}, which keeps "
            f"{result.macs_after / result.macs_before:.3f} of the MACs")


def check_request(result: PrunePlan, drop_levels: bool) -> None:
    """Refuse a percent that empties a layer unless drop_levels (--max 1) asked for that."""
    if not drop_levels and not result.safe:
        raise PruneError(f"{{percent}} {result.percent:g} is above the highest safe ratio {result.highest_safe:.4f}: "
                         f"layer {result.emptied[0]} would keep no channel above the threshold. Lower {{percent}} to "
                         f"at most {result.highest_safe:.4f}, or pass {{drop_levels}} to drop the head levels after it")


def default_tag(path: Path, result: PrunePlan, regular: bool, drop_levels: bool, prune: CfgNode) -> str:
    """<checkpoint stem>_<mode>_p<percent>[_regular[<N>]][_max][_layer]: PRUNE.ROUND_TO (when not 8) and GAMMA_SCALE
    layer are named too, as they shape the plan, so two different prunes never share a file."""
    rounded = "" if prune.ROUND_TO == DEFAULT_ROUND_TO else str(prune.ROUND_TO)
    return (f"{path.stem}_{result.mode}_p{result.percent:g}" + (f"_regular{rounded}" if regular else "")
            + ("_max" if drop_levels else "") + ("_layer" if prune.GAMMA_SCALE == "layer" else ""))


def choose_plan(model: SSD, cfg: CfgNode, percent: float | None, macs: float | None, mode: str, regular: bool,
                drop_levels: bool) -> PrunePlan:
    """The plan at `percent`, or (macs given) at the smallest percent whose compact model keeps at most that share
    of the MACs (surgery.make_budget_plan; with drop_levels past the safe ratio too)."""
    if (percent is None) == (macs is None):
        raise PruneError("give exactly one of percent (the share of channels to remove) and macs (the share of "
                         "the MACs to keep)")
    if macs is not None:
        return make_budget_plan(model, macs, mode, regular, cfg.PRUNE.ROUND_TO, cfg.PRUNE.GAMMA_SCALE, drop_levels)
    assert percent is not None
    return make_plan(model, percent, mode, regular, drop_levels, cfg.PRUNE.ROUND_TO, cfg.PRUNE.GAMMA_SCALE)


def prune_checkpoint(path: str | Path, cfg: CfgNode, percent: float | None, mode: str = "normal",
                     regular: bool = False, drop_levels: bool = False, quick: bool = False,
                     out_dir: str | Path | None = None, tag: str | None = None, dataset=None,
                     macs: float | None = None) -> PruneReport:
    """Prune one checkpoint at `percent` or to a MACs budget `macs` and write <tag>.pt, <tag>.cfg and <tag>.txt
    (see the module doc)."""
    path = Path(path)
    check_output_folder(Path(out_dir) if out_dir else path.parent,
                        "--out" if out_dir else "the checkpoint's folder (or give --out)", PruneError)
    if tag is not None:
        check_file_stem(tag, "--tag", PruneError)
    state = ckpt.read_checkpoint(path)
    model = ckpt.model_from_checkpoint(state, str(path)).eval()
    if dataset is not None:
        check_classes(model, dataset, f"checkpoint {path}")
    warnings = [NOT_SPARSE.format(path=path)] if state["config"]["PRUNE"]["TYPE"] == "no" else []
    for warning in warnings:
        log.warning(warning)
    result = choose_plan(model, cfg, percent, macs, mode, regular, drop_levels)
    check_request(result, drop_levels)
    note = f"{mode}{' regular' if regular else ''}{' max' if drop_levels else ''} from {path.name}"
    compensated = masked_model(model, result, "compensated")
    compact = compact_model(compensated, result, note)
    rows = [measure("original", model, dataset, cfg, latency=False)]
    variants = (("masked preview (γ=0)", "preview"), ("zeroed, no compensation", "zeroed"))
    for name, how in variants:
        rows.append(measure(name, masked_model(model, result, how), None if quick else dataset, cfg,
                            params=result.params_after, latency=False))
    rows.append(measure("compensated (masked)", compensated, None if quick else dataset, cfg,
                        params=result.params_after, latency=False))
    rows.append(measure("compact", compact, dataset, cfg, latency=False))
    size = cfg.INPUT.IMAGE_SIZE
    timing = compare_latency({"original": torch_call(model, size), "compact": torch_call(compact, size)})
    rows[0]["latency_ms"], rows[-1]["latency_ms"] = timing["original"]["median_ms"], timing["compact"]["median_ms"]
    budget = [budget_line(result, macs)] if macs is not None else []
    text = "\n".join([f"ssdlab prune: {path}", *budget, format_table(rows),
                      *summary_lines(result, rows, timing, cfg.PRUNE.GAMMA_SCALE),
                      *(f"warning: {w}" for w in warnings)]) + "\n"
    out_dir = Path(out_dir) if out_dir else path.parent
    tag = tag or default_tag(path, result, regular, drop_levels, cfg.PRUNE)
    metrics = {k: rows[-1][k] for k in ("voc_map", "coco_ap") if rows[-1][k] is not None}
    record = {"source": str(path), "mode": mode, "percent": float(result.percent), "macs_budget": macs,
              "regular": bool(regular),
              "max": bool(drop_levels), "threshold": result.threshold, "highest_safe": result.highest_safe,
              "params_before": rows[0]["params"], "params_after": rows[-1]["params"]}
    checkpoint = ckpt.make_checkpoint(compact, metrics=metrics, prune=record)
    files = write_outputs(out_dir, tag, checkpoint, compact.cfg_text, text)
    return PruneReport(result, rows, text, files, warnings, compact)


def write_outputs(out_dir: Path, tag: str, checkpoint: dict, cfg_text: str, report: str) -> dict[str, Path]:
    """Write the three files through temporary names, then rename them all (nothing half-written)."""
    targets = {"checkpoint": out_dir / f"{tag}.pt", "cfg": out_dir / f"{tag}.cfg", "report": out_dir / f"{tag}.txt"}
    with staged(*targets.values()) as (weights, cfg, text):
        torch.save(ckpt.sealed(checkpoint), weights)
        cfg.write_text(cfg_text, encoding="utf-8")
        text.write_text(report, encoding="utf-8")
    return targets
