"""The box drawing helpers: matplotlib rectangles where the boxes are, coloured by class; demo labels."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ssdlab.viz.draw import class_color, draw_detections, label_origin  # noqa: E402
from ssdlab.viz.plots import plot_boxes  # noqa: E402


def test_plot_boxes_geometry_colours_and_captions():
    fig, ax = plt.subplots()
    boxes = np.array([[10.0, 20.0, 50.0, 30.0], [0.5, 1.5, 2.5, 4.0]])
    patches = plot_boxes(ax, boxes, labels=[1, 3], class_names=("bg", "a", "b", "c"), linestyle="--")
    assert [(p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in patches] == [
        (10.0, 20.0, 40.0, 10.0), (0.5, 1.5, 2.0, 2.5)]
    expected = np.array(class_color(3)) / 255
    assert np.allclose(patches[1].get_edgecolor()[:3], expected)
    assert [t.get_text() for t in ax.texts] == ["a", "c"]
    assert len(ax.patches) == 2
    plt.close(fig)


def test_plot_boxes_one_colour_without_labels():
    fig, ax = plt.subplots()
    patches = plot_boxes(ax, [[0, 0, 1, 1]], color="red")
    assert np.allclose(patches[0].get_edgecolor(), (1, 0, 0, 1)) and not ax.texts
    plt.close(fig)


def test_labels_stay_inside_the_image():
    assert label_origin((30, 40), (20, 10), (100, 100)) == (30, 30)  # room above the box: above it
    assert label_origin((30, 4), (20, 10), (100, 100)) == (30, 4)  # none: just inside the box's top edge
    assert label_origin((90, 40), (20, 10), (100, 100)) == (80, 30)  # cut on the right: moved left
    assert label_origin((-5, -3), (20, 10), (100, 100)) == (0, 0)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    drawn = np.asarray(draw_detections(image, [[0, 0, 63, 20]], [1], [0.9], ("bg", "circle")))
    label_rows = np.flatnonzero((drawn[:, 20:40] == class_color(1)).all(axis=2).any(axis=1))
    assert {2, 5, 8} <= set(label_rows)  # the label's fill is inside the box, below its 2-px top edge, not cut off


def test_results_table_names_its_columns_and_counts_macs_in_millions():
    from ssdlab.viz.tables import results_table

    rows = [{"model": "float", "params": 10, "size_mib": 1.5, "macs": 2_500_000, "latency_ms": None, "voc_map": 0.9,
             "coco_ap": 0.6}, {"model": "int8", "params": 10, "size_mib": 0.5, "macs": 2_500_000, "latency_ms": None,
                               "voc_map": 0.89, "coco_ap": 0.59, "checkpoint": "x.pt"}]
    table = results_table(rows)
    assert list(table.columns) == ["params", "size (MiB)", "MACs (M)", "VOC mAP@0.5", "COCO AP"]  # nobody timed
    assert table.loc["int8", "MACs (M)"] == 2.5 and table.loc["float", "VOC mAP@0.5"] == 0.9
    assert "MACs (M)" not in results_table(rows, drop=("macs",))


def test_transfer_curves_count_the_levels_of_each_quantizer():
    from ssdlab.viz.curves import plot_transfer_curves

    levels = plot_transfer_curves()
    plt.close("all")
    assert levels[("DoReFa weights", "2 bits")] == 4 and levels[("IAO asymmetric", "3 bits")] == 8
    assert levels[("IAO symmetric", "3 bits")] == 7  # absmax scaling never reaches the code -2^(b-1)
    assert levels[("BWN weights", "binary")] == 2 and levels[("BWN weights", "ternary")] == 3
