"""Tests for mixup / CutMix in the training step (cnnlab.train.mix), and exact resume with them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.checkpoint import load_checkpoint
from cnnlab.config import RunConfig, TrainConfig, load_run_config
from cnnlab.run import build_model, load_data
from cnnlab.train.fit import fit
from cnnlab.train.loop import TrainStep
from cnnlab.train.mix import Mix, MixDraw, mixed_loss
from cnnlab.train.runtime import resolve_runtime


def batch(n: int = 8, c: int = 2, h: int = 10, w: int = 12) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0))


def test_mixing_is_off_by_default():
    tc = TrainConfig()
    assert (tc.mixup, tc.cutmix, tc.mix_prob) == (0.0, 0.0, 1.0)
    assert Mix(tc.mixup, tc.cutmix, tc.mix_prob, tc.seed).draw(0, 8, 10, 12) is None
    assert Mix(mixup=0.2, prob=0.0).draw(0, 8, 10, 12) is None


def test_draws_depend_on_seed_and_step_only():
    mix = Mix(mixup=0.4, cutmix=1.0, seed=3)
    a, b = mix.draw(5, 8, 10, 12), mix.draw(5, 8, 10, 12)
    assert torch.equal(a.perm, b.perm) and (a.lam, a.box) == (b.lam, b.box)
    others = [mix.draw(step, 8, 10, 12) for step in range(6, 26)]
    assert any(d.lam != a.lam for d in others) and any(not torch.equal(d.perm, a.perm) for d in others)
    assert Mix(mixup=0.4, cutmix=1.0, seed=4).draw(5, 8, 10, 12).lam != a.lam
    # Both on: mixup and CutMix batches with about equal odds; mix_prob leaves the rest unmixed.
    draws = [Mix(mixup=0.4, cutmix=1.0, prob=0.5).draw(step, 8, 10, 12) for step in range(400)]
    mixed = [d for d in draws if d is not None]
    assert 160 < len(mixed) < 240
    cut = sum(d.box is not None for d in mixed)
    assert 0.35 * len(mixed) < cut < 0.65 * len(mixed)


def test_mixup_blends_the_pairs_and_lam_follows_beta():
    x = batch()
    mix = Mix(mixup=0.4)
    d = mix.draw(0, 8, 10, 12)
    assert d.box is None and sorted(d.perm.tolist()) == list(range(8))
    assert torch.allclose(mix.apply(x, d), d.lam * x + (1 - d.lam) * x[d.perm], atol=1e-6)
    # Beta(0.4, 0.4): mean 1/2, variance 1 / (4 * (2 * 0.4 + 1)) = 0.139.
    lams = torch.tensor([mix.draw(step, 8, 10, 12).lam for step in range(3000)])
    assert abs(lams.mean().item() - 0.5) < 0.03 and abs(lams.var().item() - 1 / 7.2) < 0.02


def test_cutmix_pastes_one_box_and_lam_is_the_unpasted_area():
    x = batch(n=8, h=10, w=12)
    mix = Mix(cutmix=1.0)
    for step in range(50):
        d = mix.draw(step, 8, 10, 12)
        out = mix.apply(x, d)
        top, bottom, left, right = d.box
        inside = torch.zeros(10, 12, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        assert torch.equal(out[:, :, inside], x[d.perm][:, :, inside])
        assert torch.equal(out[:, :, ~inside], x[:, :, ~inside])
        assert d.lam == pytest.approx(1 - inside.sum().item() / 120)
    assert not torch.equal(mix.apply(x, d), x) or d.lam == 1.0


def test_mixed_loss_equals_the_hand_computed_mixture_with_label_smoothing():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    y = torch.tensor([0, 2, 1, 1])
    d = MixDraw(perm=torch.tensor([2, 0, 3, 1]), lam=0.3, box=None)
    eps, k = 0.1, 3

    def smoothed_ce(target: torch.Tensor) -> float:
        logp = logits.log_softmax(1)
        per_sample = -(1 - eps) * logp.gather(1, target[:, None]).squeeze(1) - eps / k * logp.sum(1)
        return per_sample.mean().item()

    loss, labels = mixed_loss(nn.CrossEntropyLoss(label_smoothing=eps), logits, y, d)
    assert loss.item() == pytest.approx(0.3 * smoothed_ce(y) + 0.7 * smoothed_ce(y[d.perm]), rel=1e-6)
    assert torch.equal(labels, y[d.perm])  # lam < 0.5: the partner's label dominates
    _, labels = mixed_loss(nn.CrossEntropyLoss(), logits, y, MixDraw(d.perm, 0.5, None))
    assert torch.equal(labels, y)


def test_train_step_mixes_and_counts_accuracy_against_the_dominant_label():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 10 * 12, 3))
    x, y = batch(), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    runtime = resolve_runtime(TrainConfig(device="cpu"))
    mix = Mix(mixup=0.4, seed=1)
    ts = TrainStep(torch.optim.SGD(model.parameters(), lr=0.0), nn.CrossEntropyLoss(), lambda s: 0.0, runtime,
                   mix=mix, step=7)  # fmt: skip
    loss, logits = ts(model, x.clone(), y)
    d = mix.draw(7, 8, 10, 12)
    expected, dominant = mixed_loss(nn.CrossEntropyLoss(), model(mix.apply(x, d)), y, d)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(ts.labels, dominant)
    plain = TrainStep(torch.optim.SGD(model.parameters(), lr=0.0), nn.CrossEntropyLoss(), lambda s: 0.0, runtime)
    loss, _ = plain(model, x.clone(), y)
    assert loss.item() == pytest.approx(nn.CrossEntropyLoss()(model(x), y).item(), rel=1e-6)
    assert torch.equal(plain.labels, y)


# --- exact resume ------------------------------------------------------------------


def _cfg() -> RunConfig:
    return load_run_config(None, {
        "data": {"source": "synthetic:classes=3,n=240,size=12,channels=1", "augment": "flip,trivial,erase:0.5"},
        "model": {"name": "simple", "options": {"spec": "c8-p-c16-p"}},
        "optim": {"lr": 0.05},
        "train": {"epochs": 3, "batch_size": 16, "checkpoint_minutes": 0, "mixup": 0.4, "cutmix": 1.0,
                  "mix_prob": 0.8, "device": "cpu", "ema": 0.9},
    })  # fmt: skip


def _train(cfg: RunConfig, run_dir: Path, *, stop_after: int | None = None, resume: dict | None = None):
    splits = load_data(cfg)
    model = build_model(cfg, splits)
    stop = (lambda record: record["epoch"] + 1 >= stop_after) if stop_after else None
    history = fit(model, splits, cfg, run_dir=run_dir, resume=resume, on_epoch_end=stop, verbose=False)
    return history, load_checkpoint(run_dir / "last.pt")


def test_resume_with_the_new_augmentations_matches_an_uninterrupted_run(tmp_path):
    cfg = _cfg()
    reference, ref_state = _train(cfg, tmp_path / "reference")
    _, mid = _train(cfg, tmp_path / "run", stop_after=1)
    assert mid["epoch"] == 1
    resumed, state = _train(cfg, tmp_path / "run", resume=mid)
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")
    assert [{k: r[k] for k in keys} for r in resumed.records] == [{k: r[k] for k in keys} for r in reference.records]
    a, b = state["model"], ref_state["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(math.isfinite(r["train_loss"]) for r in reference.records)
