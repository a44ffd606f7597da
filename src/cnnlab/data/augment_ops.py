"""The batched augmentation ops behind :mod:`cnnlab.data.augment` (seed section 8).

Every op is a small frozen dataclass whose spec arguments are its fields. Calling it on a
float batch ``x`` of shape (N, C, H, W) in [0, 1] units with a ``torch.Generator`` on
``x``'s device returns the augmented batch (same shape, except ``rrc`` with an explicit
``size``); ops may modify ``x`` in place. Each sample draws its own parameters, all from the
generator, with a handful of vectorized tensor ops per op and no loop over samples.

These ops never move data between host and device inside a call: constants reach the
device with a non-blocking copy and nothing is read back, so a CUDA training step is never
stalled by augmentation.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar, NoReturn

import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale uses them.
_GRAY = (0.2989, 0.587, 0.114)


def _arg(default: Any, doc: str, *, choices: tuple[str, ...] | None = None) -> Any:
    """Declare a spec argument: a dataclass field the grammar can set and print."""
    return field(default=default, metadata={"spec": True, "doc": doc, "choices": choices})


def format_value(value: Any) -> str:
    """Render a spec value in its shortest form that parses back to the same value."""
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def _const(values: Sequence[Any], like: torch.Tensor) -> torch.Tensor:
    """A small constant tensor on ``like``'s device and dtype.

    The non-blocking copy from pageable memory is staged by the host at once and never
    waits for the device, unlike a plain ``torch.tensor(..., device="cuda")``.
    """
    return torch.tensor(values, dtype=like.dtype).to(like.device, non_blocking=True)


def _coin(n: int, p: float, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Per-sample 0/1 weights (N,) in ``like``'s dtype: 1 with probability ``p``."""
    u = torch.rand(n, generator=generator, device=like.device)
    return (u < p).to(like.dtype)


def _uniform(n: int, low: float, high: float, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Per-sample factors (N, 1, 1, 1) uniform in [low, high], in ``like``'s dtype."""
    u = torch.rand(n, generator=generator, device=like.device)
    return u.mul_(high - low).add_(low).to(like.dtype).view(n, 1, 1, 1)


@dataclass(frozen=True)
class Op(ABC):
    """Base of the augmentation ops: spec fields, canonical string, positional binding."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    # Leading arguments the canonical string always shows, so that logs and run folders
    # say e.g. 'crop:4' rather than rely on today's defaults.
    shown: ClassVar[int] = 0

    @classmethod
    def spec_fields(cls) -> tuple[Field, ...]:
        """The fields the grammar sets, in positional order."""
        return tuple(f for f in fields(cls) if f.metadata.get("spec"))

    @classmethod
    def bind_positional(cls, values: Sequence[Any]) -> dict[str, Any]:
        """Map positional spec values to field names (in field order)."""
        names = [f.name for f in cls.spec_fields()]
        if len(values) > len(names):
            raise CnnlabError(
                f"augment op '{cls.name}' takes at most {len(names)} positional arguments "
                f"({', '.join(names)}), got {len(values)}"
            )
        return dict(zip(names, values))

    def spec_args(self) -> list[str]:
        """Arguments of the canonical string: the first ``shown`` positionally, then the
        other non-default ones as ``key=value`` (readable, and immune to field order)."""
        args = []
        for i, f in enumerate(self.spec_fields()):
            value = getattr(self, f.name)
            if i < self.shown:
                args.append(format_value(value))
            elif value != f.default:
                args.append(f"{f.name}={format_value(value)}")
        return args

    def _fail(self, message: str) -> NoReturn:
        raise CnnlabError(f"augment op '{self.name}': {message}")

    def _check_range(self, arg: str, low: float, high: float) -> None:
        value = getattr(self, arg)
        if not low <= value <= high:
            self._fail(f"{arg} must be in [{format_value(low)}, {format_value(high)}], got {format_value(value)}")

    def __str__(self) -> str:
        return ":".join([self.name, *self.spec_args()])

    @abstractmethod
    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment the batch ``x`` (N, C, H, W) with randomness drawn from ``generator``."""


@dataclass(frozen=True)
class _Flip(Op):
    """Shared body of the flips; ``dim`` is the image axis that gets reversed."""

    p: float = _arg(0.5, "probability that a sample is flipped")
    dim: ClassVar[int] = -1

    def __post_init__(self) -> None:
        self._check_range("p", 0.0, 1.0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.p <= 0.0:
            return x
        if self.p >= 1.0:
            return x.flip(self.dim)
        flip = _coin(x.shape[0], self.p, generator, x).view(-1, 1, 1, 1)
        # lerp with 0/1 weights is exact (torch.lerp returns `end` itself at weight 1), and
        # one fused pass is ~2.5x cheaper on CPU than torch.where with a broadcast bool mask.
        return x.lerp_(x.flip(self.dim), flip)


@dataclass(frozen=True)
class HFlip(_Flip):
    """Mirror each sample left-right with probability ``p``."""

    name: ClassVar[str] = "hflip"
    aliases: ClassVar[tuple[str, ...]] = ("flip",)
    summary: ClassVar[str] = "horizontal (left-right) flip with probability p"
    dim: ClassVar[int] = -1


@dataclass(frozen=True)
class VFlip(_Flip):
    """Mirror each sample top-bottom with probability ``p``."""

    name: ClassVar[str] = "vflip"
    summary: ClassVar[str] = "vertical (top-bottom) flip with probability p"
    dim: ClassVar[int] = -2


@dataclass(frozen=True)
class Crop(Op):
    """Random crop of the padded image back to the input size, per-sample offsets."""

    name: ClassVar[str] = "crop"
    summary: ClassVar[str] = "pad by `padding` px (zero or reflect), crop a random input-sized window"
    shown: ClassVar[int] = 1
    padding: int = _arg(4, "pixels added on each side before cropping")
    mode: str = _arg("zero", "how the border is filled", choices=("zero", "reflect"))

    def __post_init__(self) -> None:
        if self.padding < 0:
            self._fail(f"padding must be >= 0 pixels, got {self.padding} (e.g. 'crop:4')")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        p = self.padding
        if p == 0:
            return x
        n, c, h, w = x.shape
        if self.mode == "reflect" and p >= min(h, w):
            self._fail(f"reflect padding {p} needs images larger than {p} px, got {h}x{w}; use mode=zero")
        pad_mode = "reflect" if self.mode == "reflect" else "constant"
        xp = F.pad(x, (p, p, p, p), mode=pad_mode).contiguous()
        hp, wp = h + 2 * p, w + 2 * p
        off = torch.randint(0, 2 * p + 1, (2, n), generator=generator, device=x.device)
        # Every output row is W contiguous values of the padded batch, starting at
        #   sample*C*Hp*Wp + (channel*Hp + row + dy)*Wp + dx.
        # Viewing the padded batch as a table of overlapping W-long rows turns the whole
        # crop into one index_select of N*C*H row starts: a memcpy per row, with an index
        # tensor H*W times smaller than a per-pixel gather (measured ~15x faster on CPU).
        start = torch.arange(0, n * c * hp * wp, c * hp * wp, device=x.device)
        start.add_(off[0], alpha=wp).add_(off[1])
        rows = torch.arange(0, c * hp * wp, wp, device=x.device).view(c, hp)[:, :h].reshape(-1)
        table = xp.view(-1).as_strided((xp.numel() - w + 1, w), (1, 1))
        return table.index_select(0, (start[:, None] + rows).view(-1)).view(n, c, h, w)


def _check_area_and_ratio(op: Op, example: str) -> None:
    """The area-fraction and aspect-ratio ranges that random-resized-crop and erase share."""
    if not 0.0 < op.min_scale <= op.max_scale <= 1.0:
        op._fail(
            f"need 0 < min_scale <= max_scale <= 1, got {format_value(op.min_scale)} and "
            f"{format_value(op.max_scale)} (e.g. '{example}')"
        )
    if not 0.0 < op.min_ratio <= op.max_ratio:
        op._fail(f"need 0 < min_ratio <= max_ratio, got {op.min_ratio} and {op.max_ratio}")


def _check_mean_fill(op: Op, channels: int) -> None:
    """``fill=mean`` (cutout and erase) needs the dataset's mean, one value per channel."""
    if op.fill == "mean" and (op.mean is None or len(op.mean) != channels):
        got = "no mean" if op.mean is None else f"a mean of {len(op.mean)} values"
        op._fail(f"fill=mean needs the dataset's {channels}-channel mean, got {got}; pass mean= to build_augment")


@dataclass(frozen=True)
class ResizedCrop(Op):
    """Random resized crop: a random area fraction and aspect ratio, resized bilinearly.

    Like torchvision's ``RandomResizedCrop``: the area fraction is uniform in
    [min_scale, max_scale], the aspect ratio log-uniform in [min_ratio, max_ratio], the
    window position uniform; a sample whose draw does not fit retries (10 draws are made
    at once and the first that fits is used; if none fits, the window is clipped to the
    image). Coordinates are continuous, not rounded to whole pixels.
    """

    name: ClassVar[str] = "rrc"
    aliases: ClassVar[tuple[str, ...]] = ("resized-crop",)
    summary: ClassVar[str] = "random resized crop: area fraction, aspect ratio, output size (0 = input size)"
    shown: ClassVar[int] = 2
    tries: ClassVar[int] = 10
    min_scale: float = _arg(0.35, "smallest crop area, as a fraction of the image")
    max_scale: float = _arg(1.0, "largest crop area, as a fraction of the image")
    min_ratio: float = _arg(3 / 4, "smallest aspect ratio (width / height)")
    max_ratio: float = _arg(4 / 3, "largest aspect ratio (width / height)")
    size: int = _arg(0, "output height and width in px; 0 keeps the input size")

    def __post_init__(self) -> None:
        _check_area_and_ratio(self, "rrc:0.35:1")
        if self.size < 0:
            self._fail(f"size must be >= 0 px (0 keeps the input size), got {self.size}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        out_h, out_w = (self.size, self.size) if self.size else (h, w)
        dev = x.device
        u = torch.rand(2, n, self.tries, generator=generator, device=dev)
        scale = u[0].mul_(self.max_scale - self.min_scale).add_(self.min_scale)
        lo, hi = math.log(self.min_ratio), math.log(self.max_ratio)
        ratio = u[1].mul_(hi - lo).add_(lo).exp_()
        # Window width and height as fractions of the image's (area = scale * H * W).
        frac_w = (scale * ratio * (h / w)).sqrt_()
        frac_h = (scale / ratio * (w / h)).sqrt_()
        fits = ((frac_w <= 1) & (frac_h <= 1)).to(torch.uint8)
        pick = fits.argmax(1, keepdim=True)  # first draw that fits; 0 when none does
        frac_w = frac_w.gather(1, pick).squeeze(1).clamp_(max=1.0)
        frac_h = frac_h.gather(1, pick).squeeze(1).clamp_(max=1.0)
        pos = torch.rand(2, n, generator=generator, device=dev).mul_(2).sub_(1)
        # The window is axis-aligned, so the sampling grid is separable: x depends only on
        # the output column and y only on the row. Building it from two (N, size) vectors
        # replaces affine_grid's (N, H*W, 3) @ (N, 3, 2) bmm, which cost more than the
        # sampling itself. Centres range over what keeps the window inside the image.
        gx = _grid_axis(frac_w, pos[0] * (1 - frac_w), out_w)
        gy = _grid_axis(frac_h, pos[1] * (1 - frac_h), out_h)
        # Sample in float32 for reduced precision inputs: a bfloat16 grid would be off by
        # up to a pixel on large images, and CPU grid_sample in bfloat16 is 4x slower.
        src = x if x.dtype in (torch.float32, torch.float64) else x.float()
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1).to(src.dtype)
        out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.to(x.dtype)


def _grid_axis(half_extent: torch.Tensor, centre: torch.Tensor, size: int) -> torch.Tensor:
    """grid_sample coordinates (N, size) of ``size`` pixel centres spanning a window.

    With align_corners=False, output pixel j sits at (2j + 1) / size - 1 in [-1, 1]; the
    window maps that range to centre + half_extent * [-1, 1] of the input.
    """
    base = torch.arange(size, device=centre.device, dtype=torch.float32).mul_(2 / size).add_(1 / size - 1)
    return torch.addcmul(centre[:, None], half_extent[:, None], base)


@dataclass(frozen=True)
class ColorJitter(Op):
    """Per-sample brightness, contrast, saturation and hue, with torchvision's factors.

    Brightness, contrast and saturation factors are uniform in [max(0, 1-s), 1+s] and act
    as in torchvision (scale; blend with the image's mean gray level; blend with the gray
    image), each followed by a clamp to [0, 1]. Hue turns the colours by a fraction of a
    full turn uniform in [-hue, hue], as a per-sample rotation about the gray axis, a
    linear stand-in for torchvision's HSV hue shift (see :func:`_hue_matrices`). The four
    steps run in this fixed order (torchvision shuffles them per call). Saturation and
    hue need three channels and are skipped for other inputs; a strength of 0 skips its
    step, so an all-zero jitter returns the batch untouched.
    """

    name: ClassVar[str] = "jitter"
    summary: ClassVar[str] = "colour jitter; 'jitter:S' sets brightness = contrast = saturation = S"
    brightness: float = _arg(0.4, "brightness factor range 1 +- brightness")
    contrast: float = _arg(0.4, "contrast factor range 1 +- contrast")
    saturation: float = _arg(0.4, "saturation factor range 1 +- saturation (3 channels only)")
    hue: float = _arg(0.0, "hue shift range +- hue of a full turn, at most 0.5 (3 channels only)")

    def __post_init__(self) -> None:
        for arg in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, arg) < math.inf:
                self._fail(f"{arg} must be >= 0, got {format_value(getattr(self, arg))}")
        self._check_range("hue", 0.0, 0.5)

    @classmethod
    def bind_positional(cls, values: Sequence[Any]) -> dict[str, Any]:
        """One value sets brightness, contrast and saturation; four set all in order."""
        if not values:
            return {}
        if len(values) == 1:
            return {"brightness": values[0], "contrast": values[0], "saturation": values[0]}
        if len(values) == 4:
            return super().bind_positional(values)
        raise CnnlabError(
            f"augment op 'jitter' takes one value (brightness = contrast = saturation) or four "
            f"(brightness:contrast:saturation:hue), got {len(values)}, or use key=value, e.g. 'jitter:hue=0.1'"
        )

    def spec_args(self) -> list[str]:
        """One shared value (plus ``hue=`` when set), or all four positionally."""
        b, c, s, h = self.brightness, self.contrast, self.saturation, self.hue
        if b == c == s:
            return [format_value(b)] + ([f"hue={format_value(h)}"] if h else [])
        return [format_value(v) for v in (b, c, s, h)]

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c = x.shape[:2]
        if self.brightness > 0:
            x.mul_(_uniform(n, max(0.0, 1 - self.brightness), 1 + self.brightness, generator, x)).clamp_(0, 1)
        if self.contrast > 0:
            f = _uniform(n, max(0.0, 1 - self.contrast), 1 + self.contrast, generator, x)
            mean = (_gray(x) if c == 3 else x).mean((1, 2, 3), keepdim=True)
            # f * x + (1 - f) * mean; two passes, because lerp_ towards a per-sample scalar
            # takes a slow broadcast path (5x slower on CPU).
            x.mul_(f).add_(mean.mul_(1 - f)).clamp_(0, 1)
        if c != 3:
            return x
        if self.saturation > 0:
            f = _uniform(n, max(0.0, 1 - self.saturation), 1 + self.saturation, generator, x)
            x.lerp_(_gray(x), 1 - f).clamp_(0, 1)
        if self.hue > 0:
            turn = torch.rand(n, generator=generator, device=x.device).mul_(2 * self.hue).sub_(self.hue)
            rot = _hue_matrices(turn).to(x.dtype)[:, :, :, None, None]  # (N, out, in, 1, 1)
            # out[:, i] = sum_j rot[:, i, j] * x[:, j]: three broadcast multiply-adds beat
            # bmm on 3 x H*W slices (1.4x in float32, 13x in bfloat16 on CPU).
            out = x[:, 0:1] * rot[:, :, 0]
            out.addcmul_(x[:, 1:2], rot[:, :, 1]).addcmul_(x[:, 2:3], rot[:, :, 2])
            x = out.clamp_(0, 1)
        return x


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (N, 1, H, W) of an RGB batch; scalar weights keep it free of host copies."""
    gray = x[:, 0:1] * _GRAY[0]
    return gray.add_(x[:, 1:2], alpha=_GRAY[1]).add_(x[:, 2:3], alpha=_GRAY[2])


@functools.cache
def _hue_basis() -> torch.Tensor:
    """P0, P1, P2 (3, 3, 3) of :func:`_hue_matrices`, on the CPU, built once."""
    third = 1.0 / 3.0
    gray_axis = [[third] * 3] * 3  # projection onto (1, 1, 1): kept by the rotation
    chroma = [[(1.0 if i == j else 0.0) - third for j in range(3)] for i in range(3)]
    r = 1.0 / math.sqrt(3.0)
    cross = [[0.0, -r, r], [r, 0.0, -r], [-r, r, 0.0]]  # v -> k x v, k = (1, 1, 1) / sqrt(3)
    return torch.tensor([gray_axis, chroma, cross], dtype=torch.float32)


def _hue_matrices(turn: torch.Tensor) -> torch.Tensor:
    """RGB -> RGB matrices (N, 3, 3) that turn hue by ``turn`` full turns.

    A rotation about the gray axis (1, 1, 1) (Rodrigues' formula, P0 + cos P1 + sin P2).
    HSV's hue angle is a hexagonal version of the angle about that axis, so this matches
    torchvision's adjust_hue exactly at multiples of 1/3 turn (red -> green -> blue) and
    within a few hundredths in between, while being one linear map per sample.
    """
    basis = _hue_basis().to(turn.device, non_blocking=True)
    angle = turn * (2 * math.pi)
    return basis[0] + angle.cos()[:, None, None] * basis[1] + angle.sin()[:, None, None] * basis[2]


@dataclass(frozen=True)
class Cutout(Op):
    """Blank a random ``size`` x ``size`` square per sample (DeVries & Taylor, 2017).

    The square's centre is uniform over the image, so squares near a border are clipped
    and cover less. ``fill=mean`` paints the dataset's per-channel mean (the ``mean``
    field, set by ``build_augment``), which becomes 0 after normalization.
    """

    name: ClassVar[str] = "cutout"
    summary: ClassVar[str] = "blank a random size x size square (may be clipped at the border)"
    shown: ClassVar[int] = 1
    size: int = _arg(8, "side of the square in px")
    fill: str = _arg("zero", "value painted in the square", choices=("zero", "mean"))
    p: float = _arg(1.0, "probability that a sample gets a square")
    # Not part of the spec: the dataset mean in [0, 1] units, needed by fill=mean.
    mean: tuple[float, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.size < 1:
            self._fail(f"size must be >= 1 px, got {self.size} (e.g. 'cutout:8')")
        self._check_range("p", 0.0, 1.0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.p <= 0.0:
            return x
        _check_mean_fill(self, c)
        rows, cols = self._bands(n, h, w, generator, x)
        if self.p < 1.0:
            rows.mul_(_coin(n, self.p, generator, x)[:, None])
        # A float outer product and a fused multiply-add beat a broadcast bool mask with
        # masked_fill ~2x on CPU for small images.
        mask = (rows[:, :, None] * cols[:, None, :]).unsqueeze(1)
        if self.fill == "zero":
            return x.addcmul_(x, mask, value=-1)  # x - x * 1 is exactly 0
        fill = _const(self.mean, x).view(1, c, 1, 1)
        return x.lerp_(fill, mask)

    def _bands(
        self, n: int, h: int, w: int, generator: torch.Generator, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample 0/1 row and column indicators (N, H) and (N, W) of the square.

        Both are windows of one 0/1 pattern with ``size`` ones after ``m = max(H, W)``
        zeros: window k of length L reads pattern[k : k + L], which covers rows
        [m - k, m - k + size). Drawing k instead of the centre turns the band into one
        index_select, where comparisons against an arange take five small ops per axis
        (small-tensor op overhead dominates this op on CPU).
        """
        s, m = self.size, max(h, w)
        pattern = torch.zeros(2 * m + s, dtype=like.dtype, device=like.device)
        pattern[m : m + s] = 1
        # Square top = centre - size // 2 with centre uniform in [0, L), so k = m - top
        # is uniform in [m + size // 2 - L + 1, m + size // 2].
        bands = []
        for length in (h, w):
            k = torch.randint(m + s // 2 - length + 1, m + s // 2 + 1, (n,), generator=generator, device=like.device)
            windows = pattern.as_strided((pattern.numel() - length + 1, length), (1, 1))
            bands.append(windows.index_select(0, k))
        return bands[0], bands[1]


@dataclass(frozen=True)
class Erase(Op):
    """Random erasing (Zhong et al., 2017) with torchvision's ``RandomErasing`` semantics.

    With probability ``p`` a sample gets one rectangle whose area is a fraction of the
    image uniform in [min_scale, max_scale] and whose aspect ratio (height / width, as in
    torchvision) is log-uniform in [min_ratio, max_ratio]; sides are rounded to whole
    pixels and the position is uniform over the places where it fits. As in torchvision, 10
    draws are made and the first whose rectangle is strictly smaller than the image is
    used; a sample where none fits is left unchanged. ``fill=random`` paints per-pixel
    uniform noise in [0, 1] (torchvision paints standard-normal noise in normalized units),
    ``fill=mean`` the dataset's per-channel mean (0 after normalization).
    """

    name: ClassVar[str] = "erase"
    summary: ClassVar[str] = "blank a random rectangle: area fraction, aspect ratio (h/w) range, fill"
    shown: ClassVar[int] = 1
    tries: ClassVar[int] = 10
    p: float = _arg(0.5, "probability that a sample gets a rectangle")
    min_scale: float = _arg(0.02, "smallest rectangle area, as a fraction of the image")
    max_scale: float = _arg(0.33, "largest rectangle area, as a fraction of the image")
    min_ratio: float = _arg(0.3, "smallest aspect ratio (height / width)")
    max_ratio: float = _arg(3.3, "largest aspect ratio (height / width)")
    fill: str = _arg("zero", "value painted in the rectangle", choices=("zero", "mean", "random"))
    # Not part of the spec: the dataset mean in [0, 1] units, needed by fill=mean.
    mean: tuple[float, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._check_range("p", 0.0, 1.0)
        _check_area_and_ratio(self, "erase:0.5:0.02:0.33")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.p <= 0.0:
            return x
        _check_mean_fill(self, c)
        mask = self.rect_mask(n, h, w, generator, x)
        if self.fill == "zero":
            return x.addcmul_(x, mask, value=-1)  # x - x * 1 is exactly 0
        if self.fill == "mean":
            return x.lerp_(_const(self.mean, x).view(1, c, 1, 1), mask)
        noise = torch.rand(x.shape, generator=generator, device=x.device).to(x.dtype)
        return x.lerp_(noise, mask)

    def rect_mask(self, n: int, h: int, w: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        """Per-sample 0/1 masks (N, 1, H, W) of the rectangles, in ``like``'s dtype."""
        dev = like.device
        u = torch.rand(2, n, self.tries, generator=generator, device=dev, dtype=torch.float64)
        area = u[0].mul_(self.max_scale - self.min_scale).add_(self.min_scale).mul_(h * w)
        lo, hi = math.log(self.min_ratio), math.log(self.max_ratio)
        ratio = u[1].mul_(hi - lo).add_(lo).exp_()
        # torchvision: h = round(sqrt(area * ratio)), w = round(sqrt(area / ratio)), in px.
        rh = (area * ratio).sqrt_().round_()
        rw = (area / ratio).sqrt_().round_()
        fits = (rh < h) & (rw < w)
        pick = fits.to(torch.uint8).argmax(1, keepdim=True)  # first draw that fits
        ok = fits.gather(1, pick).squeeze(1)  # False: no draw fits, the sample is kept
        rh = rh.gather(1, pick).squeeze(1)
        rw = rw.gather(1, pick).squeeze(1)
        pos = torch.rand(2, n, generator=generator, device=dev, dtype=torch.float64)
        # Top-left corner uniform over the H - rh + 1 (and W - rw + 1) places that fit.
        top = pos[0].mul_(h - rh + 1).floor_()
        left = pos[1].mul_(w - rw + 1).floor_()
        if self.p < 1.0:
            ok &= torch.rand(n, generator=generator, device=dev) < self.p
        ys = torch.arange(h, device=dev, dtype=torch.float64)
        xs = torch.arange(w, device=dev, dtype=torch.float64)
        rows = ((ys >= top[:, None]) & (ys < (top + rh)[:, None]) & ok[:, None]).to(like.dtype)
        cols = ((xs >= left[:, None]) & (xs < (left + rw)[:, None])).to(like.dtype)
        return (rows[:, :, None] * cols[:, None, :]).unsqueeze(1)


# TrivialAugmentWide's operations, in torchvision's order, less Equalize (a per-sample
# histogram has no cheap batched form). Colour on a one-channel image is the identity, as
# in torchvision, so grayscale and RGB draw from the same list.
TRIVIAL_OPS: tuple[str, ...] = (
    "identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate",
    "brightness", "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast",
)  # fmt: skip
_TRIVIAL_BINS = 31  # magnitude levels, as torchvision's TrivialAugmentWide(num_magnitude_bins=31)


@dataclass(frozen=True)
class TrivialAugment(Op):
    """TrivialAugment (Müller & Hutter, 2021) with TrivialAugmentWide's ranges, batched.

    Each sample draws one operation uniformly from :data:`TRIVIAL_OPS`, one of 31
    magnitude levels uniformly and, for the signed ops, a random sign; ``magnitude``
    scales every range (1 = torchvision's wide ranges: shear up to 0.99, translate up to
    32 px on a 32 px side (scaled with the side), rotate up to 135 degrees,
    brightness/color/contrast/sharpness factors 1 +- 0.99, posterize down to 2 bits,
    solarize threshold down to 0). Equalize is left out (no cheap batched form). The
    geometric ops are one affine warp of the whole batch about the image centre
    (torchvision shears about the top-left corner) with zero fill; each colour op is one
    pass over the batch with neutral parameters for samples that did not draw it, so
    those samples come out bit-exact.
    """

    name: ClassVar[str] = "trivial"
    summary: ClassVar[str] = "TrivialAugmentWide: one random op and strength per sample (no equalize)"
    magnitude: float = _arg(1.0, "scale of every op's range; 1 = TrivialAugmentWide's")

    def __post_init__(self) -> None:
        self._check_range("magnitude", 0.0, 1.0)

    def draw(self, n: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample op indices into :data:`TRIVIAL_OPS` (N,) and signed levels in [-1, 1] (N,)."""
        op = torch.randint(0, len(TRIVIAL_OPS), (n,), generator=generator, device=device)
        level = torch.randint(0, _TRIVIAL_BINS, (n,), generator=generator, device=device).float() / (_TRIVIAL_BINS - 1)
        sign = torch.rand(n, generator=generator, device=device).lt(0.5).float().mul_(2).sub_(1)
        return op, level * sign * self.magnitude

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        op, level = self.draw(n, generator, x.device)

        def amount(name: str) -> torch.Tensor:
            # The signed level for samples that drew `name`, 0 (the neutral amount) for the rest.
            return level * (op == TRIVIAL_OPS.index(name)).float()

        x = _trivial_geometry(x, op, amount)
        view = (n, 1, 1, 1)
        x.mul_((1 + 0.99 * amount("brightness")).to(x.dtype).view(view)).clamp_(0, 1)
        if c == 3:
            f = (1 + 0.99 * amount("color")).to(x.dtype).view(view)
            x.lerp_(_gray(x), 1 - f).clamp_(0, 1)
        f = (1 + 0.99 * amount("contrast")).to(x.dtype).view(view)
        mean = (_gray(x) if c == 3 else x).mean((1, 2, 3), keepdim=True)
        x.mul_(f).add_(mean.mul_(1 - f)).clamp_(0, 1)
        f = (1 + 0.99 * amount("sharpness")).to(x.dtype).view(view)
        x = _smooth(x).lerp_(x, f).clamp_(0, 1)  # weight 1 returns x itself
        # Posterize to 8 - 6 * |level| bits (TrivialAugmentWide: 8 down to 2), rounded.
        bits = 8 - (6 * amount("posterize").abs()).round()
        step = torch.exp2(8 - bits).to(x.dtype).view(view)  # 1 for everyone else
        posterized = (x * 255 + 1e-3).div_(step).floor_().mul_(step).div_(255)
        x = x.lerp_(posterized, (op == TRIVIAL_OPS.index("posterize")).to(x.dtype).view(view))
        # Solarize: invert pixels at or above a threshold of 1 - |level|; 2 is never reached.
        chosen = op == TRIVIAL_OPS.index("solarize")
        threshold = torch.where(chosen, 1 - amount("solarize").abs(), torch.full_like(level, 2.0)).to(x.dtype)
        # x -> 1 - x where x >= threshold, as x + flip * (1 - 2x): torch.where with a
        # broadcast per-sample threshold takes a slow path (measured ~3x slower on CPU).
        flip = x.ge(threshold.view(view)).to(x.dtype)
        x = x.addcmul_(flip, x.mul(-2).add_(1))
        # Autocontrast: per sample and channel, (x - lo) / (hi - lo); a flat channel is kept.
        # Only the drawing samples get a non-identity scale and offset, all on (N, C, 1, 1).
        lo = x.amin((2, 3), keepdim=True)
        hi = x.amax((2, 3), keepdim=True)
        use = (op == TRIVIAL_OPS.index("autocontrast")).view(view) & (hi > lo)
        scale = torch.where(use, 1 / (hi - lo).clamp_min(1e-6), torch.ones_like(hi))
        shift = torch.where(use, lo, torch.zeros_like(lo))
        return x.sub_(shift).mul_(scale).clamp_(0, 1)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3, centre 5, others 1, over 13) inside, x on the border (as torchvision).

    The 3x3 box sum is two passes of three shifted slices: a depthwise conv2d costs ~10x
    more on CPU for these small images (mkldnn's grouped convolution).
    """
    rows = x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]  # (N, C, H-2, W)
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # (N, C, H-2, W-2)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = box.add_(x[:, :, 1:-1, 1:-1], alpha=4).div_(13)
    return out


def _trivial_geometry(x: torch.Tensor, op: torch.Tensor, amount: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Warp the samples that drew shear, translate or rotate; the others come back exact."""
    n, _, h, w = x.shape
    angle = amount("rotate") * math.radians(135.0)
    shx, shy = amount("shear_x") * 0.99, amount("shear_y") * 0.99
    # 32 px on a 32 px side in TrivialAugmentWide; here that same fraction of each side, px.
    tx, ty = amount("translate_x") * w, amount("translate_y") * h
    cos, sin = angle.cos(), angle.sin()
    # A = rotation @ shear in pixel units (at most one of them is not the identity).
    a00, a01 = cos - sin * shy, cos * shx - sin
    a10, a11 = sin + cos * shy, sin * shx + cos
    # In grid_sample's normalised coordinates, x_n = x_px / (W / 2): A_n = S^-1 A S.
    theta = torch.stack(
        [
            torch.stack([a00, a01 * (h / w), tx * (2 / w)], 1),
            torch.stack([a10 * (w / h), a11, ty * (2 / h)], 1),
        ],
        1,
    )
    src = x if x.dtype in (torch.float32, torch.float64) else x.float()
    grid = F.affine_grid(theta.to(src.dtype), [n, x.shape[1], h, w], align_corners=False)
    warped = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False).to(x.dtype)
    geometric = [TRIVIAL_OPS.index(k) for k in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")]
    chosen = (op[:, None] == torch.tensor(geometric).to(op.device, non_blocking=True)).any(1)
    return x.lerp_(warped, chosen.to(x.dtype).view(n, 1, 1, 1))
