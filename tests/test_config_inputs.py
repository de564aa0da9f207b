"""Bad parameter input that once slipped through or raised a raw traceback (issue 20, holes 4, 6, 10, seeds):
each is applied as written or refused with a ParamError naming the file or key and what to do."""
import pytest

from lib.core import config, overrides, paths
from lib.runs import runner
from lib.core.config import ParamError


def test_a_null_override_is_applied_where_null_is_allowed_and_refused_where_not():
    smoke = config.read_yaml("params/smoke.yaml")
    file_set = {**smoke, "finetune": {**smoke.get("finetune", {}), "cpu_threads": 4}}
    assert config.from_dict(file_set).finetune.cpu_threads == 4
    nulled = config.from_dict(config.apply_overrides(file_set, {"finetune.cpu_threads": None}))
    assert nulled.finetune.cpu_threads is None                     # was dropped: stayed 4
    with pytest.raises(ParamError, match=r"seed = null: seed cannot be null \(it takes int\).*leave the override out"):
        config.load("params/smoke.yaml", {"seed": None})
    with pytest.raises(ParamError, match=r"gating = null: 'gating' is a section"):
        config.load("params/smoke.yaml", {"gating": None})


def test_the_run_id_states_a_null_override_as_null():
    over = overrides.parse_sets(["finetune.cpu_threads=null"])
    cfg = config.load("params/smoke.yaml", over)
    assert runner.run_id(cfg, over) == "spectral-clip_n12_seed0_cpu_threadsnull"   # was ..._cpu_threadsNone


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "..", ".hidden", "", "a b"])
def test_experiment_names_stay_inside_the_runs_root(name):
    with pytest.raises(ParamError, match=r"experiment = .* must be one folder name under the runs root"):
        config.load("params/smoke.yaml", {"experiment": name})


def test_experiment_names_of_the_shipped_sets_still_load():
    for name in ("smoke", "shapes-demo", "thesis_v1.2"):
        assert config.load("params/smoke.yaml", {"experiment": name}).experiment == name


@pytest.mark.parametrize("key,value", [("seed", -1), ("data.phantom_seed", -3), ("seed", 2**32)])
def test_seeds_are_non_negative_and_within_numpys_range(key, value):
    with pytest.raises(ParamError, match=rf"{key} = {value} must be a whole number from 0 to 4294967295"):
        config.load("params/smoke.yaml", {key: value})
    assert config.load("params/smoke.yaml", {key: 2**32 - 1}).to_dict() is not None


def test_a_base_that_includes_itself_is_refused_naming_the_loop(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"base: {a}\nseed: 1\n")
    with pytest.raises(ParamError, match=r"base: .*a\.yaml in .*a\.yaml includes itself"):
        config.load(a)
    a.write_text(f"base: {b}\n")
    b.write_text(f"base: {a}\n")
    with pytest.raises(ParamError, match=r"includes itself \(.*a\.yaml -> .*b\.yaml -> .*a\.yaml\)"):
        config.load(a)
    a.write_text("base: [params/smoke.yaml]\n")
    with pytest.raises(ParamError, match=r"base: \['params/smoke.yaml'\] in .*a\.yaml must be the path"):
        config.load(a)


def test_a_folder_given_as_the_parameter_file_is_named(tmp_path):
    with pytest.raises(ParamError, match=r"parameter file .*params is a folder \(.*smoke\.yaml.*\); give one \.yaml"):
        config.load(paths.PARAMS)
    with pytest.raises(ParamError, match="is a folder"):
        runner.resolve_config(tmp_path, {}, tmp_path / "runs")


def test_bad_yaml_in_a_set_names_the_key():
    with pytest.raises(ParamError, match=r"--set 'data.classes=\[a, b': the value of data.classes is not valid YAML"):
        overrides.parse_sets(["data.classes=[a, b"])
    with pytest.raises(ParamError, match="names no key"):
        overrides.parse_sets(["=3"])
    assert runner.main(["params/smoke.yaml", "--set", "finetune.prompt_template={label"]) == 1
