"""Stage 03's training loop: one DreamBooth fine-tuning run (one model), with optional active gating.

One accelerate loop serves every variant: full UNet or LoRA (peft), optional text-encoder training,
prior preservation with class images drawn by the base model, and the random-skip and equal-updates controls. Every random draw of a step (batch order, noise, timesteps, gating samples) is seeded
by (seed, step), and a checkpoint (lib.finetune.checkpoints) holds the weights, optimizer, LR schedule,
gating state and logs, so a run killed and resumed ends identical to an uninterrupted one. Validation
saves are lib.finetune.validation's; the stage around the loop is lib.finetune.dreambooth.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..core import atomic
from ..core.config import Config, ParamError
from ..core.progress import tqdm
from ..data import images
from . import checkpoints, tracking
from .prompts import prompt_for
from .validation import Validator

log = logging.getLogger(__name__)
GATING_COLUMNS = ["model", "step", "score", "threshold", "skipped", "generated", "seconds"]
LOSS_COLUMNS = ["model", "step", "loss", "loss_prior", "lr", "train_seconds"]


class Interrupted(RuntimeError):
    """Training stopped on purpose (``stop_after``) after a checkpoint; calling run again resumes."""


def precision(choice: str) -> str:
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
        self.acc = Accelerator(mixed_precision=precision(self.ft.mixed_precision),
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
        # The LR depends on the count of updates alone (warm-up over the first lr_warmup_steps updates, then
        # constant; num_training_steps is ignored by this schedule), and it steps only on a trained batch, so
        # an equal-updates run's k-th update has the LR the gated run's k-th trained update had.
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
        self.total = self._batches()
        if self.ft.control == "random-skip":
            if self.gc.skip_rate is None:
                raise ParamError("finetune.control = random-skip needs gating.skip_rate (the gated run's rate, "
                                 "see dreambooth.skip_rate_of); the runner fills it in, or set it by hand.")
            self.skipset = gating.random_skips(self.gc.skip_rate, self.ft.steps, cfg.seed)
        self.step, self.gating_rows, self.loss_rows = 0, [], []
        self.earlier: tuple[list, list] = ([], [])   # gating and loss rows of the models trained before this one
        self.ckpt_root = self.out / "checkpoints" / name
        self.validation = Validator(cfg, self.out, name, self.df)
        self.board = tracking.Board(self.acc, name, 0, False)   # fit() opens the live one

    def _batches(self) -> int:
        """Batches this run goes through (trained or skipped): finetune.steps, or for the equal-updates
        control finetune.updates, batches 0..updates-1 of the seed's order, all trained."""
        if self.ft.control != "equal-updates":
            return self.ft.steps
        if self.ft.updates is None:
            raise ParamError("finetune.control = equal-updates needs finetune.updates (the gated run's trained count, "
                             "see dreambooth.trained_of); the runner fills it in, or set it by hand.")
        return self.ft.updates

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

    def _tokens(self, prompts: list[str]) -> torch.Tensor:
        return self.tok(prompts, padding="max_length", max_length=self.tok.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(self.acc.device)

    def _encode_prompts(self, prompts: list[str], grad: bool = False) -> torch.Tensor:
        if grad:
            return self.text(self._tokens(prompts))[0]
        # a frozen text encoder: each distinct prompt is tokenized and encoded once (measured: 0.5 ms of a
        # 143 ms tiny-model step; harmless, not a speed lever)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            with torch.no_grad():
                for p, h in zip(missing, self.text(self._tokens(missing))[0]):
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
        with self.sampling():
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
    def sampling(self):
        """Sampling mode: eval(), no_grad and the run's autocast; training mode restored afterwards."""
        mods = [self.unet] + ([self.text] if self.ft.train_text_encoder else [])
        for m in mods:
            m.eval()
        try:
            with torch.no_grad(), self._sampling_autocast():
                yield
        finally:
            for m in mods:
                m.train()

    def _sampling_autocast(self):
        """finetune.sampling_precision's autocast, else the training's (accelerate's mixed precision)."""
        from ..core import compute

        if self.ft.sampling_precision is None:
            return self.acc.autocast()
        return compute.autocast(self.ft.sampling_precision, self.acc.device, "finetune.sampling_precision")

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
                with self.sampling():
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
        return self.validation.save(step, self.live_pipeline, self.sampling, self.board)

    # --------------------------------------------------------------------------------- loop
    def fit(self, resume: bool = True, resume_from=None, stop_after: int | None = None, oracle=None,
            dry_gate: bool = False) -> dict:
        """Train to finetune.steps batches (trained or skipped; equal-updates: finetune.updates batches). For the benchmark: ``oracle(step, pipe,
        prompts, vectors)`` is scored at each batch with fresh gate samples (its time is logged apart), and
        ``dry_gate`` computes and logs every gate but trains on every batch (the gate's pure cost)."""
        ckpt = checkpoints.to_resume(self.ckpt_root, resume, resume_from)
        if ckpt is not None:
            checkpoints.load(self, ckpt)
        self.board = tracking.Board(self.acc, self.name, self.step, self.ft.tensorboard, cfg=self.cfg)
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
        bar = tqdm(total=self.total, initial=self.step, desc=f"DreamBooth {self.name}", mininterval=2,
                   disable=not self.progress)
        while self.step < self.total:
            step = self.step
            idx = batch_indices(n, self.ft.batch_size, self.cfg.seed, step)
            row = self.gate_step(idx, step)
            if oracle is not None and self.gate is not None:   # every batch, fresh samples or not
                t_o = time.perf_counter()
                with self.sampling():
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
            if self.step % self.ft.validation_every == 0 or self.step == self.total:
                self.validate(self.step)
            if self.step % self.ft.checkpoint_every == 0 and self.step < self.total:
                checkpoints.save(self)
            if self.step < self.total and (self.step % self.ft.validation_every == 0
                                              or self.step % self.ft.checkpoint_every == 0):
                self.write_logs()
            if stop_after is not None and self.step >= stop_after and self.step < self.total:
                bar.close()
                raise Interrupted(f"stopped after step {self.step} (stop_after); run again to resume.")
        bar.close()
        skipped = sum(bool(r["skipped"]) for r in self.gating_rows)
        return {"steps": self.total, "trained": self.total - skipped, "skipped": skipped,
                "skip_rate": skipped / max(self.total, 1), "wall_seconds_this_session": time.perf_counter() - t0,
                "train_seconds": float(sum(r.get("train_seconds", 0.0) for r in self.loss_rows)),
                "gating_seconds": float(sum(r["seconds"] for r in self.gating_rows))}

    def write_logs(self) -> None:
        """The loss, gating and validation logs so far (after the earlier models' rows), at each validation
        and checkpoint, so curves can be read while training runs; stage 03 writes them whole at its end."""
        if self.acc.is_main_process:
            save_logs(self.out, self.earlier[0] + self.gating_rows, self.earlier[1] + self.loss_rows)

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


def save_logs(out: Path, gating_rows: list, loss_rows: list) -> None:
    """gating_log.csv, loss_log.csv and validation_log.csv (the KID trace of each validation save)."""
    g = pd.DataFrame(gating_rows, columns=GATING_COLUMNS + (["oracle_score"] if any("oracle_score" in r for r in gating_rows) else []))
    atomic.write_csv(out / "gating_log.csv", g)
    atomic.write_csv(out / "loss_log.csv", pd.DataFrame(loss_rows, columns=LOSS_COLUMNS))
    from ..evaluate.fidelity import trace_log

    atomic.write_csv(out / "validation_log.csv", trace_log(out / "validation"))   # the KID trace per save
