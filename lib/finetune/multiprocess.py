"""Stage 03 on one process or several: notebook 03's entry and the command line.

``train(cfg, runs_root)`` is what notebook 03 calls. With finetune.num_processes = 1 it trains in the
kernel; with more it hands off to ``accelerate launch --num_processes N -m lib.finetune.multiprocess`` (a subprocess
whose output streams into the cell) and returns the same stage folder. The command line,

    python -m lib.finetune.multiprocess PARAMS [--set key=value ...] [--runs-root DIR]
    accelerate launch --multi_gpu --num_processes 2 -m lib.finetune.multiprocess PARAMS ...   (add ACCELERATE_USE_CPU=1 on a CPU)

runs the same stage: every process computes the stage key from the same parameters, and rank 0 alone
records and seals the stage (lib.core.stages) and writes its files, atomically.

How N processes share the work (lib.finetune.trainer.Trainer), so that they take the decisions of one process:
every process walks the same global batches (batch_indices of seed and step); rank 0 scores the gate on
the whole batch and broadcasts its decision (gating.broadcast_decision); a trained batch is split across
the processes (rank r takes rows r, r + N, ...) with its noise and timesteps drawn for the whole batch and
sliced, and each shard's loss weighted so that DDP's gradient average is the whole batch's gradient. The
processes end with identical weights, equal to one process's up to float rounding (the all-reduce sums in
another order), so finetune.num_processes is no part of the stage key, like finetune.tensorboard.
"""
from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from ..core import config, overrides, paths, stages
from ..data.nih import DataError
from . import dreambooth
from .processes import launched, state

STAGE = "03_dreambooth"


class LaunchFailed(RuntimeError):
    """The processes accelerate launched stopped with an error; the message ends with their last lines."""


# ------------------------------------------------------------------------------------- the stage
def train(cfg: config.Config, runs_root=None, progress: bool = True, rank_report=None) -> Path:
    """Stage 03's folder for these parameters, trained (or reused when finished) as notebook 03 runs it.

    One process with finetune.num_processes > 1 hands off to ``accelerate launch``; under a launcher every
    process trains its share; otherwise it trains here."""
    root = paths.runs_root(runs_root)
    n = cfg.finetune.num_processes
    if n == 1 or launched():
        return run_stage(cfg, root, progress, rank_report)
    out = stages.stage_dir(cfg, STAGE, root)
    if (out / "DONE.json").exists():          # checked and reused, as in one process
        return stages.run_stage(cfg, STAGE, dreambooth.run, root)
    launch(cfg, root, n, rank_report)
    if not (out / "DONE.json").exists():
        raise LaunchFailed(f"the {n} training processes ended without sealing {out} (no DONE.json); see their "
                           "output above.")
    return out


def run_stage(cfg: config.Config, root: Path, progress: bool = True, rank_report=None) -> Path:
    """lib.core.stages.run_stage for stage 03 on every process: rank 0 records the inputs, trains its share and
    seals the stage; the others train their shares once rank 0 has recorded the inputs."""
    st = state()

    def synced(cfg_, out, runs_root, **kw):
        st.wait_for_everyone()                # INPUTS.json is written before any process touches the folder
        return dreambooth.run(cfg_, out, runs_root, **kw)

    kw = {"progress": progress and st.is_main_process, "rank_report": rank_report}
    if st.is_main_process:
        return stages.run_stage(cfg, STAGE, synced, root, **kw)
    out = stages.stage_dir(cfg, STAGE, root)
    if not (out / "DONE.json").exists():      # rank 0 cannot seal it before the barrier in synced
        synced(cfg, out, root, **kw)
    return out


# ------------------------------------------------------------------------------------------ launch
def free_port() -> int:
    """A free TCP port for the processes' rendezvous, so two launches at once (sweep workers) never meet."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(n: int, params_file, runs_root, rank_report=None) -> list[str]:
    """``accelerate launch`` of the CLI on n processes. --multi_gpu selects accelerate's torchrun launcher,
    which also starts CPU processes (with ACCELERATE_USE_CPU=1); --cpu would start a single one."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "lib.finetune.multiprocess", str(params_file),
           "--runs-root", str(runs_root)]
    return cmd + (["--rank-report", str(rank_report)] if rank_report is not None else [])


def on_cpu() -> bool:
    """Whether launched processes train on the CPU: no CUDA here, or ACCELERATE_USE_CPU=1 asks for it."""
    import torch
    from accelerate.utils import parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


def launch_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(paths.ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    if on_cpu():
        env["ACCELERATE_USE_CPU"] = "1"
    return env


def launch(cfg: config.Config, runs_root, n: int, rank_report=None) -> None:
    """Train stage 03 on n processes: the resolved parameters go to the CLI as one YAML file, so each process
    loads exactly the configuration (and computes the stage key) of the caller."""
    import torch

    if not on_cpu() and n > torch.cuda.device_count():
        raise config.ParamError(f"finetune.num_processes = {n} but this machine shows {torch.cuda.device_count()} "
                                "GPU(s): use at most one process per GPU (or ACCELERATE_USE_CPU=1 for CPU processes).")
    with tempfile.TemporaryDirectory(prefix="stage03-") as tmp:
        params = Path(tmp) / "params.yaml"
        params.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=True))
        cmd = launch_command(n, params, runs_root, rank_report)
        print(f"stage 03 on {n} processes: accelerate launch ... -m lib.finetune.multiprocess", flush=True)
        _stream(cmd, launch_env())


def _stream(cmd: list[str], env: dict) -> None:
    """Run cmd, its output echoed as it comes (into the notebook cell and the run's log); a failure raises
    with the last lines. Interrupting the caller stops the processes."""
    proc = subprocess.Popen(cmd, cwd=paths.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True)
    tail: collections.deque = collections.deque(maxlen=15)
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail.append(line)
        rc = proc.wait()
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    if rc != 0:
        raise LaunchFailed(f"accelerate launch exited with status {rc}. Its last lines:\n{''.join(tail)}")


# --------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.finetune.multiprocess",
                                 description="Stage 03 (DreamBooth with active gating) as notebook 03 runs it, "
                                             "on this process or on each process accelerate launch starts.")
    ap.add_argument("params", help="parameter file, e.g. params/demo.yaml")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted-key override (repeatable)")
    ap.add_argument("--runs-root", default=None, help="default: $SUITE_RUNS_ROOT or runs/")
    ap.add_argument("--rank-report", default=None, metavar="DIR",
                    help="every rank writes its gate decisions and weight hash here (tests, debugging)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        cfg = config.load(args.params, overrides.parse_sets(args.set))
        out = train(cfg, args.runs_root, progress=not args.no_progress, rank_report=args.rank_report)
    except (config.ParamError, FileNotFoundError, DataError, LaunchFailed, stages.StageChanged) as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    if not launched() or state().is_main_process:
        print(f"stage 03: {stages.paths_rel(out)}")
    return 0


if __name__ == "__main__":   # python -m lib.finetune.multiprocess PARAMS ... (alone or under accelerate launch)
    sys.exit(main())
