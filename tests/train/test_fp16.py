"""``--amp fp16``: float16 autocast with a gradient scaler whose state lives in the checkpoints.

On a CPU, fp16 is refused in one line (its autocast is slow there, and bf16 or fp32 serve);
the scaler's plumbing is tested on the CPU anyway: a disabled scaler steps exactly as the old
step did, an enabled one (without autocast, scaling by powers of two) too, it skips a step
whose gradients overflow, and its state survives a checkpoint and a resume. The CUDA path
itself runs where a GPU is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.checkpoint import load_checkpoint, validate_checkpoint
from cnnlab.config import TrainConfig
from cnnlab.errors import CnnlabError
from cnnlab.run import build_model, load_data, run_training
from cnnlab.train.fit import Trainer
from cnnlab.train.loop import TrainStep
from cnnlab.train.runtime import Runtime, resolve_runtime

DATA = "synthetic:classes=3,n=240,size=12,channels=1"
CUDA = torch.cuda.is_available()


def test_fp16_on_a_cpu_is_refused_in_one_line(tiny_config, tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match=r"^--amp fp16 needs a CUDA GPU, and this run is on cpu; use --amp bf16 or off"):
        resolve_runtime(TrainConfig(amp="fp16", device="cpu"))
    with pytest.raises(CnnlabError, match="needs a CUDA GPU"):
        run_training(tiny_config(DATA, epochs=1, train={"amp": "fp16"}), tmp_path / "run", verbose=False)
    assert not (tmp_path / "run").exists()  # refused before the run folder exists


def test_only_fp16_gets_an_enabled_scaler() -> None:
    cpu = torch.device("cpu")
    assert not Runtime(cpu, None, False).grad_scaler().is_enabled()
    assert not Runtime(cpu, torch.bfloat16, False).grad_scaler().is_enabled()
    assert Runtime(cpu, torch.float16, False).grad_scaler().is_enabled()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _batches(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def _train(scaler: torch.amp.GradScaler | None, *, clip: float | None = 1.0, accumulate: int = 1) -> nn.Module:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = TrainStep(opt, nn.CrossEntropyLoss(label_smoothing=0.1), lambda s: 0.1, Runtime.local("cpu"),
                     grad_clip=clip, scaler=scaler, accumulate=accumulate)  # fmt: skip
    for x, y in _batches():
        step(model, x, y)
    return model


def _reference() -> nn.Module:
    """The training step as it was before scalers and accumulation, written out."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    for x, y in _batches():
        loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_the_step_is_unchanged_without_a_scaler_with_a_disabled_one_and_with_a_power_of_two_scale() -> None:
    reference = _reference()
    assert _same(_train(None), reference)
    assert _same(_train(torch.amp.GradScaler("cpu", enabled=False)), reference)  # what fit gives every non-fp16 run
    # enabled: the loss x 2^12 and the gradients / 2^12 (before clipping) are exact in float32
    assert _same(_train(torch.amp.GradScaler("cpu", init_scale=2.0**12)), reference)
    assert not _same(_train(None, clip=0.01), reference)  # the comparison can fail


def test_a_scaler_skips_a_step_whose_gradients_overflow_and_backs_off() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    step = TrainStep(opt, nn.CrossEntropyLoss(), lambda s: 0.1, Runtime.local("cpu"), scaler=scaler)
    x, y = _batches(1)[0]
    step(model, x * float("inf"), y)  # inf activations: NaN gradients, as an fp16 overflow gives
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)  # the update was skipped
    assert scaler.get_scale() == 2.0**15 and step.step == 1  # the scale halves; the schedule moves on
    step(model, x, y)
    assert not all(torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_the_scaler_state_goes_into_last_pt_and_comes_back_on_resume(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config(DATA, epochs=2, train={"batch_size": 16})
    splits = load_data(cfg)
    runtime = Runtime.local("cpu")
    trainer = Trainer(build_model(cfg, splits), splits, cfg, runtime, run_dir=tmp_path / "run", verbose=False)
    assert not trainer.step.scaler.is_enabled()  # fp32: disabled, and last.pt holds none
    # the fp16 plumbing on a CPU: an enabled scaler that grows every 2 steps, in fp32 (exact)
    trainer.step.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    trainer.run()
    state = load_checkpoint(tmp_path / "run" / "last.pt", resumable=True)
    saved = trainer.step.scaler.state_dict()
    assert state["scaler"] == saved and saved["scale"] > 2.0**10  # grown: not the initial state
    resumed = Trainer(build_model(cfg, splits), splits, cfg, runtime, verbose=False)
    resumed.step.scaler = torch.amp.GradScaler("cpu")
    resumed.restore(state)
    assert resumed.step.scaler.state_dict() == saved
    # a damaged entry is named when the checkpoint is read
    with pytest.raises(CnnlabError, match=r"gradient scaler state \('scaler'\) holds no loss scale"):
        validate_checkpoint({**state, "scaler": {"scale": "big"}}, tmp_path / "last.pt", resumable=True)


@pytest.mark.skipif(not CUDA, reason="fp16 autocast with a gradient scaler runs on CUDA only")
def test_fp16_trains_on_cuda_and_resumes_with_its_scale(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config(DATA, epochs=2, train={"amp": "fp16", "device": "cuda", "batch_size": 16})
    summary = run_training(cfg, tmp_path / "run", verbose=False)
    assert summary["test_acc"] > 0.6
    state = load_checkpoint(tmp_path / "run" / "last.pt", resumable=True)
    assert isinstance(state["scaler"]["scale"], float) and state["scaler"]["scale"] > 0
    splits = load_data(cfg)
    trainer = Trainer(build_model(cfg, splits), splits, cfg, resolve_runtime(cfg.train), verbose=False)
    assert trainer.step.scaler.is_enabled() and trainer.runtime.amp_dtype == torch.float16
    trainer.restore(state)
    assert trainer.step.scaler.state_dict() == state["scaler"]
