"""Active gating (thesis Algorithm 1), made cheap.

For a batch, the current model draws n images for the batch's prompts; they are embedded with the same
CLIP embedder notebook 02 used, and compared with the batch's cached CLIP vectors. A score above the
threshold means the model already reproduces this batch, so the batch is skipped.

What keeps it cheap: a few-step DPM-Solver sampler, small n, an optional lower resolution, the data
side read from notebook 02's embedding cache, and fresh samples only every k batches (in between,
the last samples' embeddings are scored against each new batch, which costs a matrix product).

Score aggregation (``gating.aggregation``), with G the generated and D the data vectors (unit norm):
- ``mean-pairwise`` (default): the mean of all |G| x |D| cosines, i.e. "the cosine similarity of
  CurGen and DataBatch" averaged over pairs;
- ``centroid``: the cosine between the mean generated vector and the mean data vector;
- ``max``: the largest single cosine (skip as soon as one image is reproduced).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.config import GatingConfig, ParamError

log = logging.getLogger(__name__)

AGGREGATIONS = ("mean-pairwise", "centroid", "max")


def score(gen: np.ndarray, data: np.ndarray, aggregation: str = "mean-pairwise") -> float:
    """Similarity of generated vectors ``gen`` (n x D) and data vectors ``data`` (m x D), both L2-normalised."""
    gen, data = np.asarray(gen, np.float64), np.asarray(data, np.float64)
    if len(gen) == 0 or len(data) == 0:
        raise ValueError("gating needs at least one generated and one data embedding.")
    if aggregation == "mean-pairwise":
        return float((gen @ data.T).mean())
    if aggregation == "centroid":
        a, b = gen.mean(0), data.mean(0)
        return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    if aggregation == "max":
        return float((gen @ data.T).max())
    raise ParamError(f"gating.aggregation = {aggregation!r}; use one of {', '.join(AGGREGATIONS)}.")


def check(cfg: GatingConfig) -> None:
    """Ranges the schema cannot express, with what to change."""
    if not -1.0 <= cfg.threshold <= 1.0:
        raise ParamError(f"gating.threshold = {cfg.threshold} is outside [-1, 1]; it is a cosine similarity.")
    if cfg.n_images < 1 or cfg.every_k < 1 or cfg.sampler_steps < 1:
        raise ParamError("gating.n_images, gating.every_k and gating.sampler_steps must be at least 1.")
    if cfg.pool < 1 or cfg.offset_every < 1 or cfg.offset_steps < 1 or cfg.offset_draws < 0:
        raise ParamError("gating.pool, gating.offset_every and gating.offset_steps must be at least 1, "
                         "gating.offset_draws at least 0.")
    if cfg.skip_rate is not None and not 0.0 <= cfg.skip_rate <= 1.0:
        raise ParamError(f"gating.skip_rate = {cfg.skip_rate} must be in [0, 1].")


@dataclass
class GateState:
    """Everything a resumed run needs to take the same decisions: the quantile rule's recent scores,
    its last threshold and its skip budget. Under the absolute rule, ``recent`` holds the first
    warmup_batches scores and ``decided``/``skipped`` count every decision (for the warm-up check)."""

    recent: list = field(default_factory=list)
    calibrated: float | None = None
    decided: int = 0
    skipped: int = 0
    offsets: list = field(default_factory=list)    # gating.offset_draws: few-step minus full-step score, per draw

    def to_dict(self) -> dict:
        return {"recent": list(self.recent), "calibrated": self.calibrated, "decided": self.decided,
                "skipped": self.skipped, "offsets": list(self.offsets)}

    @classmethod
    def from_dict(cls, d: dict) -> "GateState":
        return cls(list(d.get("recent", [])), d.get("calibrated"), d.get("decided", 0), d.get("skipped", 0),
                   list(d.get("offsets", [])))


class Decider:
    """Absolute rule: skip when score > threshold (the thesis). Quantile rule: skip a target fraction.

    The quantile rule skips a batch when its score is above the (1 - skip_fraction) quantile of the last
    ``warmup_batches`` scores, within a budget: skips never exceed skip_fraction of the batches decided
    so far (rounded up). The window rolls because scores climb as the model learns; a threshold fixed
    on the first batches would end up skipping nearly everything. Nothing is skipped until the window
    is full.

    Under the absolute rule, a threshold that skips all of the first ``warmup_batches`` batches, or
    none of them, gets a warning (``warn``) with the scores those batches measured: all means it sits
    below the embedder's range (nothing will be trained), none that it may sit above it.
    """

    def __init__(self, cfg: GatingConfig, state: GateState | None = None, warn: bool = True):
        check(cfg)
        self.cfg, self.state, self.warn = cfg, state or GateState(), warn

    def threshold(self) -> float:
        if self.cfg.mode == "absolute":
            return self.cfg.threshold
        return self.state.calibrated if self.state.calibrated is not None else float("nan")

    def decide(self, s: float) -> tuple[bool, float]:
        """(skip?, threshold used) for a score; updates the quantile rule's window and budget."""
        if self.cfg.mode == "absolute":
            skip = bool(s > self.cfg.threshold)
            self._watch_warmup(s, skip)
            return skip, self.cfg.threshold
        st, f, w = self.state, self.cfg.skip_fraction, self.cfg.warmup_batches
        skip, thr = False, float("nan")
        if len(st.recent) >= w:
            thr = st.calibrated = float(np.quantile(st.recent, 1 - f))
            within_budget = st.skipped + 1 <= np.ceil(f * (st.decided + 1))
            skip = bool(s > thr and within_budget)
            st.decided, st.skipped = st.decided + 1, st.skipped + int(skip)
        st.recent = (st.recent + [float(s)])[-w:]
        return skip, thr

    def _watch_warmup(self, s: float, skip: bool) -> None:
        """Absolute rule: count decisions; at the end of the warm-up window, warn when it skipped all or none."""
        st, w = self.state, self.cfg.warmup_batches
        st.decided, st.skipped = st.decided + 1, st.skipped + int(skip)
        if st.decided <= w:
            st.recent = st.recent + [float(s)]
        if self.warn and w >= 1 and st.decided == w and st.skipped in (0, w):
            log.warning(warmup_message(self.cfg, st.recent, st.skipped))


def warmup_message(cfg: GatingConfig, scores: list, skipped: int) -> str:
    """What an absolute threshold that skipped all or none of the warm-up batches means, and what to set."""
    v = np.asarray(scores, float)
    lo, med, hi = float(v.min()), float(np.median(v)), float(v.max())
    head = (f"gating.threshold = {cfg.threshold:g} (absolute mode) skipped {'all' if skipped else 'none'} of the "
            f"first {len(v)} batches (gating.warmup_batches): their scores ({cfg.aggregation}) ranged "
            f"{lo:.3f}-{hi:.3f}, median {med:.3f}. ")
    if skipped:
        what = ("The threshold sits below every score, so the gate skips nearly every batch and little is trained "
                "(a CLIP with random weights scores near 0.9 whatever the images). Raise gating.threshold into "
                f"or above this range (e.g. {hi:.2f}, its top)")
    else:
        what = ("The threshold sits above every score: fine early in fine-tuning, when the model does not resemble "
                "the data yet and scores climb as it learns, but if they never reach it the gate skips nothing "
                "and only adds its cost. Check the scores later batches reach (gating_log.csv) and set "
                f"gating.threshold a little below them (here the highest so far is {hi:.3f})")
    return (head + what + ", or use gating.mode: quantile with gating.skip_fraction, which calibrates the "
            "threshold on the measured scores.")


def sampler(pipe, steps: int):
    """The few-step gating sampler: DPM-Solver++ (2nd order) on the pipeline's noise schedule."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++",
                                                   solver_order=2)


@torch.no_grad()
def generate(pipe, prompts: list[str], steps: int, resolution: int, seed: int, guidance: float,
             scheduler=None, autocast=None) -> torch.Tensor:
    """n grayscale images (n x H x W in [0, 1]) from the live model; own generator, so training RNG is untouched."""
    import contextlib

    old = pipe.scheduler
    if scheduler is not None:
        pipe.scheduler = scheduler
    try:
        g = torch.Generator("cpu").manual_seed(int(seed))
        with autocast or contextlib.nullcontext():
            out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, height=resolution,
                       width=resolution, generator=g, output_type="pt").images
    finally:
        pipe.scheduler = old
    return out.float().mean(1).clamp(0, 1).cpu()


class Gate:
    """Algorithm 1 for one training run: ``__call__(step, prompts, data_vectors)`` -> log row.

    Calibrations (gating.*; the defaults are the plain gate): ``pool`` scores each batch against the images
    of the last ``pool`` fresh draws (more images at no extra draw: the model moves little in pool x every_k
    batches); ``common_noise`` starts every draw from the same noise, so consecutive draws differ by the model
    only; ``offset_draws`` full-step (``offset_steps`` DDIM) draws on the gate's own noise, at every
    ``offset_every``-th fresh draw (the first at draw offset_every: past the base model when > 1), measure how far the few-step sampler's score sits above the naive gate's,
    and the mean of those differences is subtracted from every score (their time is in ``seconds``);
    without them, ``score_offset`` is subtracted: a bias measured once on a development seed's record.
    """

    def __init__(self, cfg: GatingConfig, embed, resolution: int, seed: int, state: GateState | None = None):
        self.cfg, self.embed, self.seed = cfg, embed, seed
        self.resolution = cfg.resolution or resolution
        self.decider = Decider(cfg, state)
        self.gen_vectors: np.ndarray | None = None
        self.draws: list = []           # the last `pool` fresh draws' vectors
        self.fresh_count = 0
        self._sched = None

    def _prompts(self, prompts: list[str]) -> list[str]:
        return [prompts[i % len(prompts)] for i in range(self.cfg.n_images)]

    def _noise_seed(self, step: int) -> int:
        return self.seed * 100003 + (0 if self.cfg.common_noise else step)

    def sample_vectors(self, pipe, prompts: list[str], step: int, autocast=None) -> np.ndarray:
        if self._sched is None:
            self._sched = sampler(pipe, self.cfg.sampler_steps)
        imgs = generate(pipe, self._prompts(prompts), self.cfg.sampler_steps, self.resolution, self._noise_seed(step),
                        self.cfg.guidance_scale, self._sched, autocast)
        return self.embed(imgs)

    def full_step_vectors(self, pipe, prompts: list[str], step: int, autocast=None) -> np.ndarray:
        """The same prompts and noise as this step's gate draw, through offset_steps DDIM steps."""
        from diffusers import DDIMScheduler

        imgs = generate(pipe, self._prompts(prompts), self.cfg.offset_steps, self.resolution, self._noise_seed(step),
                        self.cfg.guidance_scale, DDIMScheduler.from_config(pipe.scheduler.config), autocast)
        return self.embed(imgs)

    def offset(self) -> float:
        """The score bias subtracted: the mean measured offset, else the fixed gating.score_offset."""
        offsets = self.decider.state.offsets
        return float(np.mean(offsets)) if offsets else self.cfg.score_offset

    def _measure_offset(self, pipe, prompts, step, autocast, fresh_vectors, data_vectors) -> None:
        c = self.cfg
        if len(self.decider.state.offsets) < c.offset_draws and self.fresh_count % c.offset_every == 0:
            full = self.full_step_vectors(pipe, prompts, step, autocast)
            self.decider.state.offsets.append(score(fresh_vectors, data_vectors, c.aggregation)
                                              - score(full, data_vectors, c.aggregation))

    def __call__(self, step: int, pipe, prompts: list[str], data_vectors: np.ndarray, autocast=None) -> dict:
        t0 = time.perf_counter()
        fresh = self.gen_vectors is None or step % self.cfg.every_k == 0
        if fresh:
            v = self.sample_vectors(pipe, prompts, step, autocast)
            self.fresh_count += 1
            self.draws = (self.draws + [v])[-self.cfg.pool:]
            self.gen_vectors = np.concatenate(self.draws)
            if self.cfg.offset_draws:
                self._measure_offset(pipe, prompts, step, autocast, v, data_vectors)
        s = score(self.gen_vectors, data_vectors, self.cfg.aggregation) - self.offset()
        skip, thr = self.decider.decide(s)
        return {"step": step, "score": s, "threshold": thr, "skipped": skip, "generated": fresh,
                "seconds": time.perf_counter() - t0}


def broadcast_decision(accelerator, skip: bool, s: float) -> tuple[bool, float]:
    """Rank 0's decision for everyone, so processes never train on different batches."""
    if accelerator is None or accelerator.num_processes == 1:
        return skip, s
    from accelerate.utils import broadcast

    t = torch.tensor([float(skip), float(s)], device=accelerator.device, dtype=torch.float64)
    t = broadcast(t, from_process=0)
    return bool(t[0].item() > 0.5), float(t[1].item())


def random_skips(rate: float, steps: int, seed: int) -> set[int]:
    """The random-skip control: exactly round(rate * steps) steps, drawn once from the seed."""
    if not 0.0 <= rate <= 1.0:
        raise ParamError(f"gating.skip_rate = {rate} must be in [0, 1].")
    k = int(round(rate * steps))
    return set(np.random.default_rng([seed, 7]).choice(steps, size=k, replace=False).tolist())
