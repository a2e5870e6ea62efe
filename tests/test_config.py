"""Config: defaults, YAML recipes, KEY VALUE overrides and their errors."""
import pytest

from ssdlab.config import UNREAD_KEYS, config_from_dict, get_default_config, load_config, merge_overrides
from ssdlab.errors import ConfigError


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_have_every_seed_section():
    cfg = get_default_config()
    for section in ("MODEL", "INPUT", "DATASETS", "SOLVER", "TEST", "PRUNE", "QUANTIZATION"):
        assert section in cfg
    assert cfg.MODEL.PRIORS.BOXES_PER_LOCATION == [4, 6, 6, 6, 4, 4]
    assert cfg.SOLVER.WARMUP_FACTOR == pytest.approx(1 / 3)
    assert cfg.OUTPUT_DIR == "outputs"


def test_yaml_then_overrides_typed_from_defaults(tmp_path):
    path = write(tmp_path, "MODEL:\n  NUM_CLASSES: 2\nSOLVER:\n  LR: 0.002324\n"
                           "DATASETS:\n  TRAIN: (\"oxfordhand\",)\n")
    cfg = load_config(path, ["SOLVER.MAX_ITER", "100", "TEST.BN_FUSE", "True",
                             "SOLVER.LR_STEPS", "[50, 80]", "SOLVER.LR", "1e-2"])
    assert cfg.MODEL.NUM_CLASSES == 2
    assert cfg.SOLVER.MAX_ITER == 100 and isinstance(cfg.SOLVER.MAX_ITER, int)
    assert cfg.TEST.BN_FUSE is True
    assert cfg.SOLVER.LR_STEPS == [50, 80]
    assert cfg.SOLVER.LR == pytest.approx(0.01)
    assert cfg.DATASETS.TRAIN == ["oxfordhand"]  # the seed's tuple-in-a-string form
    assert cfg.MODEL.BACKBONE.CFG.endswith("vgg_bn_ssd300.cfg")


def test_int_given_for_float_key_becomes_float(tmp_path):
    cfg = load_config(write(tmp_path, "SOLVER:\n  LR: 1\n"))
    assert isinstance(cfg.SOLVER.LR, float)


def test_frozen_config_refuses_writes(tmp_path):
    cfg = load_config(None)
    with pytest.raises(ConfigError, match="frozen"):
        cfg.SOLVER.LR = 1.0
    clone = cfg.clone()
    clone.SOLVER.LR = 1.0
    assert clone.SOLVER.LR == 1.0 and cfg.SOLVER.LR == pytest.approx(1e-3)


def test_unknown_yaml_key_names_key_file_and_closest(tmp_path):
    path = write(tmp_path, "SOLVER:\n  MAX_ITERS: 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "SOLVER.MAX_ITERS" in message and str(path) in message and "SOLVER.MAX_ITER" in message


def test_keys_nothing_reads_are_dropped_with_a_warning_naming_file_and_key(tmp_path, caplog):
    path = write(tmp_path, "MODEL:\n  META_ARCHITECTURE: SSDDetector\n  BACKBONE:\n    NAME: cfg_backbone\n"
                           "    OUT_CHANNELS: [512, 1024]\n  BOX_HEAD:\n    NAME: SSDBoxHead\nTEST:\n  MAX_PER_CLASS: -1\n")
    with caplog.at_level("WARNING", logger="ssdlab.config"):
        cfg = load_config(path, ["TEST.MAX_PER_CLASS", "100"])
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 6 and all("is not read by ssdlab" in m and "remove it" in m for m in warned)
    assert all(any(key in m and str(path) in m for m in warned) for key in UNREAD_KEYS)
    assert any("command line: TEST.MAX_PER_CLASS" in m for m in warned)
    assert "META_ARCHITECTURE" not in cfg.MODEL and "OUT_CHANNELS" not in cfg.MODEL.BACKBONE


def test_an_older_checkpoint_config_with_unread_keys_loads_quietly(caplog):
    data = get_default_config().to_dict()
    data["MODEL"]["BACKBONE"]["OUT_CHANNELS"] = [64, 96]
    with caplog.at_level("WARNING", logger="ssdlab.config"):
        cfg = config_from_dict(data)
    assert not caplog.records and cfg == get_default_config()


def test_unknown_override_names_closest_key():
    with pytest.raises(ConfigError, match="QUANTIZATION.WBITS"):
        load_config(None, ["QUANTIZATION.WBIT", "4"])


def test_bad_value_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match="SOLVER.BATCH_SIZE"):
        load_config(write(tmp_path, "SOLVER:\n  BATCH_SIZE: lots\n"))
    with pytest.raises(ConfigError, match="TEST.BN_FUSE"):
        load_config(None, ["TEST.BN_FUSE", "maybe"])


def test_override_without_value():
    cfg = get_default_config()
    with pytest.raises(ConfigError, match="KEY VALUE"):
        merge_overrides(cfg, ["SOLVER.LR"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_section_given_a_scalar(tmp_path):
    with pytest.raises(ConfigError, match="MODEL.PRIORS is a section"):
        load_config(write(tmp_path, "MODEL:\n  PRIORS: 3\n"))


def test_invalid_yaml_names_file(tmp_path):
    path = write(tmp_path, "MODEL: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_backbone_cfg_resolved_next_to_recipe(tmp_path):
    (tmp_path / "mine.cfg").write_text("[convolutional]\nfilters=8\nsize=3\n")
    cfg = load_config(write(tmp_path, "MODEL:\n  BACKBONE:\n    CFG: mine.cfg\n"))
    assert cfg.MODEL.BACKBONE.CFG == str((tmp_path / "mine.cfg").resolve())
    with pytest.raises(ConfigError, match="missing.cfg"):
        load_config(None, ["MODEL.BACKBONE.CFG", "missing.cfg"])


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["SOLVER.MAX_ITER", "7"])
    path = write(tmp_path, cfg.dump(), "dumped.yaml")
    assert load_config(path).to_dict() == cfg.to_dict()


def test_a_word_outside_its_choices_is_refused_where_it_is_set_with_a_hint(tmp_path):
    """SOLVER.OPTIMIZER adamw in a recipe file names that file (not only later, when training builds the
    optimizer); QUANTIZATION.TYPE iao on the command line is met with 'did you mean IAO'."""
    recipe = tmp_path / "opt.yaml"
    recipe.write_text("SOLVER:\n  OPTIMIZER: adamw\n")
    with pytest.raises(ConfigError, match=rf"^{recipe}: SOLVER.OPTIMIZER = 'adamw' is unknown; use one of SGD, "
                                          r"AdamW; did you mean 'AdamW'\?$"):
        load_config(recipe)
    with pytest.raises(ConfigError, match=r"^command line: QUANTIZATION.TYPE = 'iao' is unknown; use one of no, "
                                          r"dorefa, IAO, BWN; did you mean 'IAO'\?$"):
        load_config(None, ["QUANTIZATION.TYPE", "iao"])
    with pytest.raises(ConfigError, match=r"SOLVER.SCHEDULER = 'cosin' is unknown; .*did you mean 'cosine'\?$"):
        load_config(None, ["SOLVER.SCHEDULER", "cosin"])


def test_the_choices_are_the_words_the_code_acts_on():
    """CHOICES (checked at load) against the lists the modules branch on, so the two never drift apart."""
    from ssdlab.config import CHOICES
    from ssdlab.prune.plan import COSTS, MODES
    from ssdlab.quant.layers import BITS

    assert CHOICES["PRUNE.TYPE"] == ("no", *MODES) and CHOICES["PRUNE.SR_WEIGHT"] == ("none", *COSTS)
    assert CHOICES["QUANTIZATION.TYPE"] == ("no", *BITS)
    for key, words in CHOICES.items():
        assert get_default_config()[key.split(".")[0]][key.split(".")[1]] in words, key


def test_a_key_twice_an_empty_recipe_and_a_folder_are_refused_naming_the_file(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("SOLVER:\n  LR: 0.01\n  MAX_ITER: 10\n  LR: 0.1\n")
    with pytest.raises(ConfigError, match=rf"^{twice}: not valid YAML: .*key 'LR' is given twice in this section; "
                                          r"keep one\n.*line 4"):
        load_config(twice)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=rf"^{empty} is empty, which would train the defaults"):
        load_config(empty)
    with pytest.raises(ConfigError, match=rf"^config file {tmp_path} is a folder; pass a .yaml recipe in it"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match=r"SOLVER.MAX_ITER = 'ten' should be an int like"):
        load_config(None, ["SOLVER.MAX_ITER", "ten"])
