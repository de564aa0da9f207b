"""The parameter loader: schema, types, ranges, overrides, the shipped sets."""
import pytest

from lib.core import config, paths
from lib.core.config import ParamError


@pytest.mark.parametrize("name", ["smoke", "demo", "thesis"])
def test_shipped_sets_load(name):
    cfg = config.load(f"params/{name}.yaml")
    assert cfg.experiment == name


def test_unknown_key_names_key_and_allowed():
    with pytest.raises(ParamError, match=r"unknown parameter 'gating.treshold'.*allowed keys: .*threshold"):
        config.from_dict({"gating": {"treshold": 0.3}})
    with pytest.raises(ParamError, match="unknown parameter 'seeds'"):
        config.from_dict({"seeds": 1})


def test_wrong_type_names_key():
    with pytest.raises(ParamError, match=r"pools.test = 'many' has the wrong type; expected int"):
        config.from_dict({"pools": {"test": "many"}})
    with pytest.raises(ParamError, match="data.source = 'kaggle' is not allowed"):
        config.from_dict({"data": {"source": "kaggle"}})
    with pytest.raises(ParamError, match="must be a section"):
        config.from_dict({"data": 3})


def test_ranges():
    with pytest.raises(ParamError, match=r"outside \[-1, 1\]"):
        config.from_dict({"gating": {"threshold": 1.5}})
    with pytest.raises(ParamError, match="quota of 0"):
        config.from_dict({"selection": {"per_label": 0}})


def test_overrides_and_int_to_float():
    cfg = config.load("params/smoke.yaml", {"gating.threshold": 1, "pools.test": 50})
    assert cfg.gating.threshold == 1.0 and isinstance(cfg.gating.threshold, float)
    assert cfg.seed == 0 and cfg.pools.test == 50


def test_base_inheritance(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(f"base: {paths.PARAMS / 'smoke.yaml'}\nseed: 7\n")
    cfg = config.load(f)
    assert cfg.seed == 7 and cfg.experiment == "smoke"


def test_missing_file_lists_sets():
    with pytest.raises(ParamError, match="smoke.yaml"):
        config.load("params/nope.yaml")


def test_section_hash_changes_only_with_its_sections():
    a = config.from_dict({})
    b = config.from_dict({"gating": {"threshold": 0.5}})
    assert a.section_hash("data", "pools") == b.section_hash("data", "pools")
    assert a.section_hash("gating") != b.section_hash("gating")


def test_a_float_yaml_reads_as_text_gets_a_hint(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("base: params/smoke.yaml\nfinetune:\n  learning_rate: 1e-4\n")
    with pytest.raises(ParamError, match=r"finetune.learning_rate.*write it with a dot, e.g. 1.0e-04"):
        config.load(p)


def test_a_mistyped_tuning_method_fails_at_load_not_at_stage_03():
    with pytest.raises(ParamError, match="finetune.method = 'spectral-clp' is not among selection.methods"):
        config.load("params/smoke.yaml", {"finetune.method": "spectral-clp"})
    # a reference generator and the no-fine-tune control read no tuning set
    config.load("params/smoke.yaml", {"finetune.method": "textbook", "generation.kind": "real-holdout"})
    config.load("params/smoke.yaml", {"finetune.method": "textbook", "finetune.control": "no-fine-tune"})


def test_a_missing_upstream_stage_names_the_notebook_that_exists(tmp_path):
    from lib.core import stages

    cfg = config.load("params/smoke.yaml")
    with pytest.raises(FileNotFoundError, match=r"notebooks/03_dreambooth_active_gating\.ipynb"):
        stages.require(cfg, "03_dreambooth", tmp_path)


def test_typos_suggest_the_closest_key_or_value():
    with pytest.raises(ParamError, match=r"'gating.treshold' in section 'gating'; did you mean 'gating.threshold'\?"):
        config.from_dict({"gating": {"treshold": 0.3}})
    with pytest.raises(ParamError, match=r"unknown parameter 'gatting' .*did you mean 'gating'\?"):
        config.from_dict({"gatting": {"threshold": 0.3}})
    with pytest.raises(ParamError, match=r"gating.mode = 'quantil' is not allowed; did you mean 'quantile'\?"):
        config.load("params/smoke.yaml", {"gating.mode": "quantil"})
    with pytest.raises(ParamError, match=r"unknown parameter 'zzz'.*top level; allowed"):   # nothing close: no guess
        config.from_dict({"zzz": 1})
    assert "gating.threshold" in config.dotted_keys() and "finetune.learning_rate" in config.dotted_keys()


def test_a_step_registers_a_check_on_its_section_and_it_runs_at_load_time(monkeypatch):
    """lib.core imports no step, yet the values only a step knows are judged when a file loads: the step
    registers a check (lib/core/config/checks.py), e.g. the shapes domain's shape names, the backbones."""
    monkeypatch.setattr(config.checks, "CHECKS", {k: list(v) for k, v in config.checks.CHECKS.items()})

    @config.checks.register("gating")
    def toy(cfg):      # returns what is wrong, or None
        return f"gating.n_images = {cfg.gating.n_images} is odd" if cfg.gating.n_images % 2 else None

    config.load("params/smoke.yaml", {"gating.n_images": 4})
    with pytest.raises(ParamError, match="gating.n_images = 3 is odd"):
        config.load("params/smoke.yaml", {"gating.n_images": 3})
    with pytest.raises(ValueError, match="no parameter section 'gatting'"):
        config.checks.register("gatting")
    # the step modules that register were imported by the load; what they check is refused at load time
    with pytest.raises(ParamError, match=r"data.classes \['sqare'\] are not shapes.*did you mean 'square'"):
        config.load("params/shapes.yaml", {"data.classes": ["circle", "sqare"]})
    with pytest.raises(ParamError, match="unknown classifier.arch 'resnet-50'"):
        config.load("params/smoke.yaml", {"classifier.arch": "resnet-50"})
