"""The peer: Fashion-MNIST trained the way a typical PyTorch user writes it, within M minutes.

The baseline of ``bench/bench_budget.py``, and runnable alone. Deliberately ordinary:
``torchvision.datasets.FashionMNIST`` + ``DataLoader(num_workers=2, shuffle=True)`` +
per-sample ``transforms.v2`` (flip, to tensor, normalise with the usual Fashion-MNIST
constants), a small VGG-style net in plain ``torch.nn`` (2 x [conv3x3-BN-ReLU,
conv3x3-BN-ReLU, maxpool2] with 32 then 64 channels, then Linear 256 - ReLU - Dropout -
Linear 10), Adam with ``OneCycleLR(max_lr=3e-3)``, the whole 60,000 training images (no
validation split) and one test pass at the end.

It is an *informed* peer: it times its first 30 training batches (on a throwaway copy of
the model, so training itself starts fresh) and picks the number of epochs that lets the
whole run, test pass included, end within ``--minutes``; the one-cycle schedule spans
those epochs. Its last stdout line is one JSON object:
``{"test_acc": ..., "epochs": ..., "wall_s": ...}`` (``wall_s`` counted from the
script's first line, before ``import torch``); epoch lines go to stderr.

    python bench/peer_script.py --minutes 5 [--seed 0] [--data-root data] [--train-subset N]
"""

from __future__ import annotations

import time

START = time.perf_counter()  # before the heavy imports: they are part of the peer's time

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

BATCH_SIZE = 128
TEST_BATCH_SIZE = 256
MAX_LR = 3e-3  # OneCycleLR's peak; it starts at MAX_LR / 25
MEAN, STD = 0.2860, 0.3530  # the Fashion-MNIST statistics every tutorial quotes
TIMED_BATCHES = 30
# Evaluating an image costs about a third of training on it (no backward pass, no optimizer).
EVAL_SPEEDUP = 3.0
# Kept back from the budget for what the 30 timed batches cannot foresee (interpreter
# start-up before the first line, worker shutdown, timing noise): 3% and 2 s.
SAFETY_FRACTION, SAFETY_S = 0.03, 2.0


class Net(nn.Module):
    """2 x (conv3x3-BN-ReLU, conv3x3-BN-ReLU, maxpool2) at 32 then 64 channels, then an MLP head."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )  # fmt: skip

        self.features = nn.Sequential(block(1, 32), block(32, 64))  # 28x28 -> 14x14 -> 7x7
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(256, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def loaders(root: str, train_subset: int | None, seed: int) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """The training loader (a seeded random subset of ``train_subset`` images when given) and the test loader."""
    from torchvision import datasets
    from torchvision.transforms import v2

    train_tf = v2.Compose([
        v2.RandomHorizontalFlip(), v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize((MEAN,), (STD,)),
    ])  # fmt: skip
    test_tf = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize((MEAN,), (STD,))])
    # download=True as every tutorial has it: it only downloads when the files are missing.
    train_set = datasets.FashionMNIST(root, train=True, download=True, transform=train_tf)
    test_set = datasets.FashionMNIST(root, train=False, download=True, transform=test_tf)
    if train_subset is not None:
        if not 1 <= train_subset <= len(train_set):
            sys.exit(f"peer_script: --train-subset must be in [1, {len(train_set)}], got {train_subset}")
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))
        train_set = torch.utils.data.Subset(train_set, order[:train_subset].tolist())
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True, num_workers=2)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=TEST_BATCH_SIZE, num_workers=2)
    return train_loader, test_loader


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """One step; returns the batch's summed loss and correct count (``.item()`` waits for the device)."""
    out = model(x)
    loss = F.cross_entropy(out, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item() * len(y), (out.argmax(1) == y).sum().item()


def time_batches(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device) -> tuple[float, float]:
    """Seconds of the first batch (worker start-up included) and the mean of the next ones.

    Trains a copy of ``model`` for :data:`TIMED_BATCHES` batches at one-cycle's starting LR,
    then throws it away: the real run starts from the untouched model.
    """
    probe = copy.deepcopy(model).train()
    optimizer = torch.optim.Adam(probe.parameters(), lr=MAX_LR / 25)
    times = []
    batches = iter(loader)
    tic = time.perf_counter()
    for _ in range(TIMED_BATCHES):
        try:
            x, y = next(batches)
        except StopIteration:  # a small training set: start another pass (its start-up counts too)
            batches = iter(loader)
            x, y = next(batches)
        train_step(probe, optimizer, x.to(device), y.to(device))
        toc = time.perf_counter()
        times.append(toc - tic)
        tic = toc
    del batches  # shuts the workers down
    return times[0], statistics.fmean(times[1:])


def fit_epochs(budget_s: float, first_s: float, batch_s: float, train_batches: int, test_images: int) -> int:
    """The whole epochs that fit in what is left of ``budget_s`` after the test pass (at least 1)."""
    epoch_s = first_s + batch_s * (train_batches - 1)  # each epoch starts its workers again
    test_s = first_s + batch_s / EVAL_SPEEDUP * test_images / BATCH_SIZE
    left = budget_s * (1 - SAFETY_FRACTION) - SAFETY_S - (time.perf_counter() - START) - test_s
    return max(1, math.floor(left / epoch_s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, required=True, help="wall-time budget of the whole run, in minutes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default="data", help="torchvision's root folder (holding FashionMNIST/raw) (default: data)")
    parser.add_argument("--train-subset", type=int, metavar="N", help="train on a random subset of N images (default: all)")
    args = parser.parse_args()
    if not (math.isfinite(args.minutes) and args.minutes > 0):
        parser.error(f"--minutes must be a positive number, got {args.minutes}")

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_loader, test_loader = loaders(args.data_root, args.train_subset, args.seed)
    model = Net().to(device)
    first_s, batch_s = time_batches(model, train_loader, device)
    epochs = fit_epochs(args.minutes * 60, first_s, batch_s, len(train_loader), len(test_loader.dataset))
    print(f"timed {TIMED_BATCHES} batches: first {first_s:.2f} s, then {batch_s * 1000:.1f} ms each -> {epochs} epochs",
          file=sys.stderr, flush=True)  # fmt: skip

    optimizer = torch.optim.Adam(model.parameters(), lr=MAX_LR)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=MAX_LR, epochs=epochs, steps_per_epoch=len(train_loader))
    for epoch in range(epochs):
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for x, y in train_loader:
            batch_loss, batch_correct = train_step(model, optimizer, x.to(device), y.to(device))
            scheduler.step()
            loss_sum, correct, total = loss_sum + batch_loss, correct + batch_correct, total + len(y)
        print(f"epoch {epoch + 1}/{epochs}: loss {loss_sum / total:.4f} acc {correct / total:.4f} "
              f"({time.perf_counter() - START:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
    test_acc = correct / len(test_loader.dataset)
    print(json.dumps({"test_acc": test_acc, "epochs": epochs, "wall_s": time.perf_counter() - START}), flush=True)


if __name__ == "__main__":
    main()
