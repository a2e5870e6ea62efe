"""Tests for ssdlab.model.cfg: parsing, defaults, checks with file:line errors, writing back, shipped cfgs."""
from pathlib import Path

import pytest

from ssdlab.errors import CfgError
from ssdlab.model.cfg import feature_layers, infer_channels, parse_cfg, read_cfg, write_cfg

BACKBONES = Path(__file__).resolve().parents[1] / "ssdlab" / "configs" / "backbones"
SHIPPED = sorted(p.name for p in BACKBONES.glob("*.cfg"))


def without_lines(layers: list[dict]) -> list[dict]:
    """The layer dicts minus the 'line' bookkeeping key."""
    return [{k: v for k, v in layer.items() if k != "line"} for layer in layers]


def signature(layer: dict) -> str:
    """A compact description of one layer's topology for comparing with REFERENCE §1."""
    kind = layer["type"]
    if kind == "convolutional":
        return f"C{layer['filters']}k{layer['size']}s{layer['stride']}p{layer['pad']}d{layer['dilation']}"
    if kind == "depthwise":
        return f"D{layer['filters']}s{layer['stride']}"
    if kind == "maxpool":
        return f"M{layer['size']}s{layer['stride']}p{layer['pad']}c{layer['ceil_mode']}"
    return f"S{layer['from']}"


def test_expected_shipped_cfgs_exist():
    assert set(SHIPPED) >= {
        "vgg_bn_ssd300.cfg", "vgg_bn_ssd300_fpga.cfg", "vgg_bn_ssd300_quan.cfg", "vgg_bn_ssd300_fpga_quan.cfg",
        "vgg_bn_ssd512.cfg", "mobilenet_v2_ssd.cfg", "mini_ssd_fpga.cfg",
        "course_plain.cfg", "course_plain_quan.cfg", "course_residual.cfg", "course_residual_quan.cfg"}


def test_defaults_and_types_filled_in():
    text = "# a comment\n[convolutional]\nfilters=8\nsize=3\n\n[maxpool]\nsize=2\nstride=2\n" \
           "[shortcut]\nfrom=-2\nfeature=linear\nfeature_idx=0\n"
    conv, pool, short = parse_cfg(text)
    assert conv == {"type": "convolutional", "line": 2, "filters": 8, "size": 3, "stride": 1, "pad": 0,
                    "dilation": 1, "bias": 1, "batch_normalize": 0, "activation": "linear", "quantization": 0,
                    "backbone": 0, "feature": "", "feature_idx": -1}
    assert pool == {"type": "maxpool", "line": 6, "size": 2, "stride": 2, "pad": 0, "ceil_mode": 0}
    assert short == {"type": "shortcut", "line": 9, "from": -2, "activation": "linear",
                     "feature": "linear", "feature_idx": 0}


def test_infer_channels_hand_worked():
    text = ("[convolutional]\nfilters=8\nsize=1\n[depthwise]\nfilters=8\nsize=3\n[maxpool]\nsize=2\nstride=2\n"
            "[convolutional]\nfilters=8\nsize=1\n[shortcut]\nfrom=-2\nfeature=linear\nfeature_idx=0\n")
    assert infer_channels(parse_cfg(text), in_channels=3) == [8, 8, 8, 8, 8]
    first_depthwise = parse_cfg("[depthwise]\nfilters=3\nsize=3\nfeature=linear\nfeature_idx=0\n")
    assert infer_channels(first_depthwise, in_channels=3) == [3]
    with pytest.raises(CfgError, match="input has 1 channels"):
        infer_channels(first_depthwise, in_channels=1)


def test_feature_layers_ordered_by_level_not_file_order():
    text = ("[convolutional]\nfilters=4\nsize=1\nfeature=linear\nfeature_idx=1\n"
            "[convolutional]\nfilters=4\nsize=1\nfeature=l2_norm\nfeature_idx=0\n")
    assert feature_layers(parse_cfg(text)) == [1, 0]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_cfg_round_trip(name):
    layers = read_cfg(BACKBONES / name)
    text = write_cfg(layers)
    again = parse_cfg(text, source="written")
    assert without_lines(again) == without_lines(layers)
    assert write_cfg(again) == text


def test_write_keeps_non_default_values():
    layers = parse_cfg("[convolutional]\nfilters=4\nsize=3\ndilation=2\nbias=0\nquantization=1\n"
                       "activation=leaky\nfeature=linear\nfeature_idx=0\nbackbone=1\n")
    text = write_cfg(layers)
    for line in ("dilation=2", "bias=0", "quantization=1", "activation=leaky", "feature=linear", "backbone=1"):
        assert line in text.splitlines()


GOOD_HEAD = "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\npad=1\nactivation=relu\n"
GOOD_TAIL = "[convolutional]\nfilters=8\nsize=3\npad=1\nfeature=linear\nfeature_idx=0\n"
# each case: cfg text whose offending line ends with '# <--' (for errors about a whole layer the
# marker sits on its [section] header), and a fragment the message must contain
BAD_CASES = {
    "unknown section": (GOOD_HEAD + "[conv]  # <--\nfilters=8\n" + GOOD_TAIL, "unknown section"),
    "unknown key": (GOOD_HEAD + "filter=8  # <--\n" + GOOD_TAIL, "unknown key 'filter'"),
    "conv without filters": ("[convolutional]  # <--\nsize=3\n" + GOOD_TAIL, "needs filters"),
    "conv without size": (GOOD_HEAD + "[convolutional]  # <--\nfilters=8\n" + GOOD_TAIL, "needs size"),
    "shortcut without from": (GOOD_HEAD + GOOD_TAIL + "[shortcut]  # <--\n", "needs from"),
    "maxpool without stride": (GOOD_HEAD + "[maxpool]  # <--\nsize=2\n" + GOOD_TAIL, "needs stride"),
    "maxpool without size": (GOOD_HEAD + "[maxpool]  # <--\nstride=2\n" + GOOD_TAIL, "needs size"),
    "non-integer value": (GOOD_HEAD + "[convolutional]\nfilters=6.5  # <--\nsize=1\n" + GOOD_TAIL,
                          "must be an integer"),
    "word for a number": (GOOD_HEAD + "[maxpool]\nsize=two  # <--\nstride=2\n" + GOOD_TAIL, "must be an integer"),
    "bad activation": (GOOD_HEAD + "[convolutional]\nfilters=8\nsize=1\nactivation=swish  # <--\n" + GOOD_TAIL,
                       "activation='swish'"),
    "bad feature": (GOOD_HEAD + "[convolutional]\nfilters=8\nsize=1\nfeature=l2  # <--\nfeature_idx=1\n"
                    + GOOD_TAIL, "feature='l2'"),
    "from before layer 0": (GOOD_HEAD + GOOD_TAIL + "[shortcut]  # <--\nfrom=-3\n", "outside"),
    "from at itself": (GOOD_HEAD + GOOD_TAIL + "[shortcut]\nfrom=0  # <--\n", "out of range"),
    "from after itself": (GOOD_HEAD + GOOD_TAIL + "[shortcut]\nfrom=2  # <--\n", "out of range"),
    "depthwise width": (GOOD_HEAD + "[depthwise]  # <--\nfilters=16\nsize=3\npad=1\n" + GOOD_TAIL,
                        "set filters=8"),
    "duplicated feature_idx": (GOOD_HEAD.replace("activation=relu", "feature=linear\nfeature_idx=0")
                               + GOOD_TAIL.replace("[convolutional]", "[convolutional]  # <--"),
                               "feature_idx=0 is already used by layer 0"),
    "feature_idx not contiguous": (GOOD_HEAD + GOOD_TAIL + "[convolutional]  # <--\nfilters=8\nsize=1\n"
                                   "feature=linear\nfeature_idx=2\n", "level 1 is missing"),
    "shortcut width mismatch": (GOOD_HEAD + "[convolutional]\nfilters=16\nsize=1\n[shortcut]  # <--\nfrom=-2\n"
                                + GOOD_TAIL, "widths must match"),
    "duplicate key": (GOOD_HEAD + "filters=4  # <--\n" + GOOD_TAIL, "given twice"),
    "key before any section": ("filters=4  # <--\n" + GOOD_HEAD + GOOD_TAIL, "before the first [section]"),
    "not key=value": (GOOD_HEAD + "filters 4  # <--\n" + GOOD_TAIL, "expected key=value"),
    "zero stride": (GOOD_HEAD + "stride=0  # <--\n" + GOOD_TAIL, "at least 1"),
    "flag not 0/1": (GOOD_HEAD + "bias=2  # <--\n" + GOOD_TAIL, "between 0 and 1"),
    "feature without feature_idx": (GOOD_HEAD + "[convolutional]  # <--\nfilters=8\nsize=1\nfeature=linear\n"
                                    + GOOD_TAIL, "must be given together"),
    "two backbone=1": (GOOD_HEAD + "backbone=1\n" + "[convolutional]  # <--\nfilters=8\nsize=1\nbackbone=1\n"
                       + GOOD_TAIL, "backbone=1 is already set on layer 0"),
    "shortcut with activation": (GOOD_HEAD + "[convolutional]\nfilters=8\nsize=1\n[shortcut]  # <--\nfrom=-2\n"
                                 "activation=relu\n" + GOOD_TAIL, "no activation after the add"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_cfg_names_file_and_line(case, tmp_path):
    text, fragment = BAD_CASES[case]
    line = next(i for i, row in enumerate(text.splitlines(), start=1) if row.endswith("# <--"))
    path = tmp_path / "bad_backbone.cfg"
    path.write_text(text)
    with pytest.raises(CfgError) as err:
        read_cfg(path)
    message = str(err.value)
    assert f"{path}:{line}" in message
    assert fragment in message


def test_cfg_without_head_levels_names_the_file(tmp_path):
    path = tmp_path / "headless.cfg"
    path.write_text(GOOD_HEAD)
    with pytest.raises(CfgError, match="headless.cfg.*feature=linear"):
        read_cfg(path)


def test_missing_file_is_a_cfg_error(tmp_path):
    with pytest.raises(CfgError, match="does not exist"):
        read_cfg(tmp_path / "nothing.cfg")


def test_errors_for_layers_built_in_code_name_the_layer():
    layers = parse_cfg(GOOD_HEAD + GOOD_TAIL)
    layers[1] = dict(layers[1], type="depthwise", filters=4)
    del layers[1]["line"]
    with pytest.raises(CfgError, match=r"pruned\.cfg \(layer 1\)"):
        infer_channels(layers, source="pruned.cfg")


# ---- the shipped cfgs follow REFERENCE §1 ----

def _conv(filters: int, size: int = 3, stride: int = 1, pad: int = 1, dilation: int = 1) -> str:
    """Signature of a conv layer."""
    return f"C{filters}k{size}s{stride}p{pad}d{dilation}"


M2 = "M2s2p0c0"
VGG_BODY = [_conv(64), _conv(64), M2, _conv(128), _conv(128), M2, _conv(256), _conv(256), _conv(256), "M2s2p0c1",
            _conv(512), _conv(512), _conv(512), M2, _conv(512), _conv(512), _conv(512), "M3s1p1c0"]
VGG300 = VGG_BODY + [_conv(1024, pad=6, dilation=6), _conv(1024, 1, pad=0),
                     _conv(256, 1, pad=0), _conv(512, stride=2), _conv(128, 1, pad=0), _conv(256, stride=2),
                     _conv(128, 1, pad=0), _conv(256, pad=0), _conv(128, 1, pad=0), _conv(256, pad=0)]


def test_vgg_ssd300_topology():
    layers = read_cfg(BACKBONES / "vgg_bn_ssd300.cfg")
    assert [signature(layer) for layer in layers] == VGG300
    convs = [layer for layer in layers if layer["type"] == "convolutional"]
    assert all(c["batch_normalize"] == 1 and c["bias"] == 1 and c["activation"] == "relu" for c in convs)
    assert layers[12]["feature"] == "l2_norm" and layers[12]["feature_idx"] == 0
    assert [i for i, layer in enumerate(layers) if layer.get("backbone")] == [16]
    assert feature_layers(layers) == [12, 19, 21, 23, 25, 27]


def test_vgg_ssd300_fpga_differs_only_in_l2norm_and_fc6():
    base, fpga = read_cfg(BACKBONES / "vgg_bn_ssd300.cfg"), read_cfg(BACKBONES / "vgg_bn_ssd300_fpga.cfg")
    assert fpga[12]["feature"] == "linear"
    assert signature(fpga[18]) == _conv(1024)
    expected = without_lines(base)
    expected[12]["feature"] = "linear"
    expected[18].update(pad=1, dilation=1)
    assert without_lines(fpga) == expected


def test_vgg_ssd512_adds_a_seventh_level():
    layers = read_cfg(BACKBONES / "vgg_bn_ssd512.cfg")
    extras = [_conv(256, 1, pad=0), _conv(512, stride=2)] + [_conv(128, 1, pad=0), _conv(256, stride=2)] * 3 + [
        _conv(128, 1, pad=0), _conv(256, 4, pad=1)]
    assert [signature(layer) for layer in layers] == VGG300[:20] + extras
    assert len(feature_layers(layers)) == 7


@pytest.mark.parametrize("base,quan", [("vgg_bn_ssd300.cfg", "vgg_bn_ssd300_quan.cfg"),
                                       ("vgg_bn_ssd300_fpga.cfg", "vgg_bn_ssd300_fpga_quan.cfg"),
                                       ("course_plain.cfg", "course_plain_quan.cfg"),
                                       ("course_residual.cfg", "course_residual_quan.cfg")])
def test_quan_variants_quantize_every_conv_but_the_first(base, quan):
    plain, quantized = read_cfg(BACKBONES / base), read_cfg(BACKBONES / quan)
    expected = without_lines(plain)
    for i, layer in enumerate(expected):
        if layer["type"] == "convolutional":
            layer["quantization"] = int(i > 0)
    assert without_lines(quantized) == expected


def test_the_int8_variant_quantizes_every_conv():
    expected = without_lines(read_cfg(BACKBONES / "course_plain.cfg"))
    for layer in expected:
        if layer["type"] == "convolutional":
            layer["quantization"] = 1
    assert without_lines(read_cfg(BACKBONES / "course_plain_int8.cfg")) == expected


def test_mobilenet_v2_ssd_topology():
    layers = read_cfg(BACKBONES / "mobilenet_v2_ssd.cfg")
    expected, width = [_conv(32, stride=2)], 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            block = ([_conv(width * t, 1, pad=0)] if t != 1 else []) + [f"D{width * t}s{stride}", _conv(c, 1, pad=0)]
            expected += block + (([f"S-{len(block) + 1}"]) if stride == 1 and width == c else [])
            width = c
    expected.append(_conv(1280, 1, pad=0))
    for mid, out in [(256, 512), (128, 256), (128, 256), (64, 64)]:
        expected += [_conv(mid, 1, pad=0), f"D{mid}s2", _conv(out, 1, pad=0)]
    assert [signature(layer) for layer in layers] == expected
    convs = [layer for layer in layers if layer["type"] != "shortcut"]
    assert all(c["batch_normalize"] == 1 and c["bias"] == 0 for c in convs)
    assert layers[61]["backbone"] == 1 and layers[61]["filters"] == 1280
    assert layers[feature_layers(layers)[0]]["type"] == "shortcut"


def test_mini_ssd_fpga_topology():
    layers = read_cfg(BACKBONES / "mini_ssd_fpga.cfg")
    widths = [32, "M", 64, "M", 64, 128, "M", 64, 64, 128, 32, 16, 128]
    assert [signature(layer) for layer in layers] == [M2 if w == "M" else _conv(w) for w in widths]
    assert feature_layers(layers) == [12]
    assert all(layer["activation"] == "relu" and layer["batch_normalize"] for layer in layers
               if layer["type"] == "convolutional")


def test_course_models_are_hardware_friendly():
    plain = read_cfg(BACKBONES / "course_plain.cfg")
    residual = read_cfg(BACKBONES / "course_residual.cfg")
    for layers in (plain, residual):
        convs = [layer for layer in layers if layer["type"] == "convolutional"]
        assert all(c["size"] == 3 and c["dilation"] == 1 and c["batch_normalize"] for c in convs)
        assert not any(layer["type"] == "depthwise" or layer.get("feature") == "l2_norm" for layer in layers)
        assert not any(layer.get("quantization") for layer in layers)
        assert len(feature_layers(layers)) == 6
    assert not any(layer["type"] == "shortcut" for layer in plain)
    shortcuts = [i for i, layer in enumerate(residual) if layer["type"] == "shortcut"]
    assert len(shortcuts) == 3
    for i in shortcuts:  # conv ReLU -> conv linear -> add the block input
        assert residual[i]["from"] == -3
        assert (residual[i - 2]["activation"], residual[i - 1]["activation"]) == ("relu", "linear")
