import numpy as np
import pytest
import torch

from cnnlab.data.stats import channel_stats


@pytest.mark.parametrize("channels", [1, 3])
def test_stats_equal_torch_on_the_full_tensor(channels: int) -> None:
    x = torch.randint(0, 256, (301, channels, 9, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = channel_stats(x.numpy(), chunk=64)  # several chunks, the last one partial
    ref = x.double() / 255
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), ref.mean((0, 2, 3)), rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), ref.std((0, 2, 3), correction=0), rtol=0, atol=1e-12)


def test_stats_accept_tensors_and_memmaps(tmp_path) -> None:
    arr = np.random.default_rng(1).integers(0, 256, (50, 3, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "a.npy", arr)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert channel_stats(mm) == channel_stats(torch.from_numpy(arr)) == channel_stats(arr)


def test_constant_channel_gets_unit_std() -> None:
    mean, std = channel_stats(np.full((4, 1, 3, 3), 128, np.uint8))
    assert mean[0] == pytest.approx(128 / 255) and std == (1.0,)


def test_fashion_mnist_known_statistics() -> None:
    # The widely quoted Fashion-MNIST training statistics are mean 0.2860, std 0.3530.
    from cnnlab.config import DataConfig
    from cnnlab.data.sources import load_splits

    splits = load_splits(DataConfig(source="fashion-mnist", val_split=0.0))
    mean, std = splits.stats
    assert mean[0] == pytest.approx(0.2860, abs=1e-4) and std[0] == pytest.approx(0.3530, abs=1e-4)
