"""Gating rules (Algorithm 1): score aggregations, threshold modes, random-skip control, range checks."""
import numpy as np
import pytest

from lib import config, gating


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
