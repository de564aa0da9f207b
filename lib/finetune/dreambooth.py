"""Stage 03: DreamBooth fine-tuning with optional active gating (thesis section 4.8, Algorithm 1).

One accelerate loop serves every variant: full UNet or LoRA (peft), optional text-encoder training,
prior preservation with class images drawn by the base model, one joint model or one model per label,
and the two controls (random-skip, no-fine-tune). Every random draw of a step (batch order, noise,
timesteps, gating samples) is seeded by (seed, step), and a checkpoint holds the weights, optimizer,
LR schedule, gating state and logs, so a run killed and resumed ends identical to an uninterrupted one.

Artefacts in the stage folder: ``model/`` (or ``model_<label>/``) pipeline folders, ``gating_log.csv``,
``loss_log.csv``, ``validation/step_XXXXXX.{png,npy,json}``, ``validation_log.csv`` (the KID of each
validation save against the tuning images, on fidelity.trace features), ``train_summary.json``,
``checkpoints/``. The three logs are rewritten at every validation and checkpoint while training runs.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..core import atomic, stages
from ..data import images
from . import tracking
from ..core.config import Config, ParamError
from ..data.domains import classes as classes_of
from ..data.nih import DataError
from ..core.progress import tqdm
from .prompts import prompt_for, slug

log = logging.getLogger(__name__)
GATING_COLUMNS = ["model", "step", "score", "threshold", "skipped", "generated", "seconds"]
LOSS_COLUMNS = ["model", "step", "loss", "loss_prior", "lr", "train_seconds"]


class Interrupted(RuntimeError):
    """Training stopped on purpose (``stop_after``) after a checkpoint; calling run again resumes."""


class CheckpointMismatch(ParamError):
    """A checkpoint written for other parameters."""


# ------------------------------------------------------------------------------------------ inputs
def tuning_set_path(cfg: Config, runs_root="runs") -> Path:
    return stages.require(cfg, "02_clustering", runs_root) / f"tuning_{cfg.finetune.method}.csv"


def tuning_set(cfg: Config, runs_root="runs") -> pd.DataFrame:
    """Stage 02's tuning set for finetune.method; a clear error when it is missing or empty."""
    p = tuning_set_path(cfg, runs_root)
    if not p.exists():
        have = sorted(f.stem.removeprefix("tuning_") for f in p.parent.glob("tuning_*.csv"))
        raise DataError(f"no tuning set for finetune.method = {cfg.finetune.method!r} in {p.parent}; "
                        f"stage 02 wrote: {', '.join(have) or 'none'}. Set finetune.method to one of these "
                        "or add it to selection.methods and rerun notebook 02.")
    df = pd.read_csv(p)
    if len(df) == 0:
        raise DataError(f"the tuning set {p} is empty: nothing to fine-tune on. Raise selection.per_label "
                        "or pools.tuning and rerun notebooks 01-02.")
    labels = classes_of(cfg)
    unknown = sorted(set(df["label"].astype(str)) - set(labels))
    if unknown:
        raise DataError(f"tuning set {p} has labels {unknown}; expected {labels}.")
    return df.reset_index(drop=True)


def skip_rate_of(stage_dir) -> float:
    """The skip rate a finished gated stage-03 run reached (for the random-skip control)."""
    f = Path(stage_dir) / "train_summary.json"
    if not f.exists():
        raise FileNotFoundError(f"{f} not found: the gated run has not finished stage 03. Run it first, or "
                                "set gating.skip_rate by hand.")
    rate = json.loads(f.read_text()).get("skip_rate")
    if rate is None:
        raise ValueError(f"{f} records no skip rate (a no-fine-tune run?); set gating.skip_rate by hand.")
    return float(rate)


def model_dir_names(cfg: Config) -> dict[str, str]:
    """Label -> model folder name inside the stage folder."""
    if cfg.finetune.model_layout == "joint":
        return {label: "model" for label in classes_of(cfg)}
    return {label: f"model_{slug(label)}" for label in classes_of(cfg)}


def model_path(stage_dir, cfg: Config, label: str) -> str:
    """The pipeline folder that draws ``label`` (the base model for the no-fine-tune control)."""
    d = Path(stage_dir)
    summary = json.loads((d / "train_summary.json").read_text())
    if summary.get("control") == "no-fine-tune":
        return summary["base"]
    return str(d / model_dir_names(cfg)[label])


def _precision(choice: str) -> str:
    """accelerate's mixed_precision for finetune.mixed_precision on this machine.

    On the CPU "auto" trains in fp32 (bf16 is slow on CPUs without bf16 units) and fp16 is not offered
    (no CPU autocast for it), but an explicit "bf16" is honoured: accelerate autocasts on the CPU too,
    which is how the thesis path is rehearsed there (benchmarks/rehearse_thesis.py)."""
    if not torch.cuda.is_available():
        if choice == "fp16":
            log.warning("finetune.mixed_precision = fp16 needs a GPU; training in fp32 on the CPU (bf16 works there).")
        return "bf16" if choice == "bf16" else "no"
    if choice == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return choice


def _step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    return torch.Generator("cpu").manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2 ** 63))


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The rows of batch ``step``: epochs are seeded permutations, so position-in-epoch needs no state."""
    per_epoch = max(1, math.ceil(n / batch_size))
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[pos * batch_size: (pos + 1) * batch_size]


# ----------------------------------------------------------------------------------------- trainer
class Trainer:
    """One fine-tuning run (one model) on the rows of ``df``."""

    def __init__(self, cfg: Config, out_dir: Path, df: pd.DataFrame, name: str = "model",
                 base: str | None = None, progress: bool = True, embed=None, data_vectors=None):
        from accelerate import Accelerator
        from diffusers import DDPMScheduler
        from diffusers.models.attention_processor import AttnProcessor2_0
        from diffusers.optimization import get_scheduler

        from . import diffusion_model, gating

        self.cfg, self.ft, self.gc = cfg, cfg.finetune, cfg.gating
        gating.check(self.gc)
        self.out, self.df, self.name, self.progress = Path(out_dir), df.reset_index(drop=True), name, progress
        self.base = base or diffusion_model.base_for(cfg.model, seed=cfg.seed, progress=progress)
        self.acc = Accelerator(mixed_precision=_precision(self.ft.mixed_precision),
                               **tracking.accelerator_kwargs(cfg, self.out))
        dev = self.acc.device
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.acc.mixed_precision, torch.float32)
        torch.manual_seed(cfg.seed)   # LoRA initialisation is part of the run's seed
        # Through load_pipeline: an id that cannot be loaded (offline, misspelt) says how to give a local folder.
        pipe = diffusion_model.load_pipeline(self.base, cfg.model.revision if self.base == cfg.model.base else None,
                                             device="cpu", dtype=torch.float32)
        self.tok, self.vae, self.text, self.unet = pipe.tokenizer, pipe.vae, pipe.text_encoder, pipe.unet
        self.base_sched_config = self._schedule(pipe.scheduler.config)
        self.noise_sched = DDPMScheduler.from_config(self.base_sched_config)
        # Frozen parts in the compute dtype (memory); trained ones stay float32 (autocast does the rest).
        self.vae.requires_grad_(False)
        self.text.requires_grad_(self.ft.train_text_encoder)
        for mod, dt in ((self.vae, self.weight_dtype),
                        (self.text, torch.float32 if self.ft.train_text_encoder else self.weight_dtype)):
            mod.to(dev) if dt == torch.float32 else mod.to(dev, dt)
        self.unet.set_attn_processor(AttnProcessor2_0())   # PyTorch SDPA attention
        if self.ft.lora:
            from peft import LoraConfig

            self.unet.requires_grad_(False)
            self.unet.add_adapter(LoraConfig(r=self.ft.lora_rank, lora_alpha=self.ft.lora_rank, init_lora_weights="gaussian",
                                             target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        if self.ft.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if self.ft.train_text_encoder:
                self.text.gradient_checkpointing_enable()
        self.unet.to(dev)
        params = [p for p in self.unet.parameters() if p.requires_grad]
        if self.ft.train_text_encoder:
            params += [p for p in self.text.parameters() if p.requires_grad]
        self.params = params
        opt = torch.optim.AdamW(params, lr=self.ft.learning_rate, weight_decay=1e-2)
        self.lr_sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=self.ft.lr_warmup_steps,
                                      num_training_steps=self.ft.steps)
        if self.ft.train_text_encoder:
            self.unet, self.text, self.opt = self.acc.prepare(self.unet, self.text, opt)
        else:
            self.unet, self.opt = self.acc.prepare(self.unet, opt)
        self.labels = self.df["label"].tolist()
        self.prompts = [prompt_for(cfg, lab) for lab in self.labels]
        self.latents = self._encode_images()
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self.class_latents = self._class_latents() if self.ft.prior_preservation else None
        self.embed, self.data_vectors = embed, data_vectors
        self.gate = None
        if self.gc.enabled and self.ft.control == "none":
            self.gate = gating.Gate(self.gc, embed, cfg.model.resolution, cfg.seed)
        self.skipset = set()
        if self.ft.control == "random-skip":
            if self.gc.skip_rate is None:
                raise ParamError("finetune.control = random-skip needs gating.skip_rate (the gated run's rate, "
                                 "see dreambooth.skip_rate_of); the runner fills it in, or set it by hand.")
            self.skipset = gating.random_skips(self.gc.skip_rate, self.ft.steps, cfg.seed)
        self.step, self.gating_rows, self.loss_rows = 0, [], []
        self.earlier: tuple[list, list] = ([], [])   # gating and loss rows of the models trained before this one
        self.ckpt_root = self.out / "checkpoints" / name
        self._trace_ref = None      # (extractor, label -> tuning features) of the validation trace
        self.board = tracking.Board(self.acc, name, 0, False)   # fit() opens the live one

    def _schedule(self, config) -> dict:
        """The noise schedule fine-tuning trains with, which the saved model then samples with."""
        config = dict(config)
        if self.ft.zero_terminal_snr:
            if config.get("prediction_type") != "v_prediction":
                raise ParamError(f"finetune.zero_terminal_snr needs a v-prediction base model; {self.base} predicts "
                                 f"{config.get('prediction_type')!r}. Turn it off, or use a v-prediction base "
                                 "(Stable Diffusion 2.x, or model.base: tiny).")
            config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
        return config

    # ------------------------------------------------------------------------------- data
    def _pixels(self, arr: np.ndarray) -> torch.Tensor:
        """N x H x W grayscale in [0, 1] -> N x 3 x H x W in [-1, 1] (grayscale replicated for the RGB VAE)."""
        return torch.from_numpy(arr)[:, None].repeat(1, 3, 1, 1) * 2 - 1

    @torch.no_grad()
    def _encode_images(self) -> torch.Tensor:
        """Latents of every tuning image, once (the VAE is frozen): the posterior mean, scaled as in SD."""
        res = self.cfg.model.resolution
        out = []
        for s in range(0, len(self.df), 32):
            x = self._pixels(images.load_stack(self.df["path"].iloc[s:s + 32].tolist(), res))
            z = self.vae.encode(x.to(self.acc.device, self.weight_dtype)).latent_dist.mean
            out.append(self._scale(z).float())
        return torch.cat(out)

    def _scale(self, z):
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (z - shift) * self.vae.config.scaling_factor

    def _encode_prompts(self, prompts: list[str], grad: bool = False) -> torch.Tensor:
        ids = self.tok(prompts, padding="max_length", max_length=self.tok.model_max_length, truncation=True,
                       return_tensors="pt").input_ids.to(self.acc.device)
        if grad:
            return self.text(ids)[0]
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            with torch.no_grad():
                ids_m = self.tok(missing, padding="max_length", max_length=self.tok.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(self.acc.device)
                for p, h in zip(missing, self.text(ids_m)[0]):
                    self._prompt_cache[p] = h
        return torch.stack([self._prompt_cache[p] for p in prompts])

    def _class_latents(self) -> torch.Tensor:
        """Prior-preservation class images, drawn once by the base model (cached in the stage folder)."""
        f = self.out / f"class_latents_{self.name}.pt"
        if f.exists():
            return torch.load(f).to(self.acc.device)
        pipe = self.live_pipeline()
        lat = []
        n, bs = self.ft.num_class_images, 16
        with self._eval():
            for s in range(0, n, bs):
                g = torch.Generator("cpu").manual_seed(self.cfg.seed * 7 + s)
                lat.append(pipe([self.ft.class_prompt] * min(bs, n - s), num_inference_steps=self.ft.validation_steps,
                                guidance_scale=self.ft.validation_guidance, generator=g, output_type="latent",
                                height=self.cfg.model.resolution, width=self.cfg.model.resolution).images.float())
        lat = torch.cat(lat)
        if self.acc.is_main_process:
            atomic.save_torch(f, lat.cpu())
        return lat

    # ----------------------------------------------------------------------------- models
    def live_pipeline(self, scheduler=None):
        """A pipeline around the live (training) modules: no copy and no dtype change."""
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        sched = scheduler or DPMSolverMultistepScheduler.from_config(self.base_sched_config)
        pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.acc.unwrap_model(self.text), tokenizer=self.tok,
                                       unet=self.acc.unwrap_model(self.unet), scheduler=sched, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @contextlib.contextmanager
    def _eval(self):
        """Sampling mode: eval(), no_grad and the run's autocast; training mode restored afterwards."""
        mods = [self.unet] + ([self.text] if self.ft.train_text_encoder else [])
        for m in mods:
            m.eval()
        try:
            with torch.no_grad(), self.acc.autocast():
                yield
        finally:
            for m in mods:
                m.train()

    # ------------------------------------------------------------------------------- steps
    def _shard(self, n: int) -> tuple[np.ndarray, float]:
        """This process's rows of a global batch of n (rows r, r + N, ...) and the weight of its loss.

        DDP averages the processes' gradients; weighting each shard's mean loss by (its share of the batch)
        x N makes that average the gradient of the whole batch's mean, as one process computes it, whatever
        the shard sizes. A process left without rows (a short last batch) trains one row at weight 0, so
        every process still joins the gradient all-reduce."""
        world = self.acc.num_processes
        mine = np.arange(self.acc.process_index, n, world)
        if len(mine) == 0:
            return np.arange(1), 0.0
        return mine, (len(mine) / n * world if world > 1 else 1.0)

    def train_step(self, idx: np.ndarray, step: int) -> tuple[float, float]:
        g = _step_generator(self.cfg.seed, step)
        dev = self.acc.device
        # Every random draw is made for the whole batch and then sliced to this process's rows, so N processes
        # train on exactly the noise, timesteps and class images one process would.
        n = len(idx)
        z = self.latents[torch.as_tensor(idx)].to(dev)
        prompts = [self.prompts[i] for i in idx]
        if self.class_latents is not None:
            ci = torch.randint(len(self.class_latents), (n,), generator=g)
            z = torch.cat([z, self.class_latents[ci.to(self.class_latents.device)].to(dev)])
            prompts = prompts + [self.ft.class_prompt] * n
        noise = torch.randn(z.shape, generator=g)
        if self.ft.noise_offset:   # a constant per image and channel: shifts the mean the model can learn
            noise = noise + self.ft.noise_offset * torch.randn(z.shape[:2] + (1, 1), generator=g)
        t = torch.randint(0, self.noise_sched.config.num_train_timesteps, (len(z),), generator=g)
        mine, weight = self._shard(n)
        rows = np.concatenate([mine, mine + n]) if self.class_latents is not None else mine
        sel = torch.as_tensor(rows)
        z, noise, t = z[sel.to(z.device)], noise[sel].to(dev), t[sel].to(dev)
        prompts, n_inst = [prompts[i] for i in rows], len(mine)
        noisy = self.noise_sched.add_noise(z, noise, t)
        target = noise if self.noise_sched.config.prediction_type == "epsilon" else self.noise_sched.get_velocity(z, noise, t)
        with self.acc.autocast():
            enc = self._encode_prompts(prompts, grad=self.ft.train_text_encoder)
            pred = self.unet(noisy, t, enc.to(noisy.dtype) if not self.ft.train_text_encoder else enc).sample
        err = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        loss_inst, loss_prior = err[:n_inst].mean(), err[n_inst:].mean() if len(err) > n_inst else err.new_zeros(())
        loss = loss_inst + self.ft.prior_loss_weight * loss_prior
        self.acc.backward(loss * weight if weight != 1.0 else loss)
        if self.acc.sync_gradients:
            self.acc.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.lr_sched.step()
        self.opt.zero_grad(set_to_none=True)
        if self.acc.num_processes == 1:
            return float(loss_inst.detach()), float(loss_prior.detach())
        # the whole batch's mean losses, as one process logs them: sum the shards' sums
        share = n_inst if weight else 0
        sums = self.acc.reduce(torch.stack([loss_inst.detach(), loss_prior.detach()]).float() * share, "sum")
        return float(sums[0]) / n, float(sums[1]) / n

    def gate_step(self, idx: np.ndarray, step: int) -> dict:
        from . import gating

        if self.gate is not None:
            row = None
            if self.acc.is_main_process:
                with self._eval():
                    row = self.gate(step, self.live_pipeline(self.gate._sched), [self.prompts[i] for i in idx],
                                    self.data_vectors[idx])
            skip, s = gating.broadcast_decision(self.acc, row["skipped"] if row else False, row["score"] if row else 0.0)
            row = row or {"step": step, "score": s, "threshold": float("nan"), "generated": False, "seconds": 0.0}
            row["skipped"] = skip
            return row
        skip = step in self.skipset
        return {"step": step, "score": float("nan"), "threshold": float("nan"), "skipped": skip,
                "generated": False, "seconds": 0.0}

    # -------------------------------------------------------------------------- validation
    def validate(self, step: int) -> Path | None:
        """validation_images per label from fixed seeds, saved as a grid (rows = labels) and an array."""
        if not self.acc.is_main_process or self.ft.validation_images < 1:
            return None
        target = self.out / "validation" / (f"step_{step:06d}" + ("" if self.name == "model" else f"_{self.name}"))
        if target.with_suffix(".npy").exists():   # a resumed run: drawn before the kill, shown again (purged)
            meta = json.loads(target.with_suffix(".json").read_text()) if target.with_suffix(".json").exists() else {}
            self._board_validation(np.load(target.with_suffix(".npy")), meta.get("labels", []), meta.get("trace"), step)
            return target
        pipe, rows = self.live_pipeline(), []
        order = classes_of(self.cfg)
        labels = sorted(set(self.labels), key=order.index)
        with self._eval():
            for label in labels:
                g = [torch.Generator("cpu").manual_seed(1000 + i) for i in range(self.ft.validation_images)]
                im = pipe([prompt_for(self.cfg, label)] * self.ft.validation_images, generator=g,
                          num_inference_steps=self.ft.validation_steps, guidance_scale=self.ft.validation_guidance,
                          height=self.cfg.model.resolution, width=self.cfg.model.resolution, output_type="pt").images
                rows.append((im.float().mean(1).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
        arr = np.stack(rows)   # labels x n x H x W
        from PIL import Image

        from ..core.montage import grid

        atomic.save_image(target.with_suffix(".png"),
                          Image.fromarray((grid(arr.reshape(-1, *arr.shape[2:]) / 255.0, arr.shape[1]) * 255).astype(np.uint8)))
        atomic.write_npy(target.with_suffix(".npy"), arr)
        meta = {"step": step, "labels": labels, "model": self.name}
        trace = self.trace(arr, labels)
        atomic.write_json(target.with_suffix(".json"), {**meta, "trace": trace} if trace else meta)
        self._board_validation(arr, labels, trace, step)
        return target

    def _board_validation(self, arr: np.ndarray, labels: list[str], trace: dict | None, step: int) -> None:
        """One validation save on the live board: its images per label and its KID trace."""
        for stack, label in zip(arr, labels):
            self.board.images(f"validation/{slug(label)}", stack, step)
        self.board.scalars({f"validation/kid_{slug(g)}": v["kid"] for g, v in (trace or {}).get("groups", {}).items()},
                           step)

    def trace(self, arr: np.ndarray, labels: list[str]) -> dict | None:
        """KID of one validation save against the tuning images (lib.evaluate.fidelity.validation_trace), on the
        cheap features of fidelity.trace (none: no trace); the tuning images' features are cached."""
        from ..evaluate import features, fidelity

        kind = self.cfg.fidelity.trace
        if kind == "none":
            return None
        if self._trace_ref is None:
            ex = features.extractor(self.cfg, kind)
            ref = self.df.drop_duplicates("path").reset_index(drop=True)   # a quota may repeat images
            vecs = features.extract(ref, self.cfg, ex)
            self._trace_ref = ex, {lab: vecs[(ref["label"] == lab).to_numpy()] for lab in set(ref["label"])}
        ex, ref = self._trace_ref
        return fidelity.validation_trace(arr, labels, ref, ex)

    # -------------------------------------------------------------------------- checkpoints
    def _trainable_state(self) -> dict:
        out = {}
        for prefix, mod in (("unet.", self.unet), ("text.", self.text)):
            m = self.acc.unwrap_model(mod)
            names = {n for n, p in m.named_parameters() if p.requires_grad}
            out.update({prefix + k: v.detach().cpu().clone() for k, v in m.state_dict().items() if k in names})
        return out

    def train_key(self) -> str:
        return f"{stages.key(self.cfg, '03_dreambooth')}/{self.name}"

    def save_checkpoint(self) -> Path:
        target = self.ckpt_root / f"step_{self.step:06d}"
        if self.acc.is_main_process:
            state = {"key": self.train_key(), "step": self.step, "weights": self._trainable_state(),
                     "optimizer": self.opt.state_dict(), "lr": self.lr_sched.state_dict(),
                     "gate": self.gate.decider.state.to_dict() if self.gate else None,
                     "gen_vectors": None if self.gate is None or self.gate.gen_vectors is None else self.gate.gen_vectors,
                     "gating_rows": self.gating_rows, "loss_rows": self.loss_rows}
            atomic.save_torch(target.with_suffix(".pt"), state)
            kept = sorted(self.ckpt_root.glob("step_*.pt"))
            for old in kept[: max(0, len(kept) - self.ft.keep_checkpoints)]:
                old.unlink()
        self.acc.wait_for_everyone()
        return target.with_suffix(".pt")

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.ckpt_root.glob("step_*.pt"))
        return found[-1] if found else None

    def load_checkpoint(self, path: Path) -> None:
        from . import gating

        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("key") != self.train_key():
            raise CheckpointMismatch(
                f"checkpoint {path} was written for other parameters (run key {state.get('key')}, this run "
                f"{self.train_key()}). Resume only from a checkpoint of the same parameter set: delete it, or "
                "point resume_from at this run's checkpoints/ folder.")
        for prefix, mod in (("unet.", self.unet), ("text.", self.text)):
            part = {k[len(prefix):]: v for k, v in state["weights"].items() if k.startswith(prefix)}
            if part:
                missing = self.acc.unwrap_model(mod).load_state_dict(part, strict=False).unexpected_keys
                if missing:
                    raise CheckpointMismatch(f"checkpoint {path} holds weights this model lacks: {missing[:3]}")
        self.opt.load_state_dict(state["optimizer"])
        self.lr_sched.load_state_dict(state["lr"])
        if self.gate is not None and state["gate"] is not None:
            self.gate.decider.state = gating.GateState.from_dict(state["gate"])
            self.gate.gen_vectors = state["gen_vectors"]
        self.step, self.gating_rows, self.loss_rows = state["step"], state["gating_rows"], state["loss_rows"]

    # --------------------------------------------------------------------------------- loop
    def fit(self, resume: bool = True, resume_from=None, stop_after: int | None = None, oracle=None,
            dry_gate: bool = False) -> dict:
        """Train to finetune.steps batches (trained or skipped). For the benchmark: ``oracle(step, pipe,
        prompts, vectors)`` is scored at each batch with fresh gate samples (its time is logged apart), and
        ``dry_gate`` computes and logs every gate but trains on every batch (the gate's pure cost)."""
        ckpt = Path(resume_from) if resume_from else (self.latest_checkpoint() if resume else None)
        if ckpt is not None:
            if ckpt.is_dir():
                found = sorted(ckpt.glob("step_*.pt")) or sorted(ckpt.glob("*/step_*.pt"))
                ckpt = found[-1] if found else None
            if ckpt is not None:
                self.load_checkpoint(ckpt)
        self.board = tracking.Board(self.acc, self.name, self.step, self.ft.tensorboard)
        try:
            return self._loop(oracle, dry_gate, stop_after)
        finally:
            self.board.close()

    def _loop(self, oracle, dry_gate: bool, stop_after: int | None) -> dict:
        if self.step == 0:
            self.validate(0)
        elif self.step % self.ft.validation_every == 0:
            self.validate(self.step)   # saved before the checkpoint: back on the board, which the resume purged
        n, t0 = len(self.df), time.perf_counter()
        n_skipped = sum(bool(r["skipped"]) for r in self.gating_rows)
        self.unet.train()
        bar = tqdm(total=self.ft.steps, initial=self.step, desc=f"DreamBooth {self.name}", mininterval=2,
                   disable=not self.progress)
        while self.step < self.ft.steps:
            step = self.step
            idx = batch_indices(n, self.ft.batch_size, self.cfg.seed, step)
            row = self.gate_step(idx, step)
            if oracle is not None and self.gate is not None:   # every batch, fresh samples or not
                t_o = time.perf_counter()
                with self._eval():
                    row["oracle_score"] = oracle(step, self.live_pipeline(), [self.prompts[i] for i in idx],
                                                 self.data_vectors[idx])
                row["oracle_seconds"] = time.perf_counter() - t_o
                t0 += row["oracle_seconds"]          # the oracle is not part of the run's wall time
            self.gating_rows.append({"model": self.name, **row})
            n_skipped += bool(row["skipped"])
            live = {"gate/score": row["score"], "gate/threshold": row["threshold"], "gate/skipped": row["skipped"],
                    "gate/skip_rate": n_skipped / (step + 1)}
            if not row["skipped"] or dry_gate:
                t_s = time.perf_counter()
                loss, prior = self.train_step(idx, step)
                self.loss_rows.append({"model": self.name, "step": step, "loss": loss, "loss_prior": prior,
                                       "lr": self.lr_sched.get_last_lr()[0], "train_seconds": time.perf_counter() - t_s})
                live.update({"train/loss": loss, "train/lr": self.lr_sched.get_last_lr()[0]})
                if self.class_latents is not None:
                    live["train/loss_prior"] = prior
            self.board.scalars(live, step)
            self.step += 1
            bar.update(1)
            if self.step % self.ft.validation_every == 0 or self.step == self.ft.steps:
                self.validate(self.step)
            if self.step % self.ft.checkpoint_every == 0 and self.step < self.ft.steps:
                self.save_checkpoint()
            if self.step < self.ft.steps and (self.step % self.ft.validation_every == 0
                                              or self.step % self.ft.checkpoint_every == 0):
                self.write_logs()
            if stop_after is not None and self.step >= stop_after and self.step < self.ft.steps:
                bar.close()
                raise Interrupted(f"stopped after step {self.step} (stop_after); run again to resume.")
        bar.close()
        skipped = sum(bool(r["skipped"]) for r in self.gating_rows)
        return {"steps": self.ft.steps, "trained": self.ft.steps - skipped, "skipped": skipped,
                "skip_rate": skipped / max(self.ft.steps, 1), "wall_seconds_this_session": time.perf_counter() - t0,
                "train_seconds": float(sum(r.get("train_seconds", 0.0) for r in self.loss_rows)),
                "gating_seconds": float(sum(r["seconds"] for r in self.gating_rows))}

    def write_logs(self) -> None:
        """The loss, gating and validation logs so far (after the earlier models' rows), at each validation
        and checkpoint, so curves can be read while training runs; stage 03 writes them whole at its end."""
        if self.acc.is_main_process:
            _write_logs(self.out, self.earlier[0] + self.gating_rows, self.earlier[1] + self.loss_rows)

    def release_optimizer(self) -> None:
        """Free the optimizer's state once training is over (its checkpoints are written). Fully fine-tuning
        the UNet, AdamW's two moments are twice its weights, and save_model copies the UNet and serialises
        the copy: kept, saving would need about five times the weights, more than a training step's four
        (weights, gradients, moments). The thesis's 860M-parameter UNet in fp32 on the CPU: a 15.1 GiB peak
        measured in training (benchmarks/rehearse_thesis.py), about 17 GiB estimated for saving without this."""
        self.opt.zero_grad(set_to_none=True)
        self.opt.optimizer.state.clear()

    def trained_unet(self):
        """The UNet to save: LoRA merged into a copy, so the live model keeps its adapters."""
        unet = copy.deepcopy(self.acc.unwrap_model(self.unet)).float()
        if self.ft.lora:
            unet.fuse_lora()
            unet.unload_lora()
        if self.ft.gradient_checkpointing:
            unet.disable_gradient_checkpointing()
        return unet

    def save_model(self) -> Path:
        """A full pipeline folder (loadable by diffusion_model.load_pipeline) and, with LoRA, the adapter alone."""
        from diffusers import DDPMScheduler, StableDiffusionPipeline

        target = self.out / self.name
        if not self.acc.is_main_process or (target / "model_index.json").exists():
            return target
        text = copy.deepcopy(self.acc.unwrap_model(self.text)).float()
        pipe = StableDiffusionPipeline(vae=copy.deepcopy(self.vae).float(), text_encoder=text, tokenizer=self.tok,
                                       unet=self.trained_unet(), scheduler=DDPMScheduler.from_config(self.base_sched_config),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        with atomic.atomic_dir(target) as staging:     # renamed whole, and following the umask
            pipe.save_pretrained(staging)
        if self.ft.lora:
            from peft.utils import get_peft_model_state_dict

            StableDiffusionPipeline.save_lora_weights(
                self.out / f"{self.name}_lora", unet_lora_layers=get_peft_model_state_dict(self.acc.unwrap_model(self.unet)))
        return target


# ----------------------------------------------------------------------------------------- stage 03
def data_vectors(cfg: Config, df: pd.DataFrame, progress: bool = True):
    """The CLIP embedder of notebook 02 and the tuning images' vectors from its cache."""
    from ..tuningset import embeddings

    vecs = embeddings.embed_manifest(df, "clip", cfg.embedding, cfg.data.image_size, progress)
    emb = embeddings.clip_embedder(cfg.embedding)
    return emb.embed, vecs


def _write_logs(out: Path, gating_rows: list, loss_rows: list) -> None:
    g = pd.DataFrame(gating_rows, columns=GATING_COLUMNS + (["oracle_score"] if any("oracle_score" in r for r in gating_rows) else []))
    atomic.write_csv(out / "gating_log.csv", g)
    atomic.write_csv(out / "loss_log.csv", pd.DataFrame(loss_rows, columns=LOSS_COLUMNS))
    from ..evaluate.fidelity import trace_log

    atomic.write_csv(out / "validation_log.csv", trace_log(out / "validation"))   # the KID trace per save


def run(cfg: Config, out_dir, runs_root=None, progress: bool = True, resume: bool = True,
        resume_from=None, stop_after: int | None = None, rank_report=None) -> dict:
    """Stage 03: fine-tune (or record the base model for no-fine-tune) and write the artefacts listed above.

    ``runs_root`` defaults to the one ``out_dir`` lies in (<runs_root>/<experiment>/stages/<stage>-<key>).
    Under ``accelerate launch`` every process calls it and rank 0 alone writes (lib/finetune/multiprocess.py);
    ``rank_report`` (a folder, for tests) gets each rank's decisions and weight hash."""
    from ..core import compute

    if runs_root is None:
        runs_root = Path(out_dir).resolve().parents[2]

    with compute.cpu_threads(cfg.finetune.cpu_threads):      # left alone on a CUDA machine
        return _run(cfg, Path(out_dir), runs_root, progress, resume, resume_from, stop_after, rank_report)


def _finished(cfg: Config, out: Path) -> dict | None:
    """The recorded summary when every model of the stage is saved and the summary written (the last step),
    else None. Resealing such a stage keeps its logs and summary byte for byte: retraining from the last
    checkpoint would rewrite their timings, and every sealed stage 04 built on them would look changed."""
    p = out / "train_summary.json"
    if not p.exists():
        return None
    folders = set() if cfg.finetune.control == "no-fine-tune" else set(model_dir_names(cfg).values())
    return json.loads(p.read_text()) if all((out / f / "model_index.json").exists() for f in folders) else None


def _run(cfg: Config, out: Path, runs_root, progress, resume, resume_from, stop_after, rank_report=None) -> dict:
    from . import diffusion_model, gating, multiprocess

    state = multiprocess.state()
    main = state.is_main_process
    out.mkdir(parents=True, exist_ok=True)
    done = _finished(cfg, out)
    if done is not None:        # resumed after it finished (DONE.json deleted): nothing to redo or rewrite
        return done if main else {}
    gating.check(cfg.gating)
    t0 = time.perf_counter()
    with state.main_process_first():      # one process builds the tiny base; the others load it
        base = diffusion_model.base_for(cfg.model, seed=cfg.seed, progress=progress and main)
    summary = {"control": cfg.finetune.control, "base": base, "method": cfg.finetune.method,
               "gating": cfg.gating.enabled and cfg.finetune.control == "none", "mode": cfg.gating.mode,
               "threshold": cfg.gating.threshold, "aggregation": cfg.gating.aggregation,
               "model_layout": cfg.finetune.model_layout}
    if cfg.finetune.control == "no-fine-tune":
        summary.update(steps=0, trained=0, skipped=0, skip_rate=None, wall_seconds=time.perf_counter() - t0,
                       models={label: base for label in classes_of(cfg)}, tuning_set=None)
        if main:
            _write_logs(out, [], [])
            atomic.write_json(out / "train_summary.json", summary)
        return summary
    df = tuning_set(cfg, runs_root)
    embed = vectors = None
    if summary["gating"] and main:        # rank 0 alone scores the gate (on the whole batch) and broadcasts it
        embed, vectors = data_vectors(cfg, df, progress)
    names = model_dir_names(cfg)
    jobs = {"model": df} if cfg.finetune.model_layout == "joint" else {
        names[label]: df[df["label"] == label] for label in classes_of(cfg)}
    all_g, all_l, parts = [], [], {}
    for name, part in jobs.items():
        if len(part) == 0:
            raise DataError(f"the tuning set has no '{name}' images; per-label layout needs every label.")
        tr = Trainer(cfg, out, part, name, base, progress, embed,
                     None if vectors is None else vectors[part.index.to_numpy()])
        tr.earlier = (list(all_g), list(all_l))
        parts[name] = tr.fit(resume=resume, resume_from=resume_from, stop_after=stop_after)
        tr.release_optimizer()
        tr.save_model()
        if rank_report is not None:
            multiprocess.write_rank_report(tr, rank_report)
        all_g += tr.gating_rows
        all_l += tr.loss_rows
        del tr
    if not main:
        return {}
    _write_logs(out, all_g, all_l)
    steps = sum(p["steps"] for p in parts.values())
    skipped = sum(p["skipped"] for p in parts.values())
    summary.update(steps=steps, trained=steps - skipped, skipped=skipped, skip_rate=skipped / max(steps, 1),
                   skip_rate_target=cfg.gating.skip_rate if cfg.finetune.control == "random-skip" else None,
                   gating_seconds=sum(p["gating_seconds"] for p in parts.values()),
                   wall_seconds=time.perf_counter() - t0, parts=parts,
                   models={label: str(out / names[label]) for label in classes_of(cfg)},
                   tuning_set=stages.paths_rel(tuning_set_path(cfg, runs_root)), n_tuning=len(df),
                   device=str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
                   mixed_precision=_precision(cfg.finetune.mixed_precision), num_processes=state.num_processes)
    atomic.write_json(out / "train_summary.json", summary)
    for name in jobs:
        atomic.write_json(out / name / "train_summary.json", summary)
    return summary


if __name__ == "__main__":   # python -m lib.finetune.dreambooth PARAMS ... (alone or under accelerate launch): lib/finetune/multiprocess.py
    import sys

    from lib.finetune import multiprocess

    sys.exit(multiprocess.main())
