"""The device-resident loader: coverage, order, rank slices, determinism, normalisation."""

import numpy as np
import pytest
import torch

from cnnlab.data.loader import DeviceLoader, derive_seed
from cnnlab.data.imageset import ImageSet
from cnnlab.errors import CnnlabError


def _data(n: int = 103, c: int = 1, classes: int = 4) -> ImageSet:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, c, 6, 6), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256  # lets a test recover which image a row came from
    return ImageSet(images, np.arange(n) % classes, tuple(f"c{i}" for i in range(classes)))


def _noise_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random brightness: enough to tell generators apart."""
    return x * torch.rand(x.shape[0], 1, 1, 1, generator=gen, device=x.device)


def _ids(loader: DeviceLoader) -> list[int]:
    return [int(i) for i in loader.order()]


def test_train_epoch_is_a_permutation_dropping_the_last_partial_batch() -> None:
    loader = DeviceLoader(_data(), batch_size=10, mean=(0.5,), std=(0.25,), seed=1)
    batches = list(loader)
    assert len(batches) == len(loader) == 10 and all(x.shape == (10, 1, 6, 6) for x, _ in batches)
    order = _ids(loader)
    assert sorted(order) == list(range(103))
    seen = torch.cat([y for _, y in batches]).tolist()
    assert seen == [order[i] % 4 for i in range(100)]


def test_eval_keeps_order_and_every_image() -> None:
    loader = DeviceLoader(_data(), batch_size=10, mean=(0.5,), std=(0.25,), train=False, augment=_noise_augment)
    batches = list(loader)
    assert len(batches) == 11 and batches[-1][0].shape[0] == 3
    assert torch.cat([y for _, y in batches]).tolist() == [i % 4 for i in range(103)]


def test_normalisation_uses_the_given_statistics() -> None:
    data = _data(200, c=3)
    mean = tuple(float(m) for m in data.images.mean(axis=(0, 2, 3)) / 255)
    std = tuple(float(s) for s in data.images.std(axis=(0, 2, 3)) / 255)
    x = torch.cat([b for b, _ in DeviceLoader(data, batch_size=64, mean=mean, std=std, train=False)])
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-5, rtol=0)
    first = torch.from_numpy(data.images[0]).float() / 255
    torch.testing.assert_close(x[0], (first - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))


def test_augmented_path_normalises_like_the_fused_path() -> None:
    data = _data()
    plain = DeviceLoader(data, batch_size=8, mean=(0.4,), std=(0.3,), train=False)
    augmented = plain.iter_augmented(lambda x, g: x, seed=0)  # same order, through the augmentation branch
    torch.testing.assert_close(next(iter(plain))[0], next(augmented)[0], atol=1e-6, rtol=0)


def test_seeded_epochs_are_reproducible_and_different() -> None:
    a = DeviceLoader(_data(), batch_size=10, mean=(0.5,), std=(0.25,), seed=3, augment=_noise_augment)
    b = DeviceLoader(_data(), batch_size=10, mean=(0.5,), std=(0.25,), seed=3, augment=_noise_augment)
    xa = torch.cat([x for x, _ in a])
    xb = torch.cat([x for x, _ in b])
    assert torch.equal(xa, xb)
    a.set_epoch(1)
    assert _ids(a) != _ids(b)  # a new epoch reshuffles
    c = DeviceLoader(_data(), batch_size=10, mean=(0.5,), std=(0.25,), seed=4, augment=_noise_augment)
    assert _ids(c) != _ids(b)


def test_iter_from_reproduces_the_tail_of_an_epoch() -> None:
    loader = DeviceLoader(_data(), batch_size=10, mean=(0.5,), std=(0.25,), seed=5, augment=_noise_augment)
    loader.set_epoch(2)
    full = list(loader)
    resumed = DeviceLoader(_data(), batch_size=10, mean=(0.5,), std=(0.25,), seed=5, augment=_noise_augment)
    resumed.load_state_dict(loader.state_dict())
    tail = list(resumed.iter_from(6))
    assert len(tail) == 4
    for (x1, y1), (x2, y2) in zip(full[6:], tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("train", [True, False])
def test_ranks_take_disjoint_slices(train: bool) -> None:
    data = _data()
    loaders = [
        DeviceLoader(data, batch_size=5, mean=(0.5,), std=(0.25,), seed=2, rank=r, world_size=3, train=train) for r in range(3)
    ]
    orders = [set(_ids(lo)) for lo in loaders]
    assert not (orders[0] & orders[1]) and not (orders[1] & orders[2]) and not (orders[0] & orders[2])
    total = sum(len(o) for o in orders)
    assert total == (102 if train else 103)  # training drops the remainder so ranks stay in step
    assert len({len(lo) for lo in loaders}) == 1 or not train


def test_balanced_sampling_evens_out_classes() -> None:
    labels = np.array([0] * 900 + [1] * 100)
    data = ImageSet(np.zeros((1000, 1, 2, 2), np.uint8), labels, ("big", "small"))
    weights = 1.0 / np.bincount(labels)[labels]
    loader = DeviceLoader(data, batch_size=100, mean=(0.5,), std=(0.5,), sample_weights=weights)
    drawn = torch.cat([y for _, y in loader])
    assert 0.4 < drawn.float().mean().item() < 0.6


def test_too_small_for_one_batch_is_a_clear_error() -> None:
    with pytest.raises(CnnlabError, match="lower the batch size"):
        DeviceLoader(_data(20), batch_size=64, mean=(0.5,), std=(0.25,))


def test_derive_seed_mixes_all_parts() -> None:
    seeds = {derive_seed(s, e, r) for s in range(3) for e in range(3) for r in range(3)}
    assert len(seeds) == 27 and all(0 <= s < 2**63 for s in seeds)


def test_iter_augmented_keeps_order_and_is_seeded() -> None:
    loader = DeviceLoader(_data(), batch_size=10, mean=(0.5,), std=(0.25,), train=False)
    plain = torch.cat([x for x, _ in loader])
    a = list(loader.iter_augmented(_noise_augment, seed=1))
    b = torch.cat([x for x, _ in loader.iter_augmented(_noise_augment, seed=1)])
    c = torch.cat([x for x, _ in loader.iter_augmented(_noise_augment, seed=2)])
    assert len(a) == 11 and torch.cat([y for _, y in a]).tolist() == [i % 4 for i in range(103)]
    assert torch.equal(torch.cat([x for x, _ in a]), b) and not torch.equal(b, c) and not torch.equal(b, plain)
    assert torch.equal(torch.cat([x for x, _ in loader]), plain)  # the loader itself stays unaugmented
