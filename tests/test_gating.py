"""Gating rules (Algorithm 1): score aggregations, threshold modes, random-skip control, range checks."""
import logging

import numpy as np
import pytest
import torch

from lib.core import config
from lib.finetune import gating


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_aggregations_on_known_vectors():
    gen = _unit([[1, 0], [0, 1]])
    data = _unit([[1, 0], [1, 0]])
    assert gating.score(gen, data, "mean-pairwise") == pytest.approx(0.5)
    assert gating.score(gen, data, "max") == pytest.approx(1.0)
    assert gating.score(gen, data, "centroid") == pytest.approx(np.sqrt(0.5))
    with pytest.raises(config.ParamError, match="aggregation"):
        gating.score(gen, data, "median")


def test_absolute_rule_is_strictly_greater():
    d = gating.Decider(config.GatingConfig(threshold=0.3))
    assert d.decide(0.31) == (True, 0.3)
    assert d.decide(0.3) == (False, 0.3)
    assert not gating.Decider(config.GatingConfig(threshold=1.0)).decide(1.0)[0]
    assert gating.Decider(config.GatingConfig(threshold=-1.0)).decide(-0.999)[0]


def test_quantile_mode_calibrates_on_warmup_then_skips_the_target_fraction():
    cfg = config.GatingConfig(mode="quantile", skip_fraction=0.25, warmup_batches=100)
    d = gating.Decider(cfg)
    rng = np.random.default_rng(0)
    warm = [d.decide(s)[0] for s in rng.normal(0.9, 0.02, 100)]
    assert not any(warm)                                   # nothing skipped while calibrating
    later = [d.decide(s)[0] for s in rng.normal(0.9, 0.02, 4000)]
    assert abs(np.mean(later) - 0.25) < 0.03
    restored = gating.Decider(cfg, gating.GateState.from_dict(d.state.to_dict()))
    assert restored.threshold() == d.threshold()
    assert [restored.decide(s) for s in (0.95, 0.85, 0.99)] == [d.decide(s) for s in (0.95, 0.85, 0.99)]


def test_quantile_mode_holds_its_rate_when_scores_climb_during_training():
    # As the model learns, scores rise (demo: from ~0.6 to ~0.9): a threshold fixed on the first
    # batches would skip almost every later batch; the rolling window and the budget keep the target.
    cfg = config.GatingConfig(mode="quantile", skip_fraction=0.3, warmup_batches=10)
    d = gating.Decider(cfg)
    rng = np.random.default_rng(1)
    scores = np.r_[np.linspace(0.55, 0.92, 40), np.full(110, 0.9)] + rng.normal(0, 0.02, 150)
    skipped = np.array([d.decide(s)[0] for s in scores])
    assert not skipped[:10].any()
    assert 0.2 <= skipped[10:].mean() <= 0.3 + 1 / 140
    # the skips are the high-scoring batches of their window, not a random draw
    assert np.mean(scores[10:][skipped[10:]]) > np.mean(scores[10:][~skipped[10:]])


def test_random_skips_hit_the_rate_exactly_and_depend_on_the_seed():
    s = gating.random_skips(0.3, 200, seed=1)
    assert len(s) == 60 and all(0 <= i < 200 for i in s)
    assert s == gating.random_skips(0.3, 200, seed=1)
    assert s != gating.random_skips(0.3, 200, seed=2)
    assert gating.random_skips(0.0, 50, 0) == set() and len(gating.random_skips(1.0, 50, 0)) == 50


def test_threshold_outside_minus_one_one_is_refused():
    with pytest.raises(config.ParamError, match=r"outside \[-1, 1\]"):
        config.load("params/smoke.yaml", {"gating.threshold": 1.5})
    with pytest.raises(config.ParamError, match="cosine"):
        gating.check(config.GatingConfig(threshold=-2.0))


def test_single_process_broadcast_is_identity():
    assert gating.broadcast_decision(None, True, 0.4) == (True, 0.4)


def _stub_gate(monkeypatch, threshold, every_k=1, warmup=3):
    """A Gate whose samples are a fixed unit vector (no pipeline, no CLIP): a batch's score is then
    exactly the cosine its data vector is given."""
    monkeypatch.setattr(gating, "sampler", lambda pipe, steps: None)
    monkeypatch.setattr(gating, "generate", lambda pipe, prompts, *a, **k: torch.zeros(len(prompts), 4, 4))
    cfg = config.GatingConfig(mode="absolute", threshold=threshold, every_k=every_k, n_images=2,
                              warmup_batches=warmup)
    return gating.Gate(cfg, lambda imgs: np.tile([1.0, 0.0], (len(imgs), 1)), resolution=8, seed=0)


@pytest.mark.parametrize("every_k", [1, 3])
def test_absolute_gate_skips_exactly_the_batches_scored_above_the_threshold(monkeypatch, every_k):
    gate = _stub_gate(monkeypatch, 0.5, every_k)
    scores = [0.2, 0.9, 0.5, 0.51, -0.3, 0.99, 0.49, 0.8]
    rows = [gate(step, None, ["a", "b"], np.array([[s, np.sqrt(1 - s * s)]])) for step, s in enumerate(scores)]
    assert [r["score"] for r in rows] == pytest.approx(scores)
    assert [r["skipped"] for r in rows] == [s > 0.5 for s in scores]
    assert all(r["threshold"] == 0.5 for r in rows)
    assert [r["generated"] for r in rows] == [step % every_k == 0 for step in range(len(scores))]


WARMUP_CASES = {   # threshold, warm-up scores -> which warning (None: no warning)
    "all-skipped": (0.3, [0.91, 0.87, 0.95], "skipped all of the first 3 batches"),
    "none-skipped": (0.99, [0.61, 0.7, 0.65], "skipped none of the first 3 batches"),
    "some-skipped": (0.8, [0.75, 0.85, 0.79], None),
}


@pytest.mark.parametrize("case", list(WARMUP_CASES))
def test_absolute_threshold_that_skips_all_or_none_of_the_warmup_is_warned_with_the_score_range(case, caplog):
    thr, warm, expected = WARMUP_CASES[case]
    d = gating.Decider(config.GatingConfig(mode="absolute", threshold=thr, warmup_batches=3))
    with caplog.at_level(logging.WARNING, logger="lib.finetune.gating"):
        d.decide(warm[0]), d.decide(warm[1])
        assert not caplog.records                            # not before the window is full
        d.decide(warm[2])
        for s in (0.5, 0.99, 0.2):                           # later batches never warn again
            d.decide(s)
    if expected is None:
        assert not caplog.records
        return
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    lo, hi = min(warm), max(warm)
    assert expected in msg and f"ranged {lo:.3f}-{hi:.3f}" in msg and f"gating.threshold = {thr:g}" in msg
    assert "gating.mode: quantile" in msg and "gating.threshold" in msg.split("ranged")[1]


def test_warmup_warning_is_off_for_quantile_mode_for_warn_false_and_after_a_resume(caplog):
    with caplog.at_level(logging.WARNING, logger="lib.finetune.gating"):
        q = gating.Decider(config.GatingConfig(mode="quantile", warmup_batches=3, skip_fraction=0.3))
        quiet = gating.Decider(config.GatingConfig(threshold=0.3, warmup_batches=3), warn=False)
        first = gating.Decider(config.GatingConfig(threshold=0.3, warmup_batches=3))
        for s in (0.9, 0.9, 0.9, 0.9):
            q.decide(s), quiet.decide(s), first.decide(s)
        assert len(caplog.records) == 1                      # only ``first``
        resumed = gating.Decider(first.cfg, gating.GateState.from_dict(first.state.to_dict()))
        resumed.decide(0.9)
        assert len(caplog.records) == 1
        # a run resumed inside the window still warns once, with the scores from before the checkpoint
        early = gating.Decider(config.GatingConfig(threshold=0.3, warmup_batches=3))
        early.decide(0.81), early.decide(0.82)
        late = gating.Decider(early.cfg, gating.GateState.from_dict(early.state.to_dict()))
        late.decide(0.83)
    assert len(caplog.records) == 2 and "ranged 0.810-0.830" in caplog.records[1].getMessage()


def _drawing_gate(monkeypatch, **over):
    """A Gate whose draws are recorded: image value = the draw's noise seed (few-step) or -seed (full-step, DDIM),
    embedded as a unit vector at that angle, so pooled and offset scores can be computed by hand."""
    calls = []

    def generate(pipe, prompts, steps, resolution, seed, guidance, scheduler=None, autocast=None):
        calls.append((steps, seed))
        return torch.full((len(prompts), 2, 2), float(seed if steps == 8 else -seed))

    monkeypatch.setattr(gating, "sampler", lambda pipe, steps: None)
    monkeypatch.setattr(gating, "generate", generate)
    monkeypatch.setattr(gating.Gate, "full_step_vectors", lambda self, pipe, prompts, step, autocast=None: self.embed(
        generate(pipe, self._prompts(prompts), self.cfg.offset_steps, 8, self._noise_seed(step), 3.0)))
    cfg = config.GatingConfig(threshold=0.5, n_images=2, every_k=2, sampler_steps=8, **over)
    angle = lambda x: np.array([np.cos(0.1 * x), np.sin(0.1 * x)])  # noqa: E731
    embed = lambda imgs: np.stack([angle(float(i.mean())) for i in imgs])  # noqa: E731
    return gating.Gate(cfg, embed, resolution=8, seed=0), calls, angle


def test_default_gate_scores_its_latest_draw_only_and_keeps_todays_stage_keys(monkeypatch):
    gate, calls, angle = _drawing_gate(monkeypatch)
    data = np.array([[1.0, 0.0]])
    rows = [gate(step, None, ["a"], data) for step in range(4)]
    assert [c[1] for c in calls] == [0, 2]                   # fresh at 0 and 2, each from its own noise
    assert rows[3]["score"] == pytest.approx(angle(2)[0])
    plain = config.load("params/smoke.yaml", {"gating.enabled": True})
    assert plain.section_hash("gating") == config.load("params/smoke.yaml", {"gating.enabled": True, "gating.pool": 1,
                                                                           "gating.offset_steps": 30}).section_hash("gating")
    assert plain.section_hash("gating") != config.load("params/smoke.yaml", {"gating.enabled": True, "gating.pool": 3}
                                                       ).section_hash("gating")


def test_pooled_gate_scores_the_last_pool_draws_and_common_noise_reuses_one_seed(monkeypatch):
    gate, calls, angle = _drawing_gate(monkeypatch, pool=2, common_noise=False)
    data = np.array([[1.0, 0.0]])
    s = [gate(step, None, ["a"], data)["score"] for step in range(8)]
    assert s[1] == pytest.approx(angle(0)[0])                          # one draw so far
    assert s[3] == pytest.approx((angle(0)[0] + angle(2)[0]) / 2)      # draws at steps 0 and 2
    assert s[7] == pytest.approx((angle(4)[0] + angle(6)[0]) / 2)      # the oldest dropped
    crn, calls, _ = _drawing_gate(monkeypatch, common_noise=True)
    for step in range(6):
        crn(step, None, ["a"], data)
    assert [c[1] for c in calls] == [0, 0, 0]


def test_offset_draws_measure_the_few_step_bias_on_the_same_noise_and_subtract_it(monkeypatch):
    gate, calls, angle = _drawing_gate(monkeypatch, offset_draws=2, offset_every=2, offset_steps=50)
    data = angle(3)[None]                                 # few-step draw x scores cos(0.1 (x - 3)), full-step -x
    rows = [gate(step, None, ["a"], data) for step in range(12)]     # fresh at 0, 2, ..., 10
    full = [c for c in calls if c[0] == 50]
    assert [c[1] for c in full] == [2, 6]                  # every 2nd fresh draw, 2 of them, on the gate's noise
    sc = lambda x: float(angle(x) @ data[0])  # noqa: E731
    off = [sc(2) - sc(-2), sc(6) - sc(-6)]                 # few-step minus full-step score
    assert gate.decider.state.offsets == pytest.approx(off) and abs(off[1]) > 0.1
    assert rows[1]["score"] == pytest.approx(sc(0))       # nothing measured yet: no correction
    assert rows[3]["score"] == pytest.approx(sc(2) - off[0])
    assert rows[10]["score"] == pytest.approx(sc(10) - np.mean(off))
    resumed = gating.GateState.from_dict(gate.decider.state.to_dict())
    assert resumed.offsets == pytest.approx(off)
    with pytest.raises(config.ParamError, match="gating.pool"):
        gating.check(config.GatingConfig(pool=0))


def test_fixed_score_offset_is_subtracted_until_offset_draws_measure_one(monkeypatch):
    data = np.array([[1.0, 0.0]])
    fixed, _, angle = _drawing_gate(monkeypatch, score_offset=0.25)
    assert [fixed(s, None, ["a"], data)["score"] for s in (0, 1)] == pytest.approx([angle(0)[0] - 0.25] * 2)
    both, _, _ = _drawing_gate(monkeypatch, score_offset=0.25, offset_draws=1, offset_every=2)
    rows = [both(s, None, ["a"], data) for s in range(4)]
    assert rows[0]["score"] == pytest.approx(angle(0)[0] - 0.25)         # nothing measured yet: the fixed offset
    assert rows[3]["score"] == pytest.approx(angle(2)[0] - both.decider.state.offsets[0])   # then the measured one
    plain = config.load("params/smoke.yaml", {"gating.enabled": True})
    assert plain.section_hash("gating") == config.load(
        "params/smoke.yaml", {"gating.enabled": True, "gating.score_offset": 0.0}).section_hash("gating")
    assert plain.section_hash("gating") != config.load(
        "params/smoke.yaml", {"gating.enabled": True, "gating.score_offset": 0.0076}).section_hash("gating")
