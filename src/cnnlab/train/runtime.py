"""Where and how the computation runs: device, mixed precision, memory format, processes.

The device is a parameter, never a global: :func:`resolve_runtime` turns the config's
``auto`` choices into a :class:`Runtime` once, and everything else takes it as an
argument. Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) it also joins the process
group: gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.config import TrainConfig
from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Runtime:
    """The resolved execution settings of one process."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None for full precision
    channels_last: bool
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def local(cls, device: torch.device | str = "cpu", *, channels_last: bool = False) -> Runtime:
        """One process on ``device`` in full precision (inspection, feature extraction, probes)."""
        return cls(torch.device(device), None, channels_last)

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs, checkpoints and pictures."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for the forward pass (a no-op in full precision)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """The training step's gradient scaler: active for fp16 autocast, whose narrow range
        would flush small gradients to zero; built disabled otherwise (it then steps as if absent)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


def resolve_runtime(cfg: TrainConfig) -> Runtime:
    """Pick the device, precision and memory format; join the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = launch_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(cfg.device)
        except RuntimeError:
            raise CnnlabError(f"unknown device '{cfg.device}'; use auto, cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CnnlabError("--device cuda was asked for but no CUDA GPU is available; use --device auto or cpu")
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp = {"auto": torch.bfloat16 if device.type == "cuda" else None, "bf16": torch.bfloat16, "fp16": torch.float16,
           "off": None}[cfg.amp]  # fmt: skip
    if amp == torch.float16 and device.type != "cuda":
        # fp16 exists for GPUs without bf16; on a CPU its autocast is slow where it is supported at all
        raise CnnlabError(f"--amp fp16 needs a CUDA GPU, and this run is on {device}; use --amp bf16 or off on a CPU")
    # auto: channels_last everywhere; measured 15-55% faster per step than NCHW on CPU too
    # (bench/bench_train.py), and the usual win for cuDNN with bf16 on CUDA.
    channels_last = cfg.channels_last in ("on", "auto")
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, amp, channels_last, rank, world_size, local_rank)


def prepare(model: nn.Module, runtime: Runtime, *, channels_last: bool = True, compile: bool = False) -> nn.Module:
    """Put ``model`` where ``runtime`` says it runs: the one place for device, memory format, DDP and compile.

    The model itself is moved in place (build the optimizer and EMA from it); what comes
    back is what the forward pass goes through: the model, or a DistributedDataParallel
    and/or ``torch.compile`` wrapper around it.

    Args:
        model: the model, on any device.
        runtime: where and how it runs.
        channels_last: apply the runtime's memory format (False keeps a caller's layout).
        compile: wrap the result in ``torch.compile``.
    """
    model.to(runtime.device)
    if channels_last and runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    wrapped = model
    if runtime.distributed:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[runtime.device] if runtime.device.type == "cuda" else None)
    if compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def all_reduce_sum(values: list[float], runtime: Runtime) -> list[float]:
    """Sum ``values`` over all processes (identity when not distributed)."""
    if not runtime.distributed:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=runtime.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        import torch.distributed as dist

        dist.barrier()


def broadcast_flag(flag: bool, runtime: Runtime) -> bool:
    """True on every process when ``flag`` is true on any (e.g. to stop together)."""
    if not runtime.distributed:
        return flag
    return all_reduce_sum([1.0 if flag else 0.0], runtime)[0] > 0


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms on request (and restored afterwards)."""
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
