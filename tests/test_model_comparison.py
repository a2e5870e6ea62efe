"""Comparing the course's models (notebooks 06, 07): the Pareto front, collecting and measuring checkpoints, ONNX latency."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ssdlab import course  # noqa: E402
from ssdlab.data.catalog import datasets  # noqa: E402
from ssdlab.engine import checkpoint as ckpt  # noqa: E402
from ssdlab.engine import profile  # noqa: E402
from ssdlab.engine.inference import evaluate_model  # noqa: E402
from ssdlab.model.build import build_model  # noqa: E402
from ssdlab.viz.plots import pareto_front, plot_pareto  # noqa: E402
from tests.conftest import TESTS  # noqa: E402


def test_pareto_front_by_hand():
    sizes = [1.0, 2.0, 3.0, 2.0, 4.0, np.nan, 5.0]
    scores = [0.5, 0.7, 0.6, 0.7, 0.9, 0.99, 0.9]
    # (3, .6) is beaten by (2, .7); the two (2, .7) tie and both stay; (5, .9) is beaten by (4, .9); NaN never counts
    assert pareto_front(sizes, scores).tolist() == [True, True, False, True, True, False, False]
    assert pareto_front([], []).tolist() == []


def test_plot_pareto_colours_names_and_joins_the_front():
    fig, ax = plt.subplots()
    front = plot_pareto(ax, ["a", "b", "c"], [3.0, 1.0, 2.0], [0.9, 0.5, 0.4], groups=["float", "int8", "int8"])
    assert front.tolist() == [True, True, False]
    assert len(ax.collections) == 2  # one scatter per group
    assert [t.get_text() for t in ax.texts] == ["a", "b", "c"]
    (line,) = ax.lines
    assert line.get_xdata().tolist() == [1.0, 3.0] and line.get_ydata().tolist() == [0.5, 0.9]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["float", "int8", "Pareto front"]
    plt.close(fig)
    fig, ax = plt.subplots()
    plot_pareto(ax, ["a long run name", "b", "c"], [3.0, 1.0, 2.0], [0.9, 0.5, 0.4], numbered=True)
    assert [t.get_text() for t in ax.texts] == ["1", "2", "3"]  # short labels that cannot overlap as names do
    plt.close(fig)


def test_course_checkpoints_lists_the_baseline_finished_runs_and_pruned_models(tmp_path, monkeypatch):
    monkeypatch.setitem(course.PROFILES, "here", {"root": str(tmp_path)})
    for name in ("plain_sparse-0000aaaa/model_final.pt", "plain_sparse-0000aaaa/model_final_normal_p0.5.pt",
                 "plain_sparse-0000aaaa/model_000500.pt", "plain_quant_iao_w8a8-1111bbbb/model_final.pt",
                 "plain_quant_iao_w8a8-2222cccc/model_final.pt", "plain_unfinished-3333dddd/model_000100.pt",
                 "residual-4444eeee/model_final.pt", "plain_12it-5555ffff/model_final.pt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "plain_notes.txt").write_text("not a run")
    found = course.course_checkpoints("here")
    assert found == {"baseline": course.baseline("plain"), "plain_12it": tmp_path / "plain_12it-5555ffff/model_final.pt",
                     # two runs of one stage keep their digests apart
                     "plain_quant_iao_w8a8-1111bbbb": tmp_path / "plain_quant_iao_w8a8-1111bbbb/model_final.pt",
                     "plain_quant_iao_w8a8-2222cccc": tmp_path / "plain_quant_iao_w8a8-2222cccc/model_final.pt",
                     "plain_sparse": tmp_path / "plain_sparse-0000aaaa/model_final.pt",
                     "plain_sparse/normal_p0.5": tmp_path / "plain_sparse-0000aaaa/model_final_normal_p0.5.pt"}
    assert list(course.course_checkpoints("here", "residual")) == ["baseline", "residual"]


def test_measure_checkpoints_reuses_a_stored_map_only_from_the_same_test_set(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    same = ckpt.save_checkpoint(ckpt.make_checkpoint(model, metrics={"voc_map": 0.123, "coco_ap": 0.045}),
                                tmp_path / "same.pt")
    elsewhere = build_model(tiny_cfg("DATASETS.TEST", "['elsewhere:val']")).eval()
    elsewhere.load_state_dict(model.state_dict())
    other = ckpt.save_checkpoint(ckpt.make_checkpoint(elsewhere, metrics={"voc_map": 0.9}), tmp_path / "other.pt")
    quantized = build_model(tiny_cfg("MODEL.BACKBONE.CFG", str(TESTS / "data" / "tiny_quan.cfg"),
                                     "QUANTIZATION.TYPE", "IAO")).eval()
    iao = ckpt.save_checkpoint(ckpt.make_checkpoint(quantized), tmp_path / "iao.pt")
    val = datasets(cfg, is_train=False)
    rows = course.measure_checkpoints({"same": same, "other": other, "iao": iao}, val, cfg, latency=False)

    assert [r["model"] for r in rows] == ["same", "other", "iao"]
    assert (rows[0]["voc_map"], rows[0]["coco_ap"], rows[0]["map_from"]) == (0.123, 0.045, "checkpoint")
    expected = evaluate_model(ckpt.load(other), val, cfg)
    assert rows[1]["map_from"] == "evaluated" and rows[1]["voc_map"] == pytest.approx(expected["voc_map"])
    assert rows[2]["map_from"] == "evaluated"  # no stored metrics
    params = sum(p.numel() for p in model.parameters())
    assert rows[0]["params"] == params and rows[0]["size_mib"] == pytest.approx(params * 4 / 2 ** 20)
    assert rows[0]["latency_ms"] is None and rows[0]["checkpoint"] == str(same)
    assert [r["quantization"] for r in rows] == ["float", "float", "IAO W8A8"]
    assert rows[2]["size_mib"] < rows[0]["size_mib"]  # 8-bit weights


class _Session:
    """An onnxruntime-like session on a fake clock: each run takes the next duration (ms)."""

    def __init__(self, durations, clock):
        self.durations, self.clock, self.inputs = list(durations), clock, []

    def run(self, outputs, feeds):
        self.inputs.append(feeds)
        self.clock[0] += self.durations.pop(0) / 1000


def test_a_timed_session_drops_the_warmup_and_takes_the_median(monkeypatch):
    clock = [10.0]
    monkeypatch.setattr(profile.time, "perf_counter", lambda: clock[0])
    session = _Session([100, 100, 3, 1, 2, 5, 4], clock)
    result = profile.compare_latency({"s": profile.session_call(session, 16)}, runs=5, warmup=2, threads=2)["s"]
    assert result["median_ms"] == pytest.approx(3) and result["min_ms"] == pytest.approx(1)
    assert result["max_ms"] == pytest.approx(5) and (result["runs"], result["threads"]) == (5, 2)
    assert len(session.inputs) == 7
    images = session.inputs[0]["images"]
    assert images.shape == (1, 3, 16, 16) and images.dtype == np.float32


def test_compare_sessions_opens_every_graph_once_per_thread_count(monkeypatch):
    """At 1 and at 3 threads each graph gets its own session from the opener, timed against the others."""
    clock, opened = [0.0], []

    def opener(graph, threads):
        opened.append((graph, threads))
        return _Session([graph * threads] * 6, clock)  # 3 warm-up rounds + 3 runs

    monkeypatch.setattr(profile.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(profile.torch, "get_num_threads", lambda: 3)
    monkeypatch.setattr(profile.torch, "set_num_threads", lambda n: None)
    result = profile.compare_sessions({"a": 1.0, "b": 2.0}, opener, 8, runs=3)
    assert opened == [(1.0, 1), (2.0, 1), (1.0, 3), (2.0, 3)] and list(result) == [1, 3]
    assert result[3]["b"]["median_ms"] == pytest.approx(6.0) and result[1]["a"]["threads"] == 1
    assert profile.thread_counts() == (1, 3)


def test_compare_latency_interleaves_the_contenders(monkeypatch):
    """Each round runs every contender once, so a slow spell of the machine (here rounds 3-4) hits both alike."""
    clock, order = [0.0], []
    slow = {3, 4}

    def contender(name, ms):
        def call():
            order.append(name)
            clock[0] += (ms * (10 if len(order) // 2 in slow else 1)) / 1000
        return call

    monkeypatch.setattr(profile.time, "perf_counter", lambda: clock[0])
    result = profile.compare_latency({"a": contender("a", 2.0), "b": contender("b", 1.0)}, runs=6, warmup=1)
    assert order == ["a", "b"] * 7
    assert result["a"]["median_ms"] == pytest.approx(2.0) and result["b"]["median_ms"] == pytest.approx(1.0)
    assert result["a"]["max_ms"] == pytest.approx(20.0) and result["b"]["max_ms"] == pytest.approx(10.0)
    assert result["a"]["runs"] == 6 and result["a"]["p25_ms"] <= result["a"]["median_ms"] <= result["a"]["p75_ms"]
    assert result["a"]["cpu"] == profile.cpu_flags() and profile.latency_note(result["a"]).startswith("batch 1")


def test_compare_latency_times_only_the_call_after_the_warm_calls(monkeypatch):
    """With warm_calls 2, each turn calls a contender three times back to back and times the third alone."""
    clock, calls = [0.0], {"a": 0, "b": 0}

    def contender(name):
        def call():
            calls[name] += 1
            clock[0] += (10.0 if calls[name] % 3 else 1.0) / 1000  # the untimed calls take 10 ms, the timed one 1 ms
        return call

    monkeypatch.setattr(profile.time, "perf_counter", lambda: clock[0])
    result = profile.compare_latency({"a": contender("a"), "b": contender("b")}, runs=4, warmup=1, warm_calls=2)
    assert calls == {"a": 15, "b": 15}
    assert result["a"]["max_ms"] == pytest.approx(1.0) and result["b"]["median_ms"] == pytest.approx(1.0)


def test_layer_latency_times_each_layer_by_its_own_forward(monkeypatch):
    """A fake clock that moves only inside layer 3 (5 ms) and the head (2 ms): every other layer takes 0 ms."""
    import ssdlab
    from ssdlab.course import baseline

    model = ssdlab.load(baseline("plain")).eval()
    clock = [0.0]
    monkeypatch.setattr(profile.time, "perf_counter", lambda: clock[0])

    def costs(ms):
        def hook(*_):
            clock[0] += ms / 1000
        return hook
    model.backbone.module_list[3].register_forward_hook(costs(5.0))  # runs before layer_latency's own hooks
    model.box_head.register_forward_hook(costs(2.0))
    times = profile.layer_latency(model, 128, runs=4, warmup=1)
    assert times[3] == pytest.approx(5.0) and times["head"] == pytest.approx(2.0)
    assert all(times[i] == 0.0 for i in range(len(model.backbone.module_list)) if i != 3)
    rows = profile.layer_table(model, 128, latency=True)
    assert [row["ms"] for row in rows] == pytest.approx([times[row["index"]] for row in rows])


def test_two_runs_of_one_stage_are_named_by_the_settings_that_tell_them_apart(tmp_path, monkeypatch):
    """Notebook 06's two PTQ runs (heads float, heads int8) read 'plain_ptq256 (QUANTIZATION.FINAL ...)', not digests."""
    monkeypatch.setitem(course.PROFILES, "here", {"root": str(tmp_path)})
    for digest, final, log in (("1111bbbb", False, 20), ("2222cccc", True, 50)):
        folder = tmp_path / f"plain_ptq256-{digest}"
        folder.mkdir()
        (folder / "model_final.pt").write_bytes(b"")
        (folder / "config.yaml").write_text(f"QUANTIZATION:\n  FINAL: {final}\nSOLVER:\n  LOG_PERIOD: {log}\n"
                                            f"OUTPUT_DIR: {folder}\n")  # logging and folder do not tell runs apart
    found = course.course_checkpoints("here")
    assert found == {"baseline": course.baseline("plain"),
                     "plain_ptq256 (QUANTIZATION.FINAL False)": tmp_path / "plain_ptq256-1111bbbb/model_final.pt",
                     "plain_ptq256 (QUANTIZATION.FINAL True)": tmp_path / "plain_ptq256-2222cccc/model_final.pt"}
