"""Batches decoded from a prepared store while training: data larger than memory.

:class:`StreamLoader` is :class:`~cnnlab.data.loader.DeviceLoader`'s counterpart for a
:class:`~cnnlab.data.store.StoreSplit`: the same batches-of-normalised-float-tensors
interface (``len``, ``set_epoch``, ``iter_from`` for exact resume, ``state_dict``), but the
images stay in the store's shards and each batch is read and decoded when it is needed:

- training: a random-resized crop of the *stored* image (at its own resolution and aspect
  ratio; area 8-100%, aspect 3/4-4/3, torchvision's ``RandomResizedCrop``) resized to the
  model's input size, a random horizontal flip, then the run's batched augmentations on
  the device (``data.augment``);
- evaluation: the shorter side resized to ``size / 0.875`` and the centre ``size`` x
  ``size`` crop (torchvision's reference recipe, 224 from 256).

Decoding runs in a pool of threads a few batches ahead of the training step, each task a
slice of a batch written straight into the batch's uint8 buffer: the stored bytes are read
at their offsets in the chunk files, a JPEG is decoded by simplejpeg and the crop resized
by torch (both release the GIL; Pillow decodes other formats, and JPEGs when simplejpeg is
missing), see :meth:`~cnnlab.data.store.Store.decode_crop`. With ``data.decode: device``
(a JPEG store) the threads only read the bytes, and each training batch is decoded on the
training device in one batched call (:func:`batch_jpeg_decoder`: nvJPEG on a GPU), then
cropped, resized and flipped there (:meth:`StreamLoader._decode_on_device`); evaluation
batches are always decoded on the CPU, so that they are the pixels ``cnnlab predict``
sees. Randomness is a pure function of ``(seed, epoch, rank, batch)``, as in ``DeviceLoader``: the epoch's order is the same permutation
of the split (seeded by ``(seed, epoch)``), each rank takes its disjoint slice of it, and
a batch's crops and flips are drawn from a generator seeded by ``(seed, epoch, rank,
batch)`` in the main thread, before any decoding, so thread timing cannot change them. A
run killed in the middle of an epoch therefore resumes with exactly the batches it would
have seen.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import mmap
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from cnnlab.data.loader import EpochOrder, derive_seed
from cnnlab.data.store import EVAL_CROP, StoreSplit, check_decode
from cnnlab.errors import CnnlabError

log = logging.getLogger(__name__)

CROP_SCALE = (0.08, 1.0)  # random-resized-crop: fraction of the image's area
CROP_RATIO = (3 / 4, 4 / 3)  # and aspect ratio (torchvision's defaults)
PREFETCH = 3  # batches decoded ahead of the one being trained on
TASKS_PER_WORKER = 2  # slices of a batch per decoding thread: few Python calls, threads still balanced
CONVERT_CHUNK = 8  # images converted to float at a time on the CPU (they stay in the cache)

Box = tuple[float, float, float, float]
Job = tuple[int, Box, bool]  # (store index, crop box, flip) of one image of a batch


def random_resized_box(rng: np.random.Generator, h: int, w: int) -> Box:
    """A random crop (left, top, right, bottom) of an ``h`` x ``w`` image, as torchvision's ``RandomResizedCrop`` draws it."""
    area = h * w
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return (left, top, left + cw, top + ch)
    ratio = w / h  # fall back to the centre crop of the nearest allowed aspect ratio
    if ratio < CROP_RATIO[0]:
        cw, ch = w, int(round(w / CROP_RATIO[0]))
    elif ratio > CROP_RATIO[1]:
        ch, cw = h, int(round(h * CROP_RATIO[1]))
    else:
        cw, ch = w, h
    left, top = (w - cw) // 2, (h - ch) // 2
    return (left, top, left + cw, top + ch)


def center_box(h: int, w: int, fraction: float = EVAL_CROP) -> Box:
    """The centre square of side ``fraction`` x the shorter side (resize-then-centre-crop as one box)."""
    side = fraction * min(h, w)
    left, top = (w - side) / 2, (h - side) / 2
    return (left, top, left + side, top + side)


def windowed_permutation(groups: torch.Tensor, n_groups: int, window: int, gen: torch.Generator) -> torch.Tensor:
    """A permutation of ``len(groups)`` items that visits the groups ``window`` at a time, in a random order.

    ``groups[i]`` is item ``i``'s group (a store part). The groups are permuted, cut into
    consecutive windows of ``window`` groups, and the items of each window come together, in a
    random order. A pure function of the generator's state.
    """
    rank_of_group = torch.empty(n_groups, dtype=torch.int64)
    rank_of_group[torch.randperm(n_groups, generator=gen)] = torch.arange(n_groups)
    window_of_item = rank_of_group[groups.long()] // max(1, int(window))
    n = len(groups)
    return torch.argsort(window_of_item * n + torch.randperm(n, generator=gen))  # the random keys are distinct


JpegDecoder = Callable[[list[torch.Tensor], bool, torch.device], list[torch.Tensor]]  # (blobs, gray, device) -> (C, H, W)


def _torchcodec_jpegs(blobs: list[torch.Tensor], gray: bool, device: torch.device) -> list[torch.Tensor]:
    from torchcodec.decoders import decode_jpeg

    return decode_jpeg(blobs, mode="GRAY" if gray else "RGB", device=device)


def _torchvision_jpegs(blobs: list[torch.Tensor], gray: bool, device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(blobs, mode=ImageReadMode.GRAY if gray else ImageReadMode.RGB, device=device)


@functools.cache
def batch_jpeg_decoder() -> JpegDecoder:
    """The batched JPEG decoder ``--decode device`` uses: TorchCodec's, else torchvision's.

    The two take the same arguments and, on the CPU, give the same pixels (both are
    libjpeg-turbo); on a GPU both call nvJPEG's batched decoder. TorchCodec is preferred
    because torchvision deprecated its image decoders in 0.29 in its favour; its wheels are
    built for one torch release, so where it does not load (another torch) torchvision's is
    used, and the reason is logged.
    """
    try:
        import torchcodec.decoders  # noqa: F401 - the `stream` extra
    except ImportError:
        return _torchvision_jpegs
    except (OSError, RuntimeError) as e:  # a wheel built for another torch: its libraries do not load
        log.info("torchcodec does not load here (%s); JPEGs are decoded by torchvision.io.decode_jpeg", e)
        return _torchvision_jpegs
    return _torchcodec_jpegs


def default_workers(world_size: int = 1) -> int:
    """Decoding threads per process: the CPU cores shared by the ranks of this machine, 1 to 16."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size) or 1)
    return max(1, min(16, (os.cpu_count() or 1) // max(1, local)))


class StreamLoader(EpochOrder):
    """Batches of normalised (and, for training, augmented) images decoded from a store.

    Arguments as :class:`~cnnlab.data.loader.DeviceLoader`'s, with ``data`` a
    :class:`~cnnlab.data.store.StoreSplit` (its ``size`` is the input size), plus
    ``workers``, the decoding threads (default :func:`default_workers`), and ``decode``,
    where the training crops are decoded (``cpu`` or ``device``; default the split's own).
    """

    def __init__(
        self,
        data: StoreSplit,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = True,
        augment=None,  # noqa: ANN001 - any callable (x, generator) -> x
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        sample_weights: np.ndarray | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        workers: int | None = None,
        decode: str | None = None,
    ) -> None:
        self._setup(len(data.labels), data.classes, data.channels, batch_size=batch_size, mean=mean, std=std,
                    train=train, augment=augment, seed=seed, rank=rank, world_size=world_size, device=device,
                    sample_weights=sample_weights, channels_last=channels_last, dtype=dtype)  # fmt: skip
        self.data = data
        self.labels = torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
        self.workers = workers or default_workers(world_size)
        self.decode = decode or data.decode
        check_decode(data.store, self.decode)
        self._pool: ThreadPoolExecutor | None = None
        self._stream = None  # the CUDA stream the device decoding runs on (made on first use)
        self._decode_jpegs = batch_jpeg_decoder() if self.decode == "device" else None

    # ------------------------------------------------------------------ the same contract as DeviceLoader

    def _permutation(self, gen: torch.Generator) -> torch.Tensor:
        """The epoch's permutation; for a remote store larger than its cache, a window of parts at a time.

        A permutation of the whole split would fetch every part many times per epoch when
        the cache holds only some of them (each batch touches a part per image or so). The
        windowed order (litdata and MosaicML streaming shuffle the same way) permutes the
        parts, takes them a window at a time (as many as half the cache holds), and permutes
        the images within each window: every part is fetched once per epoch. Still drawn from
        the epoch's generator: a pure function of ``(seed, epoch)``, sliced by rank as before.
        """
        store = self.data.store
        window = None if store.remote is None else store.remote.window_parts()
        if window is None:
            return super()._permutation(gen)
        parts = np.searchsorted(store.offsets, self.data.index, side="right") - 1
        return windowed_permutation(torch.from_numpy(parts), len(store.parts), window, gen)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate the current epoch from batch ``start_batch`` (exact mid-epoch resume)."""
        order = self.order()
        pending: deque[tuple[int, torch.Tensor, list[Job], torch.Tensor | None, list[Future]]] = deque()
        batches = iter(range(start_batch, len(self)))
        c, size = self.data.channels, self.data.size
        on_device = self.train and self.decode == "device"

        def submit() -> None:
            b = next(batches, None)
            if b is not None:
                idx = order[b * self.batch_size : (b + 1) * self.batch_size]
                jobs = self.jobs(idx, b)
                step = max(1, math.ceil(len(jobs) / (self.workers * TASKS_PER_WORKER)))
                raw = None if on_device else torch.empty((len(jobs), c, size, size), dtype=torch.uint8)
                futures = [self._executor().submit(self._read_slice, jobs[a : a + step]) if raw is None else
                           self._executor().submit(self._decode_slice, jobs[a : a + step], raw[a : a + step])
                           for a in range(0, len(jobs), step)]  # fmt: skip
                pending.append((b, idx, jobs, raw, futures))

        for _ in range(PREFETCH):
            submit()
        try:
            while pending:
                b, idx, jobs, raw, futures = pending.popleft()
                submit()
                if raw is None:  # the threads read the bytes; the device decodes them
                    raw = self._decode_on_device(jobs, [blob for f in futures for blob in f.result()])
                else:
                    for f in futures:
                        f.result()
                yield self._make_batch(raw, b), self.labels.index_select(0, idx).to(self.device)
        finally:
            for *_, futures in pending:
                for f in futures:
                    f.cancel()

    def iter_augmented(self, augment, *, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # noqa: ANN001
        raise CnnlabError("cached augmented feature views need the images in memory; use --loader memory or --feature-views 0")

    def state_dict(self) -> dict[str, int]:
        """Everything needed to reproduce the loader's randomness (it is a pure function of these)."""
        return {"seed": self.seed, "epoch": self.epoch, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])

    # ------------------------------------------------------------------ reading and decoding

    def jobs(self, idx: torch.Tensor, batch_index: int) -> list[Job]:
        """``(store index, crop box, flip)`` of each image of batch ``batch_index`` (its randomness drawn here)."""
        store, where = self.data.store, self.data.index[idx.numpy()]
        heights, widths = store.heights[where], store.widths[where]
        if not self.train:
            return [(int(i), center_box(int(h), int(w)), False) for i, h, w in zip(where, heights, widths)]
        rng = np.random.default_rng(derive_seed(self.seed, self.epoch, self.rank, batch_index, 0xC0B))
        out = []
        for i, h, w in zip(where, heights, widths):
            box = random_resized_box(rng, int(h), int(w))
            out.append((int(i), box, bool(rng.random() < 0.5)))
        return out

    def _decode_slice(self, jobs: list[Job], out: torch.Tensor) -> None:
        """Decode ``jobs`` into ``out`` (uint8, one image per job): one thread's share of a batch."""
        store = self.data.store
        for (i, box, flip), dst in zip(jobs, out):
            if self.train:  # integer boxes: crop, resize, flip (the fast path)
                store.decode_crop(i, box, flip, dst)  # type: ignore[arg-type]
            else:  # the evaluation's centre box, as every other reader of the store resizes it
                np.copyto(dst.numpy(), store.decode(i, box, flip, self.data.size, self.data.channels))

    def _read_slice(self, jobs: list[Job]) -> list[torch.Tensor]:
        """The stored bytes of ``jobs``' images, as the uint8 tensors ``decode_jpeg`` reads."""
        return [torch.frombuffer(bytearray(self.data.store.read(i)), dtype=torch.uint8) for i, _, _ in jobs]

    def _decode_on_device(self, jobs: list[Job], blobs: list[torch.Tensor]) -> torch.Tensor:
        """A training batch decoded on the device: uint8 (B, C, size, size) there, as :meth:`_decode_slice` makes it.

        :func:`batch_jpeg_decoder` decodes the whole batch in one call (nvJPEG's batched
        decoder on a GPU) at the stored size; each image's box is then cropped, resized
        (bilinear, antialiased, rounded to uint8, as torch resizes the CPU path's uint8
        crops) and flipped on the device. On a GPU the pixels can differ from the CPU path's
        by a few levels (nvJPEG's IDCT and chroma upsampling, no reduced-scale decoding),
        never between two runs on the same device, so a resumed run still sees the batches
        it would have seen.

        On a GPU the decoding runs on a stream of its own, synchronised before each call:
        torchvision's decoder writes its outputs from a private stream that does not wait
        for the caller's, so memory the allocator recycles must have no kernel of ours
        still reading it (pytorch/vision PR 9606; torchcodec waits since its PR 1634). The
        training stream waits for the batch.
        """
        c, size = self.data.channels, self.data.size
        cuda = self.device.type == "cuda"
        if cuda:
            if self._stream is None:
                self._stream = torch.cuda.Stream(self.device)
            self._stream.synchronize()
        with torch.cuda.stream(self._stream) if cuda else contextlib.nullcontext():
            try:
                images = self._decode_jpegs(blobs, c == 1, self.device)
            except RuntimeError as e:
                raise CnnlabError(f"decoding a batch of {len(blobs)} JPEGs on {self.device} failed ({e}); "
                                  "decode on the CPU instead: --decode cpu (data.decode: cpu)") from e  # fmt: skip
            out = torch.empty((len(jobs), c, size, size), dtype=torch.uint8, device=self.device)
            for (_, (left, top, right, bottom), flip), image, dst in zip(jobs, images, out):
                crop = image[:, int(top) : int(bottom), int(left) : int(right)]
                if crop.shape[-2:] != (size, size):
                    crop = torch.nn.functional.interpolate(crop[None].float(), size=(size, size), mode="bilinear",
                                                           antialias=True, align_corners=False)[0].round_().clamp_(0, 255)  # fmt: skip
                dst.copy_(crop.flip(-1) if flip else crop)
        if cuda:
            main = torch.cuda.current_stream(self.device)
            main.wait_stream(self._stream)
            out.record_stream(main)
        return out

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cnnlab-decode")
        return self._pool

    def close(self) -> None:
        """Stop the decoding threads (they also stop with the process)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _make_batch(self, raw: torch.Tensor, batch_index: int) -> torch.Tensor:
        if self.device.type == "cpu":
            x = _to_float(raw, self._scale_u8, self._shift, self.dtype) if self.augment is None else _to_float(
                raw, torch.full_like(self._scale_u8, 1.0 / 255.0), torch.zeros_like(self._shift), self.dtype)
        else:
            raw = raw.to(self.device, non_blocking=True)
            if self.augment is None:
                x = torch.addcmul(self._shift, raw.to(self.dtype), self._scale_u8)
            else:
                x = raw.to(self.dtype).mul_(1.0 / 255.0)
        if self.augment is not None:
            self._gen.manual_seed(derive_seed(self.seed, self.epoch, self.rank, batch_index))
            x = self.augment(x, self._gen)
            x = torch.addcmul(self._shift, x, self._scale)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _to_float(raw: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``raw * scale + shift`` as ``dtype`` on the CPU, a few images at a time, into memory backed by huge pages.

    Measured on 2 cores (a batch of 128 x 3 x 224 x 224): ``addcmul(shift, raw.float(),
    scale)`` takes 0.7-1.1 ms per image, mostly page faults on the fresh 77 MB output
    (4 KiB pages) and passes over arrays larger than the cache; converting 8 images at a
    time into an output that asks for 2 MiB pages takes 0.07-0.3 ms. The values agree to float rounding.
    """
    out = _empty_huge(raw.shape, dtype)
    scale, shift = scale[0].to(dtype), shift[0].to(dtype)
    for a in range(0, raw.shape[0], CONVERT_CHUNK):
        out[a : a + CONVERT_CHUNK].copy_(raw[a : a + CONVERT_CHUNK]).mul_(scale).add_(shift)
    return out


def _empty_huge(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor whose memory asks the kernel for transparent huge pages (where it has them)."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None or nbytes < (4 << 20):
        return torch.empty(shape, dtype=dtype)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buffer.madvise(advice)
    except OSError:
        pass  # THP disabled: ordinary pages
    return torch.frombuffer(buffer, dtype=dtype).view(shape)  # the tensor keeps the mapping alive
