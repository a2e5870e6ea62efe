"""`make bench` in the smoke profile: every row family runs, RESULTS.md has each section, the plots exist.

Only the script's working is checked (tiny settings, no timing assertions); the numbers must be
finite and consistent with each other, e.g. the compression against the dense reference's params.
"""
import hashlib
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "RESULTS.md"
ROW_FAMILIES = {"baseline", "from scratch", "sparse", "pruned", "pruned + fine-tuned", "QAT", "prune → quantize",
                "quantize → prune"}
SECTIONS = ("bench", "course-training", "pruning", "mobilenet-pruning", "quantization", "side-by-side", "integer",
            "int8-graph", "data-pipeline", "baselines")


def section(text: str, name: str) -> str:
    """The text between a section's markers."""
    return text.split(f"<!-- {name}:start -->")[1].split(f"<!-- {name}:end -->")[0]


def table_rows(text: str) -> list[list[str]]:
    """The cells of the summary table's body rows."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| family |")]


def records(path: Path) -> list[dict]:
    """The JSON lines of a records file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def percent(cell: str) -> float:
    """'52.0%' -> 0.52."""
    return float(cell.rstrip("%")) / 100


@pytest.fixture(scope="module")
def smoke_bench(tmp_path_factory) -> Path:
    """Run the smoke bench once into a temporary folder; benchmarks/RESULTS.md must stay as it is."""
    out = tmp_path_factory.mktemp("bench")
    committed = hashlib.sha256((BENCHMARKS / "RESULTS.md").read_bytes()).hexdigest()
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench.py"), "--profile", "smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert hashlib.sha256((BENCHMARKS / "RESULTS.md").read_bytes()).hexdigest() == committed
    return out


@pytest.mark.slow
def test_smoke_bench_writes_every_section_and_row_family(smoke_bench):
    text = (smoke_bench / "RESULTS.md").read_text()
    for name in SECTIONS:
        assert f"<!-- {name}:start -->" in text and f"<!-- {name}:end -->" in text, name
    summary = section(text, "bench")
    assert "Profile `smoke`" in summary and "cores, torch" in summary and "threads" in summary
    rows = table_rows(summary)
    assert {r[0] for r in rows} == ROW_FAMILIES
    assert {r[1] for r in rows if r[0] == "baseline"} == {"plain", "residual", "mobilenet"}
    mobilenet = {r[2].split()[0] for r in rows if r[0] == "pruned" and r[1] == "mobilenet"}
    assert mobilenet == {"normal", "shortcut", "coupled"}
    assert {r[2].split()[0] for r in rows if r[0] == "pruned" and r[1] != "mobilenet"} == {"normal", "shortcut"}
    assert any("regular" in r[2] for r in rows) and len({r[2] for r in rows if r[0] == "pruned"}) >= 4
    assert {(r[1], r[2].split()[0]) for r in rows if r[0] == "QAT"} == {
        (model, name) for model in ("plain", "residual")
        for name in ("iao-w8a8", "dorefa-w8a8", "iao-w4a4", "dorefa-w4a4", "bwn-binary", "bwn-ternary")}
    assert {(r[0], r[1]) for r in rows if "→" in r[0]} == {
        (family, model) for family in ("prune → quantize", "quantize → prune") for model in ("plain", "residual")}
    assert {r[2].split()[-1] for r in rows if r[0] == "pruned + fine-tuned"} == {"plain", "distilled"}
    assert all(r[-2].startswith("`python benchmarks/bench.py --profile smoke") for r in rows)
    assert {r[-1] for r in rows} == {"A"} and "A: " in summary and "CPU flags: " in summary  # one run measured all
    course = [[c.strip() for c in line.strip("|").split("|")] for line in section(text, "course-training").splitlines()
              if line.startswith("| plain") or line.startswith("| residual")]
    assert len(course) == 2 and all(re.fullmatch(r"auto \((bfloat16|float32)\)", row[2]) for row in course)


@pytest.mark.slow
def test_smoke_bench_numbers_are_finite_and_compression_consistent(smoke_bench):
    rows = table_rows(section((smoke_bench / "RESULTS.md").read_text(), "bench"))
    base = {r[1]: r for r in rows if r[0] == "baseline"}
    for r in rows:
        params, size, macs, ms = int(r[3].replace(",", "")), float(r[4]), float(r[5]), float(r[6])
        assert params > 0 and size > 0 and macs > 0 and 0 < ms < math.inf, r
        assert all(0.0 <= float(v) <= 1.0 for v in (r[7], r[8])), r
        reference = base[r[1].split()[0]]
        assert percent(r[9]) == pytest.approx(1 - params / int(reference[3].replace(",", "")), abs=6e-4), r
        assert percent(r[10]) == pytest.approx(1 - size / float(reference[4]), abs=2e-3), r
        if r[0].startswith("pruned") or "→" in r[0]:
            assert params < int(reference[3].replace(",", ""))
        if r[0] == "QAT" or "quantize" in r[0]:
            assert percent(r[10]) > percent(r[9])  # quantized weights take fewer bits than float ones
    stored = records(smoke_bench / "bench.jsonl")
    assert len(stored) == len(rows) and "Rows left out" not in section((smoke_bench / "RESULTS.md").read_text(), "bench")
    for r in stored:  # measured in this run: its commit, machine, CPU flags and checkpoint digests
        assert r["commit"] and r["cpu_flags"] and len(r["weights_digest"]) == len(r["config_digest"]) == 16, r
    assert {t["family"] for t in records(smoke_bench / "bench_times.jsonl")} >= {"course", "pruning", "int8_graph"}
    pruned = [r for r in records(smoke_bench / "pruning.jsonl") if r["row"] == "pruned"]
    assert pruned and all(p["commit"] and p["cpu_flags"] and p["weights_digest"] for p in pruned)
    for p in pruned:  # --max 1 exactly when the percent is above the highest safe one
        assert p["max"] == (p["percent"] > p["highest_safe"])


@pytest.mark.slow
def test_smoke_bench_side_by_side_and_plots(smoke_bench):
    stored = records(smoke_bench / "side_by_side.jsonl")
    result = {part: [r for r in stored if r["part"] == part] for part in ("training", "onnx", "full_size")}
    assert all(r["commit"] and r["cpu_flags"] for r in stored)
    assert all(len(r["weights_digest"]) == 16 for r in result["onnx"])
    assert [r["torchvision"] for r in result["training"]] == ["ssdlite320_mobilenet_v3_large", "ssd300_vgg16"]
    for r in result["training"]:
        assert r["ratio"] == pytest.approx(r["mine"]["images_per_s"] / r["theirs"]["images_per_s"])
        for side in (r["mine"], r["theirs"]):
            assert side["images_per_s"] > 0 and 0 <= side["overhead_share"] < 1
    assert [r["model"] for r in result["onnx"]] == ["fp32", "int8"]
    assert all(min(r["ort_ms"].values()) > 0 and 0 <= r["voc_map"] <= 1 for r in result["onnx"])
    [full_size] = result["full_size"]
    assert full_size["config"] == "course/plain_quant.yaml" and full_size["file_mib"]["int8"] < full_size["file_mib"]["fp32"]
    assert all(ms > 0 for side in full_size["ort_ms"].values() for ms in side.values())
    quantized = section((smoke_bench / "RESULTS.md").read_text(), "quantization")
    assert "### plain" in quantized and "### residual" in quantized
    text = section((smoke_bench / "RESULTS.md").read_text(), "side-by-side")
    assert "fp32 vs int8" in text and "`course/plain_quant.yaml` | 128 |" in text
    for name in ("pareto.png", "latency_params.png"):
        assert (smoke_bench / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_front_keeps_the_rows_nothing_beats(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from plots import pareto_front

    rows = [{"size_mib": s, "voc_map": m, "name": n} for s, m, n in
            [(1.0, 0.5, "a"), (2.0, 0.4, "b"), (2.0, 0.7, "c"), (3.0, 0.6, "d"), (4.0, 0.8, "e"), (0.5, 0.1, "f")]]
    assert [r["name"] for r in pareto_front(rows)] == ["f", "a", "c", "e"]


def test_write_section_replaces_or_puts_a_new_section_first(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from results_md import write_section

    path = tmp_path / "RESULTS.md"
    path.write_text("# title\n\nintro\n\n## old\n\nkept\n")
    write_section("<!-- s:start -->\nnew\n<!-- s:end -->", path, "<!-- s:start -->", "<!-- s:end -->", ("\n## ",))
    assert path.read_text() == "# title\n\nintro\n\n<!-- s:start -->\nnew\n<!-- s:end -->\n\n## old\n\nkept\n"
    write_section("<!-- s:start -->\nagain\n<!-- s:end -->", path, "<!-- s:start -->", "<!-- s:end -->")
    assert "again" in path.read_text() and "new" not in path.read_text() and "kept" in path.read_text()


def test_data_pipeline_bench_measures_both_loaders(shapes_dir, tmp_path):
    out, stored = tmp_path / "RESULTS.md", tmp_path / "data_pipeline.jsonl"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "data_pipeline.py"), "--data", str(shapes_dir),
                           "--samples", "6", "--rounds", "1", "--steps", "2", "--out", str(out), "--records",
                           str(stored)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    text = section(out.read_text(), "data-pipeline")
    assert len(records(stored)) == 6 and all(r["commit"] and r["cpu_flags"] for r in records(stored))
    again = subprocess.run([sys.executable, str(BENCHMARKS / "data_pipeline.py"), "--only", "summary", "--records",
                            str(stored), "--out", str(tmp_path / "again.md")], capture_output=True, text=True)
    assert again.returncode == 0 and section((tmp_path / "again.md").read_text(), "data-pipeline") == text
    rows = re.findall(r"^\| (.+) \| ([0-9.]+) \|$", text, flags=re.M)  # (name, number) of each table row
    timings = {name.split()[0] if "seed" not in name else "seed order": float(ms) for name, ms in rows
               if "NUM_WORKERS" not in name}
    assert set(timings) == {"sample", "augmentation", "seed order", "targets"} and min(timings.values()) > 0
    assert timings["sample"] >= 0.5 * (timings["augmentation"] + timings["targets"])  # a sample does both parts
    rates = [float(value) for name, value in rows if "NUM_WORKERS" in name]
    assert len(rates) == 2 and all(math.isfinite(r) and r > 0 for r in rates)


def test_the_committed_benchmark_files_hold_repo_relative_paths():
    """Every committed record and family file is the same in every clone: no path of the machine that wrote it."""
    def strings(value) -> list[str]:
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []
    stored = [json.loads(path.read_text()) for path in BENCHMARKS.glob("*.json")]
    stored += [records(path) for path in BENCHMARKS.glob("*.jsonl")]
    paths = [s for s in strings(stored) if s.endswith((".pt", ".onnx", ".cfg"))]
    assert paths and not [s for s in paths if Path(s).is_absolute()]


def test_the_summary_regenerates_from_the_committed_records_in_a_clean_clone(tmp_path):
    """`bench.py --only summary` where no benchmark checkpoint exists: every row whose checkpoint is missing comes
    back from its record unchanged, the committed baselines are measured again (with this run's commit)."""
    for name in ("bench.jsonl", "bench_times.jsonl", "pruning.jsonl", "mobilenet_pruning.jsonl", "quantization.jsonl",
                 "course_training.jsonl", "RESULTS.md"):
        shutil.copy(BENCHMARKS / name, tmp_path / name)
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench.py"), "--only", "summary", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    before, after = records(BENCHMARKS / "bench.jsonl"), records(tmp_path / "bench.jsonl")
    assert [r["checkpoint"] for r in after] == [r["checkpoint"] for r in before]
    for old, new in zip(before, after):
        if (ROOT / old["checkpoint"]).is_file():
            assert new["commit"] and new["weights_digest"] and new["metrics"] == pytest.approx(old["metrics"])
        else:
            assert new == old
    last_row = [table_rows(section(path.read_text(), "bench"))[-1] for path in (tmp_path / "RESULTS.md", RESULTS)]
    if not (ROOT / before[-1]["checkpoint"]).is_file():  # as in a clean clone: the row comes back as recorded
        assert last_row[0][:-1] == last_row[1][:-1]  # (the run label follows the order)


def test_a_broken_record_line_names_the_file_and_line(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    from records import read_records
    path = tmp_path / "bench.jsonl"
    path.write_text('{"family": "baseline"}\n{"family": \n')
    with pytest.raises(ValueError, match=r"bench.jsonl, line 2: not a JSON record"):
        read_records(path)


@pytest.mark.slow
def test_int8_graph_records_every_row_and_regenerates_its_section(smoke_bench, tmp_path):
    """The smoke bench's int8-graph family: one record per row, the section generated from the records alone."""
    stored, results = smoke_bench / "int8_graph.jsonl", tmp_path / "RESULTS.md"
    every = records(stored)
    rows = [r for r in every if "OpenVINO" not in r["row"]]  # the ONNX Runtime rows; OpenVINO's below
    names = [r["row"] for r in rows]
    assert names[:9] == ["fp32", "ssdlab PTQ, heads float", "ssdlab PTQ, heads int8", "ssdlab PTQ, every conv int8",
                         "onnxruntime quantize_static", "pruned p0.3, fp32", "pruned p0.3 + 4 it, fp32",
                         "pruned p0.3 + 4 it + ssdlab PTQ, heads int8",
                         "pruned p0.3 + 4 it + ssdlab PTQ, every conv int8"]
    assert [n.split(" p0.3, ")[1] for n in names[9:]] == ["|γ| across layers", "defaults (L2, per layer)"]
    by_row = {r["row"]: r for r in every}
    peers = [r["row"] for r in every if "OpenVINO" in r["row"]]
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        import nncf
        import openvino
        version = openvino.get_version().split("-")[0]
        assert peers[0] == f"OpenVINO {version} fp32" and peers[2:] == [
            f"NNCF {nncf.__version__} int8 in OpenVINO", "pruned p0.3 + 4 it + NNCF int8 in OpenVINO"]
        assert re.fullmatch(rf"OpenVINO {version}, its default precision here \((f32|bf16|f16)\)", peers[1])
        assert by_row[peers[0]]["cost"]["qlinearconv"] == 0 and by_row[peers[0]]["cost"]["float_conv"] == 21
        assert by_row[peers[2]]["cost"]["qlinearconv"] == 21 and by_row[peers[2]]["weights_digest"] is None
        assert by_row[peers[3]]["cost"]["params"] == by_row["pruned p0.3 + 4 it, fp32"]["cost"]["params"]
    assert by_row["fp32"]["cost"]["qlinearconv"] == 0 and by_row["ssdlab PTQ, every conv int8"]["cost"] == {
        **by_row["ssdlab PTQ, every conv int8"]["cost"], "qlinearconv": 21, "float_conv": 0}
    assert by_row["pruned p0.3, fp32"]["cost"]["params"] < by_row["fp32"]["cost"]["params"]
    assert by_row["pruned p0.3 + 4 it + ssdlab PTQ, heads int8"]["cost"]["qlinearconv"] == 20
    assert by_row["pruned p0.3 + 4 it, fp32"]["cost"]["params"] == by_row["pruned p0.3, fp32"]["cost"]["params"]
    assert by_row["pruned p0.3 + 4 it, fp32"]["weights_digest"] != by_row["pruned p0.3, fp32"]["weights_digest"]
    assert all(r["cost"]["macs"] < rows[0]["cost"]["macs"] for r in rows[5:])
    for r in rows:
        assert r["cpu_flags"] == rows[0]["cpu_flags"] and r["commit"] and set(r["cost"]["latency"]) >= {"1"}
        assert (r["weights_digest"] is None) == (r["row"] == "onnxruntime quantize_static"
                                                 or r["row"].startswith("Torch-Pruning"))
    first = section((smoke_bench / "RESULTS.md").read_text(), "int8-graph")
    assert "CPU flags" in first and "Torch-Pruning" in first
    again = subprocess.run([sys.executable, str(BENCHMARKS / "int8_graph.py"), "--only", "summary", "--records",
                            str(stored), "--results", str(results)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and section(results.read_text(), "int8-graph") == first  # from the records alone


def test_int8_graph_goals_take_the_fastest_row_within_each_map_loss():
    """Hand-made rows: each goal takes its fastest row within its mAP loss and compares that ratio to its bound."""
    sys.path.insert(0, str(BENCHMARKS))
    from int8_graph import goal_lines

    def row(name, ms1, ms2, voc_map):
        return {"row": name, "metrics": {"voc_map": voc_map},
                "cost": {"latency": {"1": {"median_ms": ms1}, "2": {"median_ms": ms2}}}}
    rows = [row("fp32", 10.0, 8.0, 0.90), row("ssdlab PTQ, heads float", 7.0, 6.0, 0.90),
            row("ssdlab PTQ, heads int8", 5.0, 6.4, 0.899), row("ssdlab QAT, heads int8", 4.0, 3.0, 0.89),
            row("pruned p0.3 + 500 it, fp32", 7.0, 6.0, 0.895), row("pruned p0.5 + 500 it, fp32", 5.0, 4.0, 0.85),
            row("pruned p0.3 + 500 it + ssdlab PTQ, heads int8", 3.4, 3.0, 0.888),
            row("pruned p0.5 + 500 it + ssdlab PTQ, heads int8", 2.0, 2.0, 0.80)]
    lines = goal_lines(rows, rows[0])
    assert lines[0] == ("- dense ssdlab int8 ≤ 0.55 at ≤ 0.3 pt: met, fastest within 0.3 pt: ssdlab PTQ, heads int8, "
                        "0.500 at -0.10 pt")  # QAT's 0.40 loses 1 pt
    assert lines[1].startswith("- pruned fp32 (≤ 500 fine-tune iterations) ≤ 0.6 at ≤ 1 pt: not met") and \
        lines[1].endswith("pruned p0.3 + 500 it, fp32, 0.700 at -0.50 pt")
    assert lines[2].endswith(": met, fastest within 1.5 pt: pruned p0.3 + 500 it + ssdlab PTQ, heads int8, 0.340 at "
                             "-1.20 pt")
    assert lines[3] == ("- FINAL True no slower than FINAL False (ssdlab PTQ): not met, heads int8 / heads float "
                        "0.71 at 1 thread, 1.07 at 2 threads") and len(lines) == 4  # QAT has no heads float row
    assert goal_lines([rows[0], rows[7]], rows[0])[2].endswith("not met, no such row within 1.5 pt")


def test_results_md_holds_only_generated_sections():
    """Outside its header, RESULTS.md is the scripts' sections, each naming the command that generates it; the
    dated exploration lives in NOTES.md."""
    text = (BENCHMARKS / "RESULTS.md").read_text()
    blocks = list(re.finditer(r"<!-- ([\w-]+):start -->(.*?)<!-- \1:end -->", text, re.S))
    outside = re.sub(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", "", text, flags=re.S)
    header = outside.split("\n\n", 2)
    assert len(blocks) >= 10 and not re.sub(r"\s", "", "".join(header[2:]))
    assert not re.search(r"\d\.\d", "".join(header[:2]))  # no figure typed into the header
    for block in blocks:
        assert re.search(r"python benchmarks/\w+\.py|make bench", block.group(2)), block.group(1)
    assert "2026-11-30" in (BENCHMARKS / "NOTES.md").read_text()


@pytest.mark.parametrize("script, arguments", [
    ("course_training.py", ["--out"]), ("pruning.py", ["--out"]), ("mobilenet_pruning.py", ["--out"]),
    ("quantization.py", ["--out"]), ("side_by_side.py", ["--out"]), ("data_pipeline.py", ["--out"]),
    ("integer.py", ["--records", str(BENCHMARKS / "integer.jsonl"), "--out"]), ("int8_graph.py", ["--results"])])
def test_a_committed_section_is_what_its_records_generate(script, arguments, tmp_path):
    """Each records-backed section of RESULTS.md, regenerated from the committed records alone, is unchanged."""
    shutil.copy(RESULTS, tmp_path / "RESULTS.md")
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--only", "summary", *arguments,
                           str(tmp_path / "RESULTS.md")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "RESULTS.md").read_text() == RESULTS.read_text()


def test_the_pruning_records_round_trip_through_the_sparse_runs():
    """pruning.jsonl read as sparse runs (each with its pruned and fine-tuned models) and written back is unchanged."""
    sys.path.insert(0, str(BENCHMARKS))
    from pruning import from_records, to_records
    stored = records(BENCHMARKS / "pruning.jsonl")
    runs = from_records(stored)
    assert to_records(runs) == stored and all(run["prune"] and run["tuned"] for run in runs.values())
    assert {r["row"] for r in stored} == {"sparse", "pruned", "tuned"}


def test_the_full_benchmark_runs_are_the_course_stages_of_the_same_requests(monkeypatch):
    """The full profile adds nothing to the course recipes, so its from-scratch, sparse and QAT runs are the folders the
    tour and the notebooks use (digests compared without training)."""
    sys.path.insert(0, str(BENCHMARKS))
    import course_training
    import pruning
    import quantization
    from profiles import FULL

    from ssdlab.course import QAT_ITERS, baseline, course_config, quant_config, sparse_config
    monkeypatch.chdir(ROOT)
    assert FULL.overrides() == [] and FULL.qat_iters == QAT_ITERS["full"]
    start = baseline("plain")
    pairs = [(course_training.recipe("plain"), course_config("plain", "full")),
             (pruning.sparse_recipe("plain", start, None), sparse_config("plain", "full")),
             (quantization.row_recipe("plain", "iao-w8a8", start, FULL.qat_iters), quant_config("IAO", 8, 8, 500, "full"))]
    for bench, course in pairs:
        assert bench.OUTPUT_DIR == course.OUTPUT_DIR and bench.OUTPUT_DIR.startswith("runs/")
    weighted = pruning.sparse_recipe("plain", start, 0.01, "macs")  # another request: another folder
    assert weighted.OUTPUT_DIR.startswith("runs/plain_sparse_sr0.01_macs-")
    assert weighted.OUTPUT_DIR.rsplit("-", 1)[1] != pairs[1][0].OUTPUT_DIR.rsplit("-", 1)[1]


def test_the_int8_rows_train_their_iao_checkpoint_when_the_checkout_lacks_it(monkeypatch, tmp_path):
    """A fresh clone has the quantization records but not runs/: the side-by-side and integer families then train the
    plain IAO W8A8 course stage instead of failing on the missing file (train_recipe recorded, not run)."""
    sys.path.insert(0, str(BENCHMARKS))
    import bench
    import quantization

    from ssdlab.course import baseline
    monkeypatch.chdir(ROOT)
    stored = records(BENCHMARKS / "quantization.jsonl")
    (tmp_path / "quantization.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stored))
    b = bench.Bench("full", tmp_path)
    recorded = b.quantized()["plain"]["iao-w8a8"]["checkpoint"]
    trained = []

    def fake_train(cfg):
        trained.append(cfg.OUTPUT_DIR)
        return type("Result", (), {"checkpoint": Path(cfg.OUTPUT_DIR) / "model_final.pt"})()
    monkeypatch.setattr(bench, "train_recipe", fake_train)
    monkeypatch.setattr(bench, "ROOT", tmp_path)  # where the recorded runs/ paths do not exist
    expected = quantization.row_recipe("plain", "iao-w8a8", baseline("plain"), b.profile.qat_iters, b.profile)
    assert bench.iao_checkpoint(b) == Path(expected.OUTPUT_DIR) / "model_final.pt"
    assert trained == [expected.OUTPUT_DIR] and recorded == f"{expected.OUTPUT_DIR}/model_final.pt"
    arguments = bench.script_arguments(b, "integer")
    assert arguments[:2] == ["--ckpt", str(Path(expected.OUTPUT_DIR) / "model_final.pt")]
    (tmp_path / recorded).parent.mkdir(parents=True)
    (tmp_path / recorded).write_bytes(b"")  # once the file is there it is used as recorded, untrained
    assert bench.iao_checkpoint(b) == tmp_path / recorded and len(trained) == 2
