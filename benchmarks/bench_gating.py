"""Cost and fidelity of the cheap gate, side by side in one run on the same model and steps.

1. Wall time of training with gating vs without (same batches; ratio, goal <= 1.25x), and the gate's
   pure cost (gate computed at every gate point, every batch trained). CPU time is printed beside it:
   on a shared machine it does not move with the other processes' load.
2. Agreement of the decisions the cheap gate took (few-step DPM-Solver, small n, fresh samples every k
   batches) with those of a naive full-step oracle (n = batch size, 50 DDIM steps, full resolution)
   scored at every batch on the same model states. Both sides use the same rule (quantile mode: the
   rolling window and skip budget of lib.finetune.gating.Decider; the first warmup_batches are left out, since
   neither side skips them; absolute mode: gating.threshold, every batch counts).
3. The naive oracle against itself with another noise seed: how far any gate's decisions can agree
   at all when scores near the threshold are this noisy. Goal: agreement >= 95% of this self-agreement,
   over at least 100 decisions; the last line prints the figures side by side.

    .venv/bin/python benchmarks/bench_gating.py [--params params/demo.yaml] [--steps 600] [--every-k 1]
        [--oracle-steps 50] [--oracle-every 5] [--set gating.n_images=8]
--steps defaults to the parameter file's finetune.steps (demo: 600 batches). Every batch is a decision; the
oracle (two 50-step draws of 16 images, ~8 s a batch on one CPU thread) is scored at every --oracle-every-th
batch, so e.g. 600 steps with --oracle-every 5 compare 120 decisions across the whole run.
The record of a run: benchmarks/results/bench_gating_offline_clip.txt; the calibrated rules of issue 26, chosen on
development records and run on other seeds: benchmarks/results/bench_gating_rules.txt (the quantile rule, skip
fraction 0.15 over a 100-batch window with 6 sampler steps, met both goals at seed 5: ratio 0.977, CPU 1.21x).
Needs stages 01-02 finished for the parameter file (notebooks 01-02).
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import spearmanr

from lib.core import compute, config, overrides
from lib.finetune import dreambooth, gating, trainer


def oracle_fn(cfg, embed, store: dict, steps: int = 50):
    """Naive Algorithm 1: one image per batch item, ``steps`` (50) DDIM steps, full resolution, drawn from
    two noise seeds: ``store[step]`` = (first draw's vectors, second draw's, the batch's data vectors). The
    second draw gives the naive gate's own run-to-run agreement, the ceiling for any cheaper gate."""
    from diffusers import DDIMScheduler

    def draw(pipe, prompts, seed):
        sched = DDIMScheduler.from_config(pipe.scheduler.config)
        return embed(gating.generate(pipe, prompts, steps, cfg.model.resolution, seed, cfg.gating.guidance_scale, sched))

    def score(step, pipe, prompts, vectors):
        seed = cfg.seed * 100003 + step
        store[step] = (draw(pipe, prompts, seed), draw(pipe, prompts, seed + 7919), np.asarray(vectors))
        return gating.score(store[step][0], vectors, cfg.gating.aggregation)
    return score


@dataclass
class Variant:
    """Another cheap gate, scored in the shadow of the gated run: same model states, its decisions not taken."""

    label: str
    cfg: config.Config
    rows: dict = field(default_factory=dict)     # step -> its gate row


def train(cfg, runs_root, oracle: dict | None = None, oracle_steps: int = 50, oracle_every: int = 1,
          variants: list | None = None, record: dict | None = None, **fit):
    """(wall seconds, CPU seconds, fit summary, gating rows) of one fine-tuning run. With ``oracle`` (a dict
    filled by oracle_fn), the naive oracle is drawn at every ``oracle_every``-th batch and each variant's
    gate at every batch, all left out of both clocks; ``record`` (a dict) then gets, per batch, the batch's
    mean data vector (``data``) and, at fresh draws, the run's gate vectors (``draws``)."""
    df = dreambooth.tuning_set(cfg, runs_root)
    embed, vecs = dreambooth.data_vectors(cfg, df, progress=False)
    cpu_oracle = [0.0]
    live: dict = {}                     # the trainer, once made: the hook reads its gate's latest draw
    if record is not None:
        record.update(data={}, draws={})
    if oracle is not None:
        naive = oracle_fn(cfg, embed, oracle, oracle_steps)
        shadows = []
        for v in variants or []:
            gate = gating.Gate(v.cfg.gating, embed, cfg.model.resolution, cfg.seed)
            gate.decider.warn = False
            shadows.append((v, gate))

        def hook(step, pipe, prompts, vectors):
            c = time.process_time()
            try:
                gate = live["trainer"].gate
                if record is not None:
                    record["data"][step] = np.asarray(vectors, np.float32).mean(0)
                    if gate.gating_rows_fresh != gate.fresh_count:
                        gate.gating_rows_fresh = gate.fresh_count
                        record["draws"][step] = np.asarray(gate.draws[-1], np.float32)
                for v, gate in shadows:
                    v.rows[step] = gate(step, pipe, prompts, vectors)
                return None if step % oracle_every else naive(step, pipe, prompts, vectors)
            finally:
                cpu_oracle[0] += time.process_time() - c
        fit["oracle"] = hook
    with tempfile.TemporaryDirectory() as tmp, compute.cpu_threads(cfg.finetune.cpu_threads):
        tr = trainer.Trainer(cfg, tmp, df, progress=False, embed=embed, data_vectors=vecs)
        live["trainer"] = tr
        if tr.gate is not None:
            tr.gate.gating_rows_fresh = 0       # the fresh draws the record has seen
        t0, c0 = time.perf_counter(), time.process_time()
        out = tr.fit(resume=False, **fit)
        if record is not None and tr.gate is not None:
            record["offsets"] = list(tr.gate.decider.state.offsets)
        wall = time.perf_counter() - t0 - sum(r.get("oracle_seconds", 0.0) for r in tr.gating_rows)
        cpu = time.process_time() - c0 - cpu_oracle[0]
        return wall, cpu, out, tr.gating_rows


def oracle_decisions(scores, cfg, window: int = 0) -> np.ndarray:
    """The naive gate's decisions under the same rule as the cheap gate (quantile mode: its window ``window``
    scores, spanning the batches of the cheap gate's warmup_batches when the oracle is scored at every m-th
    batch only; nothing skipped before the window is full)."""
    g = cfg.gating
    if g.mode == "quantile" and window:
        g = dataclasses.replace(g, warmup_batches=window)
    decider = gating.Decider(g, warn=False)
    return np.array([decider.decide(s)[0] for s in scores])


def kappa(a, b) -> float:
    """Cohen's kappa of two boolean decision series: agreement beyond what their skip rates give by chance."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    pe = a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean())
    return float(((a == b).mean() - pe) / (1 - pe)) if pe < 1 else float("nan")


def compare(cfg, taken, store: dict, steps: list, warm: int) -> dict:
    """A gate's decisions ``taken`` at ``steps`` against the naive oracle's under cfg's rule and aggregation,
    and the oracle against itself (its second draw)."""
    g = cfg.gating
    naive = np.array([gating.score(store[s][0], store[s][2], g.aggregation) for s in steps])
    again = np.array([gating.score(store[s][1], store[s][2], g.aggregation) for s in steps])
    d_naive, d_again = oracle_decisions(naive, cfg, warm)[warm:], oracle_decisions(again, cfg, warm)[warm:]
    taken = np.asarray(taken, bool)[warm:]
    agree, self_agree = float((taken == d_naive).mean()), float((d_again == d_naive).mean())
    return {"n": len(taken), "agree": agree, "self": self_agree, "ratio": agree / max(self_agree, 1e-9),
            "kappa": kappa(taken, d_naive), "kappa_self": kappa(d_again, d_naive), "skip": float(taken.mean()),
            "skip_naive": float(d_naive.mean()), "naive": naive, "again": again, "same": taken == d_naive}


def save_record(stem: str, rows: list, store: dict, record: dict, cfg) -> None:
    """The per-batch record beside the result: ``stem``.csv (one row per batch: the cheap gate's score, fresh or
    reused, its decision, the oracle's two scores) and ``stem``.npz (the vectors the scores came from: the batch's
    mean data vector, each fresh draw's gate vectors, both oracle draws), so other rules can be replayed offline
    (``--replay``). With unit vectors, the mean-pairwise score is mean(gen) . mean(data)."""
    import pandas as pd

    from lib.core import atomic

    g = cfg.gating
    both = lambda i, st: gating.score(store[st][i], store[st][2], g.aggregation) if st in store else np.nan  # noqa: E731
    df = pd.DataFrame([{"step": r["step"], "score": r["score"], "fresh": bool(r["generated"]),
                        "skipped": bool(r["skipped"]), "threshold": r["threshold"], "gate_seconds": r["seconds"],
                        "oracle_score": both(0, r["step"]), "oracle_again": both(1, r["step"]),
                        "oracle_seconds": r.get("oracle_seconds", np.nan)} for r in rows])
    with atomic.atomic_path(stem + ".csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.6f")
    at = sorted(store)
    arrays = {"steps": np.array(sorted(record["data"])), "data": np.stack([record["data"][k] for k in sorted(record["data"])]),
              "draw_steps": np.array(sorted(record["draws"])),
              "draws": np.stack([record["draws"][k] for k in sorted(record["draws"])]),
              # batches differ in size (a tuning set not a multiple of the batch): the points' rows, concatenated
              "oracle_steps": np.array(at), "oracle_rows": np.array([len(store[k][0]) for k in at]),
              "oracle_a": np.concatenate([store[k][0] for k in at]).astype(np.float32),
              "oracle_b": np.concatenate([store[k][1] for k in at]).astype(np.float32),
              "threshold": g.threshold, "every_k": g.every_k, "n_images": g.n_images, "seed": cfg.seed,
              "offsets": np.array(live_gate_offsets(rows, record), float),
              "gate_draw_seconds": float(np.mean([r["seconds"] for r in rows if r["generated"]])),
              "oracle_draw_seconds": float(np.nanmean(df["oracle_seconds"])) / 2}
    with atomic.atomic_path(stem + ".npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    print(f"per-batch record: {stem}.csv, {stem}.npz ({len(df)} batches, {len(at)} oracle points)")


def live_gate_offsets(rows, record) -> list:
    return list(record.get("offsets", []))


def replay(rec, pool: int = 1, offset_draws: int = 0, offset_every: int = 1, offset_skip: int = 0,
           fixed_offset: float = 0.0, run_offsets: int = 0, quantile: float = 0.0, window: int = 20,
           oracle_rule: int = 0, every: int = 0) -> dict:
    """A calibrated gate's decisions on a saved record, without retraining (the model states are the recorded
    run's): scores against the last ``pool`` fresh draws, minus ``fixed_offset``, or minus the mean few-step minus
    full-step score difference over ``offset_draws`` fresh draws that have an oracle draw (the oracle's first
    n images share the gate's prompts and noise), every ``offset_every``-th of them after the first
    ``offset_skip``, or (``run_offsets=E``) minus the run gate's own offsets, measured at every E-th fresh draw.
    Each offset counts from the batch it was measured at. ``quantile=F`` decides by the rolling-quantile rule
    (skip fraction F, window ``window``) instead of the threshold; ``oracle_rule=1`` applies that rule to the
    oracle too (its window spanning the same batches, the first window left out), as the benchmark's quantile
    mode does; otherwise the oracle keeps the record's absolute threshold. ``every=E`` (a multiple of the
    record's every_k) keeps only the fresh draws at every E-th batch: a gate that draws less often. Returns
    compare's figures."""
    cut = np.cumsum(rec["oracle_rows"])[:-1]
    rec = {**rec, "oracle_a": np.split(rec["oracle_a"], cut), "oracle_b": np.split(rec["oracle_b"], cut)}
    steps, data = [int(x) for x in rec["steps"]], rec["data"].astype(np.float64)
    dsteps, draws = rec["draw_steps"], rec["draws"].astype(np.float64)
    ost = {int(s): i for i, s in enumerate(rec["oracle_steps"])}
    n, thr, k = int(rec["n_images"]), float(rec["threshold"]), int(rec["every_k"])
    if every:
        if every % k:
            raise SystemExit(f"--rule every={every} must be a multiple of the record's every_k ({k})")
        keep = [i for i, st in enumerate(dsteps) if int(st) % every == 0]
        dsteps, draws = dsteps[keep], draws[keep]
    dmean = dict(zip(steps, data))
    gmean = [d.mean(0) for d in draws]
    if run_offsets:
        offs = [float(o) for o in rec["offsets"]]
        known_at = [k * (run_offsets * (j + 1) - 1) for j in range(len(offs))]
    else:
        eligible = [i for i, s in enumerate(dsteps) if int(s) in ost][offset_skip::offset_every][:offset_draws]
        offs = [float(gmean[i] @ dmean[int(dsteps[i])] - rec["oracle_a"][ost[int(dsteps[i])]][:n].astype(np.float64)
                      .mean(0) @ dmean[int(dsteps[i])]) for i in eligible]
        known_at = [int(dsteps[i]) for i in eligible]
    cheap = {}
    for s in steps:
        j = int(np.searchsorted(dsteps, s, side="right")) - 1          # the latest fresh draw at step s
        g = np.mean(gmean[max(0, j - pool + 1): j + 1], axis=0)
        known = [o for o, t in zip(offs, known_at) if t <= s]
        off = np.mean(known) if known else 0.0
        cheap[s] = float(g @ dmean[s]) - (off if (offset_draws or run_offsets) else fixed_offset)
    if quantile:
        decider = gating.Decider(config.GatingConfig(mode="quantile", skip_fraction=quantile, warmup_batches=window),
                                 warn=False)
        dec = {s: decider.decide(cheap[s])[0] for s in steps}
    else:
        dec = {s: cheap[s] > thr for s in steps}
    at = sorted(ost)
    naive = np.array([rec["oracle_a"][ost[s]].astype(np.float64).mean(0) @ dmean[s] for s in at])
    again = np.array([rec["oracle_b"][ost[s]].astype(np.float64).mean(0) @ dmean[s] for s in at])
    if quantile and oracle_rule:     # the oracle under the same rule, its window spanning the same batches
        every = at[1] - at[0] if len(at) > 1 else 1
        ocfg = config.GatingConfig(mode="quantile", skip_fraction=quantile, warmup_batches=-(-window // every))
        warm = ocfg.warmup_batches
        dn, da = (np.array([d.decide(v)[0] for v in vals]) for d, vals in
                  ((gating.Decider(ocfg, warn=False), naive), (gating.Decider(ocfg, warn=False), again)))
        taken, dn, da = np.array([dec[s] for s in at])[warm:], dn[warm:], da[warm:]
    else:
        taken, dn, da = np.array([dec[s] for s in at]), naive > thr, again > thr
    agree, self_agree = float((taken == dn).mean()), float((da == dn).mean())
    return {"n": len(at), "agree": agree, "self": self_agree, "ratio": agree / max(self_agree, 1e-9),
            "kappa": kappa(taken, dn), "kappa_self": kappa(da, dn), "skip": float(taken.mean()),
            "skip_all": float(np.mean([dec[s] for s in steps])), "skip_naive": float(dn.mean()), "offsets": offs,
            "bias": float(np.mean([cheap[s] for s in at]) - naive.mean())}


def replay_report(path: str, specs: list) -> None:
    """``--replay``: each rule's figures on a saved record, one line each."""
    rec = dict(np.load(path))
    print(f"replay of {path}: {len(rec['steps'])} batches, {len(rec['oracle_steps'])} oracle points, threshold "
          f"{float(rec['threshold']):g}, gate n={int(rec['n_images'])} fresh every {int(rec['every_k'])}, seed {int(rec['seed'])}")
    print(f"  {'rule':52s} agree   self  ratio  kappa/self  skip/oracle  bias    offsets (n, mean)")
    for spec in specs:
        kw = {k: (float(v) if k in ("fixed_offset", "quantile") else int(v))
              for k, v in (p.split("=") for p in spec.split(",") if p)}
        c = replay(rec, **kw)
        o = f"{len(c['offsets'])}, {np.mean(c['offsets']):+.4f}" if c["offsets"] else "-"
        print(f"  {spec or 'plain gate (pool=1, no offset)':52s} {c['agree']:6.1%} {c['self']:6.1%} {c['ratio']:6.3f}  {c['kappa']:+.2f}/"
              f"{c['kappa_self']:+.2f}   {c['skip']:4.0%}/{c['skip_naive']:4.0%}  {c['bias']:+.4f}  {o}")


def describe(g, short: bool = False) -> str:
    rule = f"threshold {g.threshold:g}" if g.mode == "absolute" else f"quantile, skip_fraction {g.skip_fraction:g}"
    cal = (f" pool {g.pool}" if g.pool > 1 else "") + (" CRN" if g.common_noise else "") + (
        f" offset {g.offset_draws}x{g.offset_steps}st/{g.offset_every}" if g.offset_draws else
        f" offset {g.score_offset:+g} (fixed)" if g.score_offset else "")
    if short:
        rule = f"thr {g.threshold:g}" if g.mode == "absolute" else f"q {g.skip_fraction:g}"
        return f"n={g.n_images} steps={g.sampler_steps} k={g.every_k} {g.aggregation} {rule}" + (
            f" {g.resolution}px" if g.resolution else "") + cal
    return (f"n={g.n_images}, {g.sampler_steps} DPM-Solver steps, fresh every {g.every_k} batches, {g.aggregation}, {rule}"
            + (f", {g.resolution} px" if g.resolution else "") + (f";{cal}" if cal else ""))


def skip_rates(params: str, over: dict, seeds: list, runs_root: str) -> None:
    """The gate's skip rate at each seed (gated run only, decisions taken), with the run's CPU seconds."""
    rates = []
    for seed in seeds:
        cfg = config.load(params, {**over, "gating.enabled": True, "seed": seed})
        wall, cpu, out, rows = train(cfg, runs_root)
        rates.append(out["skip_rate"])
        late = np.mean([r["skipped"] for r in rows if r["step"] >= 10])
        print(f"seed {seed}: skip rate {out['skip_rate']:.1%} ({sum(r['skipped'] for r in rows)} of {len(rows)}; "
              f"{late:.1%} after batch 10) | CPU {cpu:.1f} s, wall {wall:.1f} s")
    print(f"SKIP RATES over seeds {','.join(map(str, seeds))}: {' / '.join(f'{r:.1%}' for r in rates)} | spread "
          f"{100 * (max(rates) - min(rates)):.1f} points (goal: within +-5 points of their mean: max deviation "
          f"{100 * max(abs(r - np.mean(rates)) for r in rates):.1f})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/demo.yaml")
    ap.add_argument("--steps", type=int, default=None, help="batches (= gate decisions); default finetune.steps")
    ap.add_argument("--every-k", type=int, default=None, help="fresh gate samples every k batches (gating.every_k)")
    ap.add_argument("--oracle-steps", type=int, default=50, help="DDIM steps of the naive oracle (50: Algorithm 1 as written)")
    ap.add_argument("--oracle-every", type=int, default=1, help="score the oracle at every m-th batch only (the "
                    "decisions compared); take m prime to every_k so that fresh and reused gates are both sampled")
    ap.add_argument("--variant", action="append", metavar="KEY=VALUE[,KEY=VALUE]",
                    help="another cheap gate scored beside the run's on the same model states (its decisions are "
                         "compared, not taken), e.g. gating.n_images=16,gating.every_k=8; repeatable")
    ap.add_argument("--runs-root", default="runs")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="the run's gate, e.g. gating.n_images=8")
    ap.add_argument("--record", default="benchmarks/results/bench_gating_batches",
                    help="where the per-batch record goes (.csv and .npz); '' for none")
    ap.add_argument("--record-only", action="store_true", help="skip the ungated and dry runs (no cost lines): "
                    "only the gated run with the oracle, for the record")
    ap.add_argument("--skip-dry", action="store_true", help="skip the dry run (gate computed, all batches trained): "
                    "its line reads nan; the SUMMARY needs only the ungated and gated runs")
    ap.add_argument("--replay", metavar="NPZ", help="replay rules on a saved record instead of training; each --rule "
                    "is pool=M,offset_draws=D,offset_every=E,offset_skip=S,fixed_offset=X")
    ap.add_argument("--rule", action="append", default=None)
    ap.add_argument("--skip-rates", metavar="SEEDS", help="only the gated run (no oracle) at each seed, e.g. 0,1,2: "
                    "its skip rate and CPU time")
    a = ap.parse_args()
    if a.replay:
        return replay_report(a.replay, a.rule or [""])
    over = {"finetune.validation_images": 0, "finetune.checkpoint_every": 10 ** 6, **overrides.parse_sets(a.set)}
    if a.steps is not None:
        over["finetune.steps"] = a.steps
    if a.every_k is not None:
        over["gating.every_k"] = a.every_k
    plain = config.load(a.params, {**over, "gating.enabled": False})
    gated = config.load(a.params, {**over, "gating.enabled": True})
    variants = [Variant(v, config.load(a.params, {**over, "gating.enabled": True, **overrides.parse_sets(v.split(","))}))
                for v in a.variant or []]
    g, steps = gated.gating, gated.finetune.steps
    emb = gated.embedding
    print(f"model {plain.model.base} at {plain.model.resolution} px, {steps} batches of {plain.finetune.batch_size}; "
          f"CLIP {emb.clip_model} ({emb.clip_pretrained or 'random weights'}); gate: {describe(g)}, resolution "
          f"{g.resolution or plain.model.resolution}; oracle: n={plain.finetune.batch_size}, {a.oracle_steps} DDIM steps"
          + (f", every {a.oracle_every} batches" if a.oracle_every > 1 else ""))
    if a.skip_rates:
        return skip_rates(a.params, over, [int(x) for x in a.skip_rates.split(",")], a.runs_root)
    nan = float("nan")
    w_plain, c_plain, _, _ = train(plain, a.runs_root) if not a.record_only else (nan, nan, None, None)
    w_dry, c_dry, _, _ = (train(gated, a.runs_root, dry_gate=True) if not (a.record_only or a.skip_dry)
                          else (nan, nan, None, None))
    store: dict = {}
    record: dict = {}
    w_gated, c_gated, s_gated, rows = train(gated, a.runs_root, oracle=store, oracle_steps=a.oracle_steps,
                                            oracle_every=a.oracle_every, variants=variants, record=record)
    pts = [r for r in rows if r.get("oracle_score") is not None]
    at = [r["step"] for r in pts]
    # nobody skips during calibration (quantile mode; with --oracle-every m the oracle's window spans m x the batches)
    warm = -(-g.warmup_batches // a.oracle_every) if g.mode == "quantile" else 0
    cheap = np.array([r["score"] for r in pts])
    taken = np.array([r["skipped"] for r in pts])               # the decisions the cheap gate took
    main_ = compare(gated, taken, store, at, warm)
    naive, again, same = main_["naive"], main_["again"], main_["same"]
    fresh = np.array([r["generated"] for r in pts])
    naive_s = float(np.mean([r["oracle_seconds"] for r in pts])) / 2     # two naive draws per batch (+ variants)
    cheap_s = float(np.mean([r["seconds"] for r in pts if r["generated"]]))
    print(f"wall time  ungated {w_plain:6.1f} s | gate computed, all batches trained {w_dry:6.1f} s "
          f"(ratio {w_dry / w_plain:.2f}x) | gated with skipping {w_gated:6.1f} s (ratio {w_gated / w_plain:.2f}x, "
          f"skip rate {s_gated['skip_rate']:.0%})")
    print(f"CPU time   ungated {c_plain:6.1f} s | gate computed, all batches trained {c_dry:6.1f} s "
          f"(ratio {c_dry / c_plain:.2f}x) | gated with skipping {c_gated:6.1f} s (ratio {c_gated / c_plain:.2f}x)")
    print(f"one gate: cheap {cheap_s:.2f} s vs naive full-step {naive_s:.2f} s ({naive_s / max(cheap_s, 1e-9):.0f}x); "
          f"naive gating at every batch would cost ~{(w_plain + steps * naive_s) / w_plain:.1f}x the ungated run")
    q = lambda v: "/".join(f"{x:.3f}" for x in np.quantile(v, [0.05, 0.5, 0.95]))  # noqa: E731
    print(f"scores q05/q50/q95: cheap {q(cheap)}, naive {q(naive)}, naive again {q(again)}")
    split = ", ".join(f"{same[m[warm:]].mean():.0%} where the cheap gate {what} ({m[warm:].sum()} batches)"
                      for m, what in ((fresh, "drew fresh samples"), (~fresh, "reused them")) if m[warm:].any())
    print(f"agreement of the decisions taken with the naive oracle's: {main_['agree']:.0%} of the "
          f"{main_['n']} batches{' after calibration' if warm else ''} ({split}); "
          f"oracle skip rate {main_['skip_naive']:.0%} vs cheap {main_['skip']:.0%}")
    print(f"the naive oracle against itself (another noise seed, same model states): {main_['self']:.0%} agreement"
          f"{' after calibration' if warm else ''}, the ceiling for any cheaper gate with this embedder")
    rho = spearmanr(cheap, naive).statistic if len(pts) > 2 else float("nan")
    rho_self = spearmanr(naive, again).statistic if len(pts) > 2 else float("nan")
    print(f"score rank correlation over all {len(pts)} batches: cheap vs naive {rho:.2f}, naive vs naive {rho_self:.2f}")
    print(f"chance-corrected (Cohen's kappa; agreement is high by itself when either side rarely skips): cheap vs "
          f"naive {main_['kappa']:+.2f}, naive vs naive {main_['kappa_self']:+.2f}")
    if variants:
        per_batch = s_gated["train_seconds"] / max(s_gated["trained"], 1)    # one trained batch, in this run
        print(f"\nother cheap gates on the same model states (decisions compared, not taken; wall ratio estimated as "
              f"1 - skip rate + gate seconds per batch / {per_batch:.3f} s, a trained batch in this run):")
        print(f"  {'gate':60s}  agree   self  ratio  kappa/self  skip/oracle  s/batch  est. wall")
        est = lambda secs, skip: 1 - skip + np.mean(secs) / per_batch  # noqa: E731
        lines = [("(run) " + describe(g, True), main_, [r["seconds"] for r in rows], s_gated["skip_rate"])]
        for v in variants:
            vr = [v.rows[s] for s in sorted(v.rows)]
            vw = -(-v.cfg.gating.warmup_batches // a.oracle_every) if v.cfg.gating.mode == "quantile" else 0
            lines.append((describe(v.cfg.gating, True), compare(v.cfg, [v.rows[s]["skipped"] for s in at], store, at, vw),
                          [r["seconds"] for r in vr], float(np.mean([r["skipped"] for r in vr]))))
        for name, c, secs, skip in lines:
            print(f"  {name:60s} {c['agree']:6.1%} {c['self']:6.1%} {c['ratio']:6.3f}  {c['kappa']:+.2f}/{c['kappa_self']:+.2f}"
                  f"   {c['skip']:4.0%}/{c['skip_naive']:4.0%}    {np.mean(secs):6.3f}  {est(secs, skip):.2f}x "
                  f"(all trained {est(secs, 0):.2f}x)")
    agree, n = main_["agree"], main_["n"]
    print(f"\nSUMMARY over {n} decisions ({g.mode} mode): agreement with the naive oracle {agree:.1%} | oracle "
          f"self-agreement {main_['self']:.1%} | ratio {main_['ratio']:.3f} (goal >= 0.95) | wall time "
          f"gated/ungated {w_gated / w_plain:.2f}x (goal <= 1.25; CPU time {c_gated / c_plain:.2f}x)"
          + ("" if n >= 100 else f" | only {n} decisions: use --steps for at least 100"))
    if a.record:        # after the figures, so that a failed save cannot lose them
        save_record(a.record, rows, store, record, gated)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
