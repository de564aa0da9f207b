"""Stage keys (lib.core.stages) as they were before the steps registered their fingerprints (issue 21): the same
hash for every stage, and computed in full by lib.core alone, in a fresh interpreter that imported no step.

The keys below were recorded on the code before lib.core.fingerprints existed. A key that changes makes every
finished stage look new; if params/smoke.yaml, params/shapes.yaml or a config default changed on purpose,
record the new keys here."""
import json
import subprocess
import sys

from lib.core import paths

SMOKE = {"01_data_curation": "33e3f6be88p4", "02_clustering": "49168eacbdp4", "03_dreambooth": "0579f69809p4",
         "04_generation": "2b8ea8fb8cp4", "05_classifier": "7c1e8b60c7p4", "06_fter_analysis": "7c1e8b60c7p4",
         "05_real_baseline": "ed98a5514cp4", "07_brackets": "66d285c4efp4", "07_ratios": "dd8fd4a9ecp4",
         "07_oversampling": "6fc258ba68p4", "08_transfer": "c29947fc20p4", "08_transfer_real": "9caa59798fp4"}
STAGES = ("01_data_curation", "02_clustering", "04_generation", "05_classifier")
OTHERS = {   # name: (params file, overrides, keys of STAGES)
    "shapes": ("params/shapes.yaml", {}, ("dfbc741bf8s4", "9395fb00cas4", "68b408cb80s4", "867fd88076s4")),
    "reference": ("params/smoke.yaml", {"generation.kind": "real-holdout", "fidelity.extractor": "pixel"},
                  ("33e3f6be88p4", "49168eacbdp4", "b9e20042bfp4", "300fb338d5p4")),
    "external": ("params/smoke.yaml", {"selection.methods": ["external"], "finetune.method": "external",
                                       "selection.external_dir": "/nonexistent/external"},
                 ("33e3f6be88p4", "8fb4a8bdc3p4", "cb9c10cae6p4", "5d3826ef3ep4")),
}

SCRIPT = """
import json, sys
from lib.core import config, stages
steps = sorted(m for m in sys.modules if m.startswith(("lib.data", "lib.tuningset", "lib.generate", "lib.evaluate")))
assert not steps, f"importing lib.core imported steps: {steps}"
cases = json.loads(sys.argv[1])
out = {"smoke": {s: stages.key(config.load("params/smoke.yaml"), s) for s in cases["smoke"]}}
for name, (path, over, stage_names) in cases["others"].items():
    cfg = config.load(path, over)
    out[name] = [stages.key(cfg, s) for s in stage_names]
print(json.dumps(out))
"""


def test_stage_keys_unchanged_and_computed_by_core_alone():
    cases = {"smoke": list(SMOKE), "others": {n: (p, o, STAGES) for n, (p, o, _) in OTHERS.items()}}
    run = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cases)], cwd=paths.ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["smoke"] == SMOKE
    assert {n: tuple(v) for n, v in got.items() if n != "smoke"} == {n: keys for n, (_, _, keys) in OTHERS.items()}
