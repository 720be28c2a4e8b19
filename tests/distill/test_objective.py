"""Mixing conventions and α / temperature schedules."""

import math

import pytest

from megatron_kd.config.schema import ScheduleConfig
from megatron_kd.distill.objective import mix_weights
from megatron_kd.distill.schedules import scheduled_value


def test_mix_weights():
    w = mix_weights("convex", 0.0)
    assert (w.ce, w.kd) == (1.0, 0.0)
    w = mix_weights("convex", 0.3)
    assert (w.ce, w.kd) == pytest.approx((0.7, 0.3))
    w = mix_weights("keep_ce", 0.3)
    assert (w.ce, w.kd) == (1.0, 0.3)
    w = mix_weights("keep_kd", 0.3)
    assert (w.ce, w.kd) == pytest.approx((0.7, 1.0))


def test_schedules():
    const = ScheduleConfig()
    assert scheduled_value(0.5, const, 0.7) == 0.5
    lin = ScheduleConfig(kind="linear", final=0.1)
    assert scheduled_value(0.5, lin, 0.0) == 0.5 and scheduled_value(0.5, lin, 1.0) == pytest.approx(0.1)
    assert scheduled_value(0.5, lin, 0.5) == pytest.approx(0.3)
    cos = ScheduleConfig(kind="cosine", final=0.0)
    assert scheduled_value(1.0, cos, 0.5) == pytest.approx(0.5)
    assert scheduled_value(1.0, cos, 1.0) == pytest.approx(0.0, abs=1e-12)
    wsd = ScheduleConfig(kind="wsd", final=0.0, warmup_fraction=0.1, decay_fraction=0.2)
    values = [scheduled_value(0.6, wsd, p / 100) for p in range(101)]
    assert values[0] == 0.0 and values[5] == pytest.approx(0.3)  # warming up
    assert all(v == 0.6 for v in values[10:81])  # stable
    assert values[90] == pytest.approx(0.3) and values[100] == pytest.approx(0.0, abs=1e-12)  # decay
    assert all(not math.isnan(v) for v in values)


def _kd(**over):
    from megatron_kd.config.schema import KDConfig
    from megatron_kd.distill.objective import KDObjective

    return KDObjective.from_config(KDConfig(**over), 48)


def _batch(seed=0, s=5, b=3, width=48):
    import torch

    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(s, b, width, generator=g) * 3
    zt = torch.randn(s, b, width, generator=g) * 3
    labels = torch.randint(0, width, (s, b), generator=g)
    mask = (torch.rand(s, b, generator=g) > 0.25).float()
    return zs, zt, labels, mask


def test_one_entrance_online_route_gives_mixed_loss_and_one_report_type():
    """make_loss_func on the teacher's logits (TP=1, no group): the one-pass objective's numbers
    as the report pairs (masked sum, token count), teacher metrics included."""
    import torch

    from megatron_kd.distill.mixed import mixed_kd_loss
    from megatron_kd.distill.objective import OnlineLogits, make_loss_func

    kd = _kd(alpha=0.4, temperature=2.0)
    zs, zt, labels, mask = _batch()
    total_ref, sums_ref = mixed_kd_loss(zs.clone(), zt, labels, mask, kd.opts.at(2.0), ce_weight=0.6,
                                        kd_weight=0.4, metrics=True)
    loss_func = make_loss_func(kd, 0.4, 2.0, labels, mask, OnlineLogits(zt), None)
    total, count, reports = loss_func(zs.clone())
    assert int(count) == int(mask.sum())
    assert torch.allclose(total, total_ref)
    assert set(reports) == {"loss", "lm loss", "kd loss", "teacher lm loss", "teacher entropy", "top1 agreement"}
    expected = {"loss": total_ref, "lm loss": sums_ref["ce"], "kd loss": sums_ref["kd"],
                "teacher lm loss": sums_ref["teacher_ce"], "teacher entropy": sums_ref["teacher_entropy"],
                "top1 agreement": sums_ref["top1_agreement"]}
    for key, value in expected.items():
        assert reports[key].shape == (2,) and float(reports[key][1]) == float(mask.sum())
        assert float(reports[key][0]) == pytest.approx(float(value), rel=1e-5), key
    # without teacher metrics the same route reports the three loss pairs only
    _, _, plain = make_loss_func(_kd(alpha=0.4, teacher_metrics=False), 0.4, 1.0, labels, mask,
                                 OnlineLogits(zt), None)(zs.clone())
    assert set(plain) == {"loss", "lm loss", "kd loss"}


def test_one_entrance_cache_route_sparse_and_dense_agree_with_cached_teacher_metrics():
    """A top-K cache's rows: the sparse objective (forward KL) and the dense route on rebuilt
    logits (reverse KL) each report the teacher metrics from the cached values, equal to those
    the online route computes from the full teacher."""
    from megatron_kd.distill.cache import teacher_rows
    from megatron_kd.distill.objective import CachedRows, OnlineLogits, choose_route, make_loss_func

    zs, zt, labels, mask = _batch(seed=1)
    rows = teacher_rows(zt, labels, 48, 48, None)  # K = V: the kept set is everything
    kd = _kd(alpha=0.5, top_k=48)
    cached = CachedRows(rows)
    assert choose_route(kd, 0.5, 1.0, cached) == "sparse" and choose_route(kd, 0.0, 1.0, cached) == "separate"
    _, _, online = make_loss_func(kd, 0.5, 1.0, labels, mask, OnlineLogits(zt), None)(zs.clone())
    _, _, sparse = make_loss_func(kd, 0.5, 1.0, labels, mask, cached, None)(zs.clone())
    rkl = _kd(alpha=0.5, kind="reverse_kl")
    assert choose_route(rkl, 0.5, 1.0, cached) == "one_pass"  # on teacher logits rebuilt from the rows
    _, _, dense = make_loss_func(rkl, 0.5, 1.0, labels, mask, cached, None)(zs.clone())
    assert set(sparse) == set(online) == set(dense)
    for key in online:
        assert float(sparse[key][0]) == pytest.approx(float(online[key][0]), rel=1e-4, abs=1e-4), key
    for key in ("lm loss", "teacher lm loss", "teacher entropy", "top1 agreement"):
        assert float(dense[key][0]) == pytest.approx(float(online[key][0]), rel=1e-4, abs=1e-4), key
