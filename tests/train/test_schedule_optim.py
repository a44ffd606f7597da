import math

import pytest
import torch
from torch import nn

from cnnlab.config import OptimConfig, ScheduleConfig
from cnnlab.train.optim import build_optimizer, set_lr
from cnnlab.train.schedule import lr_factor


def test_cosine_and_constant_shapes() -> None:
    cos = ScheduleConfig(name="cosine")
    assert lr_factor(0, 100, cos) == pytest.approx(1.0)
    assert lr_factor(50, 100, cos) == pytest.approx(0.5)
    assert lr_factor(99, 100, cos) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    assert all(lr_factor(s, 100, ScheduleConfig(name="constant")) == 1.0 for s in range(100))


def test_step_schedule_drops_at_milestones() -> None:
    cfg = ScheduleConfig(name="step", milestones=(0.5, 0.75), gamma=0.1)
    assert lr_factor(49, 100, cfg) == 1.0
    assert lr_factor(50, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(80, 100, cfg) == pytest.approx(0.01)


def test_onecycle_rises_to_peak_then_anneals() -> None:
    cfg = ScheduleConfig(name="onecycle", pct_start=0.25)
    values = [lr_factor(s, 200, cfg) for s in range(200)]
    peak = max(range(200), key=values.__getitem__)
    assert 45 <= peak <= 55 and values[peak] == pytest.approx(1.0, abs=0.02)
    assert values[0] == pytest.approx(1 / 25, abs=0.01) and values[-1] < 0.01
    assert all(a <= b + 1e-12 for a, b in zip(values[:peak], values[1 : peak + 1]))
    assert all(a >= b - 1e-12 for a, b in zip(values[peak:], values[peak + 1 :]))


@pytest.mark.parametrize("name", ["cosine", "step", "constant", "onecycle"])
def test_linear_warmup_precedes_every_schedule(name: str) -> None:
    cfg = ScheduleConfig(name=name)
    warm = [lr_factor(s, 100, cfg, warmup_steps=10) for s in range(10)]
    assert warm == sorted(warm) and warm[0] == pytest.approx(0.1)  # 1/10 of the schedule's first value (1)
    assert lr_factor(10, 100, cfg, 10) == pytest.approx(1.0)


def test_no_weight_decay_on_norm_parameters_and_biases() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight), id(model[3].weight)}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_discriminative_learning_rates() -> None:
    from cnnlab.models.base import ClassifierModel

    class Tiny(ClassifierModel):
        head_prefixes = ("fc",)

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4, 2)

    model = Tiny()
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3), lr_scales={"backbone": 0.1})
    set_lr(opt, 1e-3)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model.body.weight)] == pytest.approx(1e-4) and lrs[id(model.fc.weight)] == pytest.approx(1e-3)
    assert isinstance(opt, torch.optim.AdamW)
