import gzip

import numpy as np
import pytest

from cnnlab.config import DataConfig
from cnnlab.data import builtin
from cnnlab.data.imageset import convert_channels, stratified_split, stratified_subset
from cnnlab.data.sources import load_splits, parse_source
from cnnlab.errors import CnnlabError


def test_fashion_mnist_known_facts() -> None:
    splits = load_splits(DataConfig(source="fashion-mnist", val_split=0.0))
    assert len(splits.train) == 60000 and len(splits.test) == 10000 and len(splits.val) == 0
    assert splits.image_shape == (1, 28, 28) and splits.train.images.dtype == np.uint8
    assert splits.classes[0] == "T-shirt/top" and splits.classes[9] == "Ankle boot" and len(splits.classes) == 10
    assert (splits.train.class_counts() == 6000).all() and (splits.test.class_counts() == 1000).all()


def test_validation_split_is_stratified_seeded_and_disjoint() -> None:
    a = load_splits(DataConfig(source="fashion-mnist", val_split=0.1))
    b = load_splits(DataConfig(source="fashion-mnist", val_split=0.1))
    assert len(a.train) == 54000 and len(a.val) == 6000
    assert (a.val.class_counts() == 600).all()
    assert np.array_equal(a.val.images, b.val.images)  # same seed, same split
    c = load_splits(DataConfig(source="fashion-mnist", val_split=0.1, split_seed=1))
    assert not np.array_equal(a.val.images, c.val.images)


def test_stratified_split_keeps_class_proportions() -> None:
    labels = np.repeat(np.arange(3), [100, 50, 10])
    keep, held = stratified_split(labels, 0.2, seed=0)
    assert np.intersect1d(keep, held).size == 0 and keep.size + held.size == labels.size
    assert np.bincount(labels[held]).tolist() == [20, 10, 2]
    sub = stratified_subset(labels, 16, seed=0)
    assert np.bincount(labels[sub], minlength=3).tolist() == [10, 5, 1]


def test_train_subset_is_stratified_and_leaves_eval_splits_whole() -> None:
    splits = load_splits(DataConfig(source="synthetic:classes=4,n=400"), train_subset=40)
    assert len(splits.train) == 40 and (splits.train.class_counts() == 10).all()
    assert len(splits.test) == 100
    with pytest.raises(CnnlabError, match="smaller than the number of classes"):
        load_splits(DataConfig(source="synthetic:classes=4,n=400"), train_subset=3)


def test_synthetic_is_seeded_and_configurable() -> None:
    cfg = DataConfig(source="synthetic:classes=5,size=16,channels=1,n=100,seed=3", val_split=0.0)
    a, b = load_splits(cfg), load_splits(cfg)
    assert a.image_shape == (1, 16, 16) and a.classes == tuple(f"class{i}" for i in range(5))
    assert np.array_equal(a.train.images, b.train.images) and (a.train.class_counts() == 20).all()
    other = load_splits(DataConfig(source="synthetic:classes=5,size=16,channels=1,n=100,seed=4", val_split=0.0))
    assert not np.array_equal(a.train.images, other.train.images)
    with pytest.raises(CnnlabError, match="data source 'synthetic' has no option 'colour'; valid: classes"):
        load_splits(DataConfig(source="synthetic:colour=3"))


def test_digits_source() -> None:
    pytest.importorskip("sklearn")
    splits = load_splits(DataConfig(source="digits"))
    assert splits.image_shape == (1, 8, 8) and len(splits.classes) == 10
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert splits.train.images.max() == 255


def test_channel_conversion() -> None:
    splits = load_splits(DataConfig(source="synthetic:n=40,size=8", channels=1))
    assert splits.image_shape == (1, 8, 8)
    rgb = convert_channels(splits.train, 3)
    assert rgb.image_shape == (3, 8, 8) and np.array_equal(rgb.images[:, 0], rgb.images[:, 2])
    assert np.array_equal(convert_channels(rgb, 1).images, splits.train.images)  # luma of gray is gray


def test_unknown_source_names_close_match() -> None:
    with pytest.raises(CnnlabError, match="Did you mean 'fashion-mnist'"):
        load_splits(DataConfig(source="fashion-mnst"))
    with pytest.raises(CnnlabError, match="key=value"):
        parse_source("synthetic:classes")


def _write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_idx_reader_rejects_truncated_files(tmp_path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "ok.gz", arr)
    assert np.array_equal(builtin.read_idx(tmp_path / "ok.gz"), arr)
    raw = gzip.decompress((tmp_path / "ok.gz").read_bytes())
    (tmp_path / "cut").write_bytes(raw[:-5])
    with pytest.raises(CnnlabError, match="truncated"):
        builtin.read_idx(tmp_path / "cut")
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(CnnlabError, match="not an IDX file"):
        builtin.read_idx(tmp_path / "junk")


def test_mnist_folder_under_data_root_in_torchvision_layout(tmp_path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    splits = load_splits(DataConfig(source="mnist", root=str(tmp_path), val_split=0.0, download=False))
    assert len(splits.train) == 30 and len(splits.test) == 10 and splits.classes[3] == "3"


def test_missing_dataset_without_download_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(CnnlabError, match="mnist not found"):
        load_splits(DataConfig(source="mnist", root=str(tmp_path), download=False))


@pytest.mark.parametrize(("mode", "lo", "hi"), [("unit", 0.0, 1.0), ("raw", 0.0, 255.0)])
def test_normalize_modes_feed_unit_or_raw_pixels(mode: str, lo: float, hi: float) -> None:
    from cnnlab.config import DataConfig
    from cnnlab.data.loader import DeviceLoader
    from cnnlab.data.sources import load_splits

    splits = load_splits(DataConfig(source="synthetic:classes=3,n=60,size=8", normalize=mode))
    mean, std = splits.stats
    x, _ = next(iter(DeviceLoader(splits.train, batch_size=16, mean=mean, std=std, train=False)))
    expected = splits.train.images[:16].astype("float32") * (hi / 255.0)
    assert x.min() >= lo and x.max() <= hi and np.allclose(x.numpy(), expected, atol=1e-4)
    standard = load_splits(DataConfig(source="synthetic:classes=3,n=60,size=8"))
    assert standard.fingerprint == splits.fingerprint and standard.stats != splits.stats


def test_normalize_rejects_unknown_modes() -> None:
    from cnnlab.config import DataConfig

    with pytest.raises(CnnlabError, match="data.normalize"):
        DataConfig(normalize="zscore")
