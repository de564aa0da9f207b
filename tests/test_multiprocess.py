"""Stage 03 on two CPU processes (gloo, through accelerate launch) against one process, gating on.

Same data order means the same global batches: each batch of 3 is split 2 + 1 between the ranks (and a
last batch of 2 as 1 + 1), rank 0 scores the gate on the whole batch and broadcasts the decision, and the
shard losses are weighted so the averaged gradient is the whole batch's. So the two-process run must take
the one-process run's gate decisions and end with its weights up to float rounding, both ranks bit-identical.
"""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from dreambooth_fixtures import fake_stage02, tiny_cfg
from lib.core import config, paths, stages
from lib.finetune import diffusion_model, multiprocess

GATED = {"finetune.steps": 5, "finetune.batch_size": 3, "finetune.validation_every": 100,
         "finetune.checkpoint_every": 100, "gating.mode": "quantile", "gating.warmup_batches": 2,
         "gating.skip_fraction": 0.5, "gating.every_k": 1}


def _unet(path):
    return diffusion_model.load_pipeline(str(path), device="cpu").unet.state_dict()


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")


def test_two_processes_take_the_one_process_decisions_with_identical_weights(tmp_path, cpu_only):
    one_root, two_root, reports = tmp_path / "one", tmp_path / "two", tmp_path / "ranks"
    cfg1 = tiny_cfg(tmp_path, **GATED)
    cfg2 = tiny_cfg(tmp_path, **GATED, **{"finetune.num_processes": 2})
    for cfg, root in ((cfg1, one_root), (cfg2, two_root)):
        fake_stage02(cfg, root, tmp_path)
    # The one-process reference through the CLI on the CPU (this process may hold a GPU), beside the launch.
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg1.to_dict()))
    ref = subprocess.Popen([sys.executable, "-m", "lib.finetune.multiprocess", str(params), "--runs-root", str(one_root),
                            "--no-progress"], cwd=paths.ROOT, env=multiprocess.launch_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        two = multiprocess.train(cfg2, two_root, rank_report=reports)   # hands off to accelerate launch
        log = ref.communicate(timeout=300)[0]
    finally:
        if ref.poll() is None:
            ref.kill()
    assert ref.returncode == 0, log
    one = stages.stage_dir(cfg1, "03_dreambooth", one_root)
    assert two.name == one.name and stages.is_done(two) and stages.is_done(one)   # one key, sealed by rank 0

    r0, r1 = (json.loads((reports / f"rank{r}_model.json").read_text()) for r in (0, 1))
    assert r0["num_processes"] == r1["num_processes"] == 2
    assert r0["decisions"] == r1["decisions"]                       # the broadcast decision, every step
    assert r0["loss_steps"] == r1["loss_steps"]
    assert r0["weights_sha256"] == r1["weights_sha256"]             # bit-identical weights on both ranks

    g1, g2 = (pd.read_csv(d / "gating_log.csv") for d in (one, two))
    assert g1["skipped"].any() and not g1["skipped"].all()          # the gate both skipped and trained
    assert g2["skipped"].tolist() == g1["skipped"].tolist() == [d["skipped"] for d in r0["decisions"]]
    np.testing.assert_allclose(g2["score"], g1["score"], rtol=0, atol=1e-5)
    l1, l2 = (pd.read_csv(d / "loss_log.csv") for d in (one, two))
    assert l2["step"].tolist() == l1["step"].tolist() == r0["loss_steps"]
    np.testing.assert_allclose(l2["loss"], l1["loss"], rtol=1e-4)   # the whole batch's loss, not a shard's

    w1, w2 = _unet(one / "model"), _unet(two / "model")
    base = _unet(json.loads((one / "train_summary.json").read_text())["base"])
    moved = max(float((w1[k] - base[k]).abs().max()) for k in w1)
    off = max(float((w2[k] - w1[k]).abs().max()) for k in w1)
    # it trained, and as one process did: the two ranks' all-reduce sums in another order than one process,
    # which left 1.3% of the movement here (5.3e-05 of 4.0e-03 on this machine); a wrong gradient moves far more
    assert moved > 1e-4 and off < moved / 20
    assert [json.loads((d / "train_summary.json").read_text())["num_processes"] for d in (one, two)] == [1, 2]

    # rank 0 alone wrote the stage: the same artefacts as one process, nothing extra
    def listing(d):
        return sorted(str(p.relative_to(d)) for p in d.rglob("*") if "tb" not in p.relative_to(d).parts[:1])
    assert listing(two) == listing(one)


def test_num_processes_is_validated_and_keeps_the_stage_key(tmp_path):
    cfg = tiny_cfg(tmp_path)
    assert stages.key(cfg, "03_dreambooth") == stages.key(tiny_cfg(tmp_path, **{"finetune.num_processes": 2}),
                                                          "03_dreambooth")
    with pytest.raises(config.ParamError, match="num_processes = 0 must be at least 1"):
        tiny_cfg(tmp_path, **{"finetune.num_processes": 0})
    with pytest.raises(config.ParamError, match="exceeds finetune.batch_size"):
        tiny_cfg(tmp_path, **{"finetune.num_processes": 8, "finetune.batch_size": 4})


def test_launch_command_starts_the_cli_on_n_processes_on_a_free_port(tmp_path):
    cmd = multiprocess.launch_command(3, tmp_path / "p.yaml", tmp_path / "runs")
    at = cmd.index("--num_processes")
    assert cmd[at + 1] == "3" and "--multi_gpu" in cmd
    assert cmd[cmd.index("-m", at):][:3] == ["-m", "lib.finetune.multiprocess", str(tmp_path / "p.yaml")]
    assert 1024 < int(cmd[cmd.index("--main_process_port") + 1]) < 65536
    assert torch.cuda.is_available() or multiprocess.launch_env()["ACCELERATE_USE_CPU"] == "1"


def test_a_finished_stage_is_reused_without_launching(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, **{"finetune.num_processes": 2})
    out = stages.stage_dir(cfg, "03_dreambooth", tmp_path / "runs")
    out.mkdir(parents=True)
    (out / "DONE.json").write_text(json.dumps({"params": cfg.to_dict()}))
    monkeypatch.setattr(multiprocess, "launch", lambda *a, **k: pytest.fail("launched a finished stage"))
    assert multiprocess.train(cfg, tmp_path / "runs") == out


def test_a_failed_launch_raises_with_the_processes_last_lines():
    with pytest.raises(multiprocess.LaunchFailed, match=r"(?s)status 3.*rank 1 ran out of patience"):
        multiprocess._stream([sys.executable, "-c", "print('rank 1 ran out of patience'); raise SystemExit(3)"],
                             multiprocess.launch_env())


def test_the_command_line_is_the_launcher_module_and_reads_set_without_the_runner(tmp_path):
    # `python -m lib.finetune.multiprocess` is the CLI accelerate launches (the trainer and the stage module
    # import nothing of it); it reads --set with lib.core.overrides, so no lib.runs module is loaded.
    code = ("import sys, runpy; sys.argv = ['multiprocess', 'params/smoke.yaml', '--set', 'gating.threshold'];\n"
            "try:\n    runpy.run_module('lib.finetune.multiprocess', run_name='__main__')\n"
            "except SystemExit as e:\n    print('exit', e.code, sorted(m for m in sys.modules if m.startswith('lib.runs')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=paths.ROOT, capture_output=True, text=True, timeout=120)
    assert "exit 1 []" in out.stdout, out.stdout + out.stderr
    assert "--set 'gating.threshold': write it as dotted.key=value" in out.stderr
