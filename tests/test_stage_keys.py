"""Stage keys (lib.core.stages) as they were before the steps registered their fingerprints (issue 21): the same
hash for every stage, and computed in full by lib.core alone, in a fresh interpreter that imported no step.

The keys below were recorded on the code before lib.core.fingerprints existed. A key that changes makes every
finished stage look new; if params/smoke.yaml, params/shapes.yaml or a config default changed on purpose,
record the new keys here. Changed on purpose since: lib.core.stages.SECTION_VERSIONS classifier 2 (issue 23: every
classifier's validation split patient-disjoint, classifier.repeats 1 included) re-keys exactly the stages that read the
classifier section (05, 06, 05_real_baseline, 07_*, 08_*; with the external selection also 02-04, whose
pseudo-labeller trains in stage 02); 01-04 of the other configurations keep the keys recorded before."""
import json
import subprocess
import sys

from lib.core import paths

SMOKE = {"01_data_curation": "33e3f6be88p4", "02_clustering": "49168eacbdp4", "03_dreambooth": "0579f69809p4",
         "04_generation": "2b8ea8fb8cp4", "05_classifier": "ecdf4a5b29p4", "06_fter_analysis": "ecdf4a5b29p4",
         "05_real_baseline": "ab113acd2dp4", "07_brackets": "5aaebcacc2p4", "07_ratios": "69c02b7fcap4",
         "07_oversampling": "fb84bcba3ap4", "08_transfer": "db350d7babp4", "08_transfer_real": "44a5800a97p4"}
STAGES = ("01_data_curation", "02_clustering", "04_generation", "05_classifier")
OTHERS = {   # name: (params file, overrides, keys of STAGES)
    "shapes": ("params/shapes.yaml", {}, ("dfbc741bf8s4", "9395fb00cas4", "68b408cb80s4", "9a04474784s4")),
    "reference": ("params/smoke.yaml", {"generation.kind": "real-holdout", "fidelity.extractor": "pixel"},
                  ("33e3f6be88p4", "49168eacbdp4", "b9e20042bfp4", "67bb05bb4ep4")),
    "external": ("params/smoke.yaml", {"selection.methods": ["external"], "finetune.method": "external",
                                       "selection.external_dir": "/nonexistent/external"},
                 ("33e3f6be88p4", "79bdfb8c26p4", "0456724046p4", "c696ffeecdp4")),
    # Issue 23 changed these kinds' output on purpose (lib.generate.references.VERSIONS): the redrawn kinds' images
    # from stage 04 on (stage 04 before: findings-erased 7fb319c5dcp4, exaggerated 695106d530p4), collapsed's
    # split from stage 05 on (its stage 04 key is unchanged).
    "findings-erased": ("params/smoke.yaml", {"generation.kind": "findings-erased", "fidelity.extractor": "pixel"},
                        ("33e3f6be88p4", "49168eacbdp4", "3c016bf761p4", "0e285a6906p4")),
    "exaggerated": ("params/smoke.yaml", {"generation.kind": "exaggerated", "fidelity.extractor": "pixel"},
                    ("33e3f6be88p4", "49168eacbdp4", "420dd491d7p4", "236ea73af3p4")),
    "collapsed": ("params/smoke.yaml", {"generation.kind": "collapsed", "fidelity.extractor": "pixel"},
                  ("33e3f6be88p4", "49168eacbdp4", "781d4c2201p4", "13ec7abefap4")),
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
