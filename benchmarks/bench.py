"""`make bench`: every benchmark row family in one run, a summary table of all models, and the plots.

    python benchmarks/bench.py                          # full profile: benchmarks/RESULTS.md (hours)
    python benchmarks/bench.py --profile smoke          # tiny settings, build/bench-smoke/RESULTS.md (minutes)
    python benchmarks/bench.py --only summary           # the summary again: rows here re-measured, others from records

Families, each run by its script's functions on the profile's settings (benchmarks/profiles.py):
course (the course recipes from scratch, course_training.py), pruning (baseline, sparse, pruned at
several ratios, regular, max, fine-tuned with and without distillation, pruning.py), mobilenet
(depthwise-coupled vs shortcut vs normal on MobileNetV2-SSDLite, mobilenet_pruning.py), quantization
(QAT of each course model: DoReFa, IAO at W8A8 and W4A4, BWN binary and ternary, quantization.py),
combined (prune-then-quantize and quantize-then-prune of each course model), side_by_side
(training speed against torchvision, fp32 vs int8 in ONNX Runtime, side_by_side.py), then, each
by its own script into the same folder: integer (the integer-only reference of the IAO rows,
integer.py), int8_graph (int8 graphs in ONNX Runtime: ssdlab PTQ/QAT, onnxruntime, pruned,
Torch-Pruning, int8_graph.py), data_pipeline (the cost of a training sample, data_pipeline.py)
and baselines (the committed baselines, baselines.py). Every training run is a course stage
(ssdlab.course: runs/<stage>-<digest> of the course profile, the repository's runs/ for the full
profile), so a benchmark reuses what the tour or a notebook already trained for the same request
and never retrains or deletes another caller's run. Each family
keeps its results next to RESULTS.md (one JSON record per result in a .jsonl file: commit,
machine, CPU flags, digests) and rewrites its own section, generated from its records; the summary then
loads every stored checkpoint once more, in a fresh process, to measure params, size, MACs and CPU
latency the same way for all rows, and keeps one JSON-lines record per row in bench.jsonl (commit,
date, machine, CPU flags, weights and config digests, metrics, cost, repo-relative paths; the run
time of each family in bench_times.jsonl). A row whose checkpoint is not on this machine (a clean
clone has only the committed baselines) comes back from its record as it was measured. The
summary section and the plots pareto.png (VOC mAP vs size, Pareto front) and latency_params.png
(latency vs params) are generated from those records alone. The profile defaults to
SSDLAB_PROFILE (full otherwise).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from ssdlab.course import COURSE_MODELS, baseline, train_recipe
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.profile import compare_latency, measure, torch_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
import course_training  # noqa: E402
import mobilenet_pruning  # noqa: E402
import plots  # noqa: E402
import pruning  # noqa: E402
import quantization  # noqa: E402
import side_by_side  # noqa: E402
from profiles import BenchProfile, at_root, get_profile  # noqa: E402
from records import checkpoint_fields, context, measured_on, read_records, write_records  # noqa: E402
from results_md import ROOT, display, write_section  # noqa: E402

HERE = Path(__file__).resolve().parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
WARM_CALLS = 2  # untimed calls of a model just before each timed one in the summary (its weights back in cache)
SCRIPT_FAMILIES = ("integer", "int8_graph", "data_pipeline", "baselines")  # run as their own scripts
FAMILIES = ("course", "pruning", "mobilenet", "quantization", "combined", "side_by_side", *SCRIPT_FAMILIES)
ROW_FAMILIES = ("baseline", "from scratch", "sparse", "pruned", "pruned + fine-tuned", "QAT", "prune → quantize",
                "quantize → prune")
STORES = {"course": "course_training.jsonl", "pruning": "pruning.jsonl", "mobilenet": "mobilenet_pruning.jsonl",
          "quantization": "quantization.jsonl", "side_by_side": "side_by_side.jsonl", "summary": "bench.jsonl",
          "times": "bench_times.jsonl"}


class Bench:
    """Where one benchmark run reads and writes, and the settings it runs with."""

    def __init__(self, profile_name: str, out: Path):
        self.name = profile_name
        self.out = out
        self.profile: BenchProfile = get_profile(profile_name, None if profile_name == "full" else out / "shapes")
        self.results = out / "RESULTS.md"
        default_out = default_output(profile_name)
        self.command = f"python benchmarks/bench.py --profile {profile_name}" + (
            "" if out.resolve() == default_out.resolve() else f" --out {display(out)}")

    def store(self, family: str) -> Path:
        """The JSON file that keeps a family's rows."""
        return self.out / STORES[family]

    def pruned(self) -> dict[str, dict]:
        """The pruning family's records as {run key: sparse run with its 'prune' and 'tuned' lists}."""
        return pruning.from_records(read_records(self.store("pruning")))

    def quantized(self) -> dict[str, dict[str, dict]]:
        """The quantization family's records as {course model: {row name: record}}."""
        return quantization.by_model(read_records(self.store("quantization")))

    def family_command(self, family: str) -> str:
        """The command that reruns one family."""
        return f"{self.command} --only {family}"


def default_output(profile_name: str) -> Path:
    """benchmarks/ for the full profile, build/bench-smoke/ for smoke."""
    return HERE if profile_name == "full" else ROOT / "build" / "bench-smoke"


def absolute(path: str | Path) -> str:
    """A stored path as an absolute one (relative paths in the JSON files are relative to the repository)."""
    return str((ROOT / path).resolve())


def starts(bench: Bench) -> dict[str, Path]:
    """The dense start of each course model: the committed baseline, else the course family's checkpoint."""
    found = {}
    for model in COURSE_MODELS:
        trained = Path(course_training.recipe(model, bench.profile).OUTPUT_DIR) / "model_final.pt"
        found[model] = baseline(model) if baseline(model).is_file() else trained
        if not found[model].is_file():
            raise FileNotFoundError(f"no dense {model} model: neither {baseline(model)} nor {trained}; "
                                    "run the course family first (--only course)")
    return found


def run_family(bench: Bench, family: str) -> str:
    """Run one family through its script's functions; the RESULTS.md section it wrote."""
    p, command = bench.profile, bench.family_command(family)
    if family == "course":
        return course_training.run_all(list(COURSE_MODELS), bench.store(family), bench.results, command, p)
    if family == "pruning":
        return pruning.run_all(list(p.pruning_runs), starts(bench), bench.store(family), bench.results, command, p,
                               remeasure=True)
    if family == "mobilenet":
        return mobilenet_pruning.run_all(bench.store(family), bench.results, command, p)
    if family in ("quantization", "combined"):  # each model's run rewrites the whole section: keep the last
        return [run_quantized(bench, family, model, command) for model in COURSE_MODELS][-1]
    if family == "side_by_side":
        return side_by_side.run_all(bench.store(family), bench.results, iao_checkpoint(bench), command, p)
    if family in SCRIPT_FAMILIES:
        subprocess.run([sys.executable, str(HERE / f"{family}.py"), *script_arguments(bench, family)], check=True,
                       stdout=subprocess.DEVNULL)
        return ""
    raise ValueError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")


def script_arguments(bench: Bench, family: str) -> list[str]:
    """The command-line arguments of a family run by its own script: its records and RESULTS.md in bench.out
    (smoke: the tiny settings)."""
    smoke = bench.name == "smoke"
    if family == "integer":
        stored = bench.quantized()
        points = [str(ROOT / stored[m]["iao-w8a8"]["checkpoint"]) for m in COURSE_MODELS
                  if "iao-w8a8" in stored.get(m, {}) and (ROOT / stored[m]["iao-w8a8"]["checkpoint"]).exists()]
        return ["--ckpt", *(points or [str(iao_checkpoint(bench))]), "--out", str(bench.results), "--data",
                str(bench.profile.data)]
    if family == "int8_graph":
        return ["--profile", bench.name, "--records", str(bench.out / "int8_graph.jsonl"), "--results",
                str(bench.results), *(["--runs", "2", "--no-qat", "--percents", "0.3", "--tune", "4"] if smoke else [])]
    if family == "data_pipeline":
        return ["--data", str(bench.profile.data), "--out", str(bench.results), "--records",
                str(bench.out / "data_pipeline.jsonl"), *(["--samples", "8", "--rounds", "1", "--steps", "2"] if smoke else [])]
    return ["--out", str(bench.results)]


def run_quantized(bench: Bench, family: str, model: str, command: str) -> str:
    """One course model's QAT rows, or (combined) its prune-then-quantize and quantize-then-prune rows at its
    pruning run's fine-tune percent."""
    if family == "quantization":
        return quantization.run_all(model, quantization.QAT_ROWS, bench.store(family), bench.results, command,
                                    bench.profile)
    pruned, sparse, percent = combined_starts(bench, model)
    return quantization.run_all(model, quantization.COMBINED_ROWS, bench.store("quantization"), bench.results,
                                command, bench.profile, percent=percent,
                                starts={"pruned-iao-w8a8": pruned, "iao-w8a8-pruned": sparse})


def combined_starts(bench: Bench, model: str) -> tuple[Path, Path, float]:
    """A course model pruned at its fine-tune percent, its sparse model, and that percent (from pruning.jsonl)."""
    run = bench.pruned().get(model)
    if run is None:
        raise FileNotFoundError(f"{bench.store('pruning')} has no {model} run; run the pruning family first")
    percent = run["tune_percent"]
    pruned = next(r["checkpoint"] for r in run["prune"] if r["percent"] == percent and not r["regular"])
    return ROOT / pruned, ROOT / run["sparse_checkpoint"], percent


def iao_checkpoint(bench: Bench) -> Path:
    """The plain model's IAO W8A8 QAT checkpoint of the quantization family (for the int8 ONNX row), trained in its
    course stage when this checkout lacks it (a fresh clone has the records but not runs/)."""
    stored = bench.quantized().get("plain", {}).get("iao-w8a8")
    if stored and (ROOT / stored["checkpoint"]).exists():
        return ROOT / stored["checkpoint"]
    cfg = quantization.row_recipe("plain", "iao-w8a8", baseline("plain"), bench.profile.qat_iters, bench.profile)
    return train_recipe(cfg).checkpoint


def row(family: str, model: str, variant: str, checkpoint: str | Path, metrics: dict, command: str,
        base: str | Path) -> dict:
    """One summary row before measuring: what it is, its checkpoint, its metrics and its dense reference."""
    return {"family": family, "model": model, "variant": variant, "checkpoint": absolute(checkpoint),
            "voc_map": metrics.get("voc_map"), "coco_ap": metrics.get("coco_ap"), "command": command,
            "base": absolute(base)}


def prune_variant(p: dict) -> str:
    """'normal p0.5 regular max' for a prune row."""
    return f"{p['mode']} p{p['percent']:g}" + (" regular" if p["regular"] else "") + (" max" if p["max"] else "")


def pruning_rows(results: dict) -> list[dict]:
    """Baseline, sparse, pruned and fine-tuned rows of every stored sparse run."""
    rows = []
    for key, r in results.items():
        base, command, first = r["start"], r.get("command", ""), r["prune"][0]
        rows.append(row("baseline", key.split()[0], "dense start", base, r["baseline"], command, base))
        sparse = r.get("sparse") or {"voc_map": first["voc_before"], "coco_ap": first.get("coco_before")}
        sc = r["sparse_config"]
        weighted = f" {sc['SR_WEIGHT']}-weighted" if sc.get("SR_WEIGHT", "none") != "none" else ""
        rows.append(row("sparse", key, f"{sc['TYPE']} SR {sc['SR']:g}{weighted}, {sc['MAX_ITER']} it", r["sparse_checkpoint"],
                        sparse, command, base))
        rows += [row("pruned", key, prune_variant(p), p["checkpoint"], p, command, base) for p in r["prune"]]
        rows += [row("pruned + fine-tuned", key, f"{r['sparse_config']['TYPE']} p{r['tune_percent']:g} + "
                     f"{t['iterations']} it {'distilled' if t['distilled'] else 'plain'}", t["checkpoint"], t,
                     command, base) for t in r["tuned"] if "checkpoint" in t]
    return rows


def mobilenet_rows(records: list[dict]) -> list[dict]:
    """Dense, coupled-sparse and pruned MobileNetV2-SSDLite rows."""
    if not records:
        return []
    dense, sparse = (next(r for r in records if r["row"] == row) for row in ("dense", "sparse"))
    base, command = dense["checkpoint"], dense["command"]
    return [row("baseline", "mobilenet", f"{dense['iterations']} it", base, dense, command, base),
            row("sparse", "mobilenet", f"coupled SR 0.005, {sparse['iterations']} it", sparse["checkpoint"], sparse,
                command, base),
            *(row("pruned", "mobilenet", prune_variant(p), p["checkpoint"], p, command, base)
              for p in records if p["row"] == "pruned")]


def quantization_rows(results: dict) -> list[dict]:
    """QAT rows and the pruned + quantized rows of each course model, relative to its float baseline."""
    families = {"pruned-iao-w8a8": "prune → quantize", "iao-w8a8-pruned": "quantize → prune"}
    rows = []
    for model, stored in results.items():
        for name, r in stored.items():
            if name in quantization.ROWS:
                variant = f"{name} W{r['wbits']}A{r['abits']}" + (f" p{r['percent']:g}" if "percent" in r else "")
                rows.append(row(families.get(name, "QAT"), model, variant, r["checkpoint"], r, r["command"],
                                baseline(model)))
    return rows


def course_rows(records: list[dict]) -> list[dict]:
    """The course recipes trained from scratch (compared with their model's baseline)."""
    rows = []
    for r in records:
        model, checkpoint = r["model"], r["checkpoint"]
        base = baseline(model) if baseline(model).is_file() else checkpoint
        variant = f"{r['iterations']} it" + (f", {r['precision']}" if "precision" in r else "")
        rows.append(row("from scratch", model, variant, checkpoint, r, r["command"], base))
    return rows


def collect_rows(bench: Bench) -> list[dict]:
    """Every stored row once, in family order (a checkpoint already listed as a baseline is not repeated)."""
    rows = (pruning_rows(bench.pruned()) + mobilenet_rows(read_records(bench.store("mobilenet")))
            + quantization_rows(bench.quantized())
            + course_rows(read_records(bench.store("course"))))
    unique, seen = [], set()
    for r in sorted(rows, key=lambda r: ROW_FAMILIES.index(r["family"])):
        if r["checkpoint"] not in seen:
            unique.append(r)
            seen.add(r["checkpoint"])
    return unique


def cost(model, timing: dict) -> dict:
    """Params, bit-width-aware size and MACs of a loaded checkpoint, with its CPU latency (a compare_latency entry)."""
    row = measure("", model, None, model.cfg, latency=False)
    return {"params": row["params"], "size_mib": row["size_mib"], "macs": row["macs"], "ms": timing["median_ms"],
            "ms_p25": timing["p25_ms"], "ms_p75": timing["p75_ms"], "image_size": model.cfg.INPUT.IMAGE_SIZE,
            "threads": timing["threads"], "latency_runs": timing["runs"],
            "stored": {k: model.metrics.get(k) for k in ("voc_map", "coco_ap")}}


def costs_of(paths: list[str], runs: int) -> dict[str, dict]:
    """The cost of each checkpoint, their latencies timed interleaved (each round runs every model once, so a slower
    spell of the machine falls on all alike), each timed call after WARM_CALLS untimed ones (warm caches)."""
    models = {path: ckpt.load(path) for path in paths}
    timing = compare_latency({path: torch_call(m, m.cfg.INPUT.IMAGE_SIZE) for path, m in models.items()}, runs=runs,
                             warm_calls=WARM_CALLS)
    return {path: cost(model, timing[path]) for path, model in models.items()}


def summary_record(row: dict, own: dict, base: dict, shared: dict) -> dict:
    """One summary record: the row, its checkpoint's digests, its metrics, its cost and its compression."""
    stored = own.pop("stored")  # metrics saved in the checkpoint, for rows whose family JSON lacks them
    return {**shared, **{k: row[k] for k in ("family", "model", "variant", "command")},
            **checkpoint_fields(row["checkpoint"]), "base": display(row["base"]),
            "metrics": {k: stored[k] if row[k] is None else row[k] for k in ("voc_map", "coco_ap")},
            "cost": own, "compression": 1 - own["params"] / base["params"],
            "smaller": 1 - own["size_mib"] / base["size_mib"]}


def measure_rows(rows: list[dict], stored: list[dict], runs: int, profile: str) -> tuple[list[dict], list[str]]:
    """Summary records: a row whose checkpoint and reference are on this machine measured now, any other as its
    stored record has it; and the checkpoints that are neither here nor stored."""
    def here(r: dict) -> bool:
        return Path(r["checkpoint"]).is_file() and Path(r["base"]).is_file()
    kept = {r["checkpoint"]: r for r in stored}
    paths = list(dict.fromkeys(p for r in rows if here(r) for p in (r["checkpoint"], r["base"])))
    costs = costs_of(paths, runs)
    shared, records, missing = context("summary", profile), [], []
    for r in rows:
        if here(r):
            records.append(summary_record(r, dict(costs[r["checkpoint"]]), costs[r["base"]], shared))
        elif display(r["checkpoint"]) in kept:
            records.append(kept[display(r["checkpoint"])])
        else:
            missing.append(display(r["checkpoint"]))
    return records, missing


def flat(record: dict) -> dict:
    """A summary record with its metrics and cost as top-level keys (the table and the plots read those)."""
    return {**record, **record["metrics"], **record["cost"]}


def _metric(value: float | None) -> str:
    """A metric cell; '-' when not measured."""
    return "-" if value is None else f"{value:.4f}"


def summary_table(bench: Bench, records: list[dict], missing: list[str], times: list[dict]) -> str:
    """The summary section of RESULTS.md, generated from the summary and run-time records alone."""
    rows = [flat(r) for r in records]
    runs = dict.fromkeys(measured_on(r) for r in records)
    labels = {run: chr(ord("A") + i) for i, run in enumerate(runs)}
    refs = dict.fromkeys((r["model"].split()[0], r["base"]) for r in rows)
    threads = ", ".join(sorted({str(r["threads"]) for r in rows}))
    repeats = ", ".join(sorted({str(r["latency_runs"]) for r in rows}))
    lines = [START, "## Every model side by side (`make bench`)", "",
             f"Generated by `python benchmarks/bench.py --only summary` from `{display(bench.store('summary'))}`. "
             "Measured: " + "; ".join(f"{labels[run]}: {run}" for run in runs) + f". CPU latency: batch 1, torch "
             f"threads: {threads}, median of {repeats} runs of the network (no post-processing) in "
             f"PyTorch eager mode, the rows of one run timed interleaved in a fresh process at its end (each round "
             f"runs every model once, timing the call after {WARM_CALLS} untimed ones); QAT "
             "rows run fake quantization, so they are not faster than float (int8 in ONNX Runtime: see the int8-graph "
             "section).", "",
             f"Profile `{bench.name}` (shapes data: {bench.profile.n_train} train / {bench.profile.n_val} val images). "
             "VOC mAP@0.5 (area) and COCO AP on the val split. Size counts each quantized weight at its bit width. "
             "Compression = 1 − params / params of the row's dense reference; smaller = 1 − size / its size. "
             "Dense references: " + ", ".join(f"{m} `{p}`" for m, p in refs) + ".", "",
             "| family | model | variant | params | size (MiB) | MACs (M) | CPU ms | VOC mAP@0.5 | COCO AP | "
             "compression | smaller | command | run |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, record in zip(rows, records):
        lines.append(f"| {r['family']} | {r['model']} | {r['variant']} | {r['params']:,} | {r['size_mib']:.3f} | "
                     f"{r['macs'] / 1e6:.1f} | {r['ms']:.2f} | {_metric(r['voc_map'])} | {_metric(r['coco_ap'])} | "
                     f"{r['compression']:.1%} | {r['smaller']:.1%} | `{r['command']}` | {labels[measured_on(record)]} |")
    lines += ["", "![VOC mAP@0.5 against size, Pareto front](pareto.png)",
              "![CPU latency against parameters](latency_params.png)", ""]
    if times:
        lines.append("Run time per family: " + ", ".join(
            f"{t['family']} {t['seconds'] / 60:.1f} min ({t['date'] or 'date not recorded'})" for t in times) + ".")
    if missing:
        lines.append("Rows left out (checkpoint neither on this machine nor in the records): "
                     + ", ".join(f"`{m}`" for m in missing) + ".")
    lines.append(END)
    return "\n".join(lines)


def summarize(bench: Bench) -> str:
    """Measure the stored rows whose checkpoints are here, keep the others' records; write bench.jsonl, the summary
    section and the two plots; the section."""
    records, missing = measure_rows(collect_rows(bench), read_records(bench.store("summary")),
                                    bench.profile.latency_runs, bench.name)
    write_records(records, bench.store("summary"))
    title = f"ssdlab course models ({bench.name} profile)"
    rows = [flat(r) for r in records]
    plots.pareto_plot(rows, bench.out / "pareto.png", title)
    plots.latency_plot(rows, bench.out / "latency_params.png", title)
    section = summary_table(bench, records, missing, read_records(bench.store("times")))
    write_section(section, bench.results, START, END, before=("\n## ", "\n<!-- "))
    return section


def run(bench: Bench, families: list[str]) -> dict[str, float]:
    """Run the families in order, then the summary in a fresh process; seconds per family."""
    bench.out.mkdir(parents=True, exist_ok=True)
    if bench.profile.threads:
        torch.set_num_threads(bench.profile.threads)
    timings = {}
    for family in families:
        start = time.perf_counter()
        run_family(bench, family)
        timings[family] = time.perf_counter() - start
        print(f"bench: {family} done in {timings[family] / 60:.1f} min", flush=True)
    if families:  # latency measured after hours of training in one process is inconsistent (RESULTS.md)
        keep_timings(bench, timings)
        subprocess.run([sys.executable, __file__, "--profile", bench.name, "--out", str(bench.out), "--only", "summary"],
                       check=True)
        return timings
    start = time.perf_counter()
    summarize(bench)
    print(f"bench: summary done in {(time.perf_counter() - start) / 60:.1f} min; see {display(bench.results)}")
    return timings


def keep_timings(bench: Bench, timings: dict) -> None:
    """This run's seconds per family as run-time records, replacing those families' earlier records."""
    shared = context("run time", bench.name)
    kept = [t for t in read_records(bench.store("times")) if t["family"] not in timings]
    write_records(kept + [{**shared, "family": f, "seconds": s} for f, s in timings.items()], bench.store("times"))


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("full", "smoke"),
                        default="smoke" if os.environ.get("SSDLAB_PROFILE") == "smoke" else "full")
    parser.add_argument("--out", type=Path, help="folder of RESULTS.md, the JSON rows and the plots "
                                                 "(default: benchmarks/ for full, build/bench-smoke/ for smoke)")
    parser.add_argument("--only", nargs="+", choices=(*FAMILIES, "summary"), default=list(FAMILIES),
                        help="families to run (the summary always follows)")
    args = parser.parse_args(argv)
    out = (args.out or default_output(args.profile)).resolve()
    if args.profile == "smoke" and out == HERE.resolve():
        parser.error("the smoke profile never writes into benchmarks/; pick another --out")
    bench = Bench(args.profile, out)
    at_root(bench.profile)
    run(bench, [f for f in FAMILIES if f in args.only])


if __name__ == "__main__":
    main()
