"""Sample-quality metrics that run without a network: SWD always, FD_DINOv2 / FID / KID when their weights are local.

- Sliced Wasserstein distance (SWD) as in Progressive GAN's reference implementation (Karras et al. 2018):
  Laplacian pyramid down to 16x16, 128 random 7x7 patches per image per level, each set normalised per channel by
  its own statistics, 4 x 128 random unit projections per level, reported x1e3 per level and averaged. As in the
  original, that per-set normalisation makes SWD blind to a per-channel affine colour change (brightness/contrast)
  short of clipping; it sees blur, noise, texture and non-linear colour shifts. Unlike the original, both sets are
  cut at the same patch positions (common random numbers), so identical sets score exactly 0 and SWD is symmetric.
- FD_DINOv2 (Stein et al. 2023, EDM2): the Frechet distance between Gaussians fitted to DINOv2 CLS features.
- FID / KID: Inception-v3 pool features from torch-fidelity, with its weights from a local file only.

All image inputs are (N, 3, H, W) tensors in [-1, 1], the range of the training data.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import network
from .errors import first_line


ALL_METRICS = ("swd", "fd_dinov2", "fid", "kid")
DEFAULT_DINOV2 = "facebook/dinov2-base"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name for its weights

# Progressive GAN's SWD settings.
SWD_PATCH_SIZE = 7
SWD_PATCHES_PER_IMAGE = 128
SWD_DIRECTION_REPEATS = 4
SWD_DIRECTIONS_PER_REPEAT = 128
SWD_MIN_RESOLUTION = 16
_GAUSSIAN_5X5 = torch.outer(torch.tensor([1.0, 4, 6, 4, 1]), torch.tensor([1.0, 4, 6, 4, 1])) / 256.0


class MetricUnavailable(RuntimeError):
    """A metric cannot run here (missing package or weights); the message is one sentence for the user."""


# ----------------------------------------------------------------------------------------------------- helpers
def to_uint8_levels(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> float tensor of integer levels 0..255: the 8-bit images every reference metric sees."""
    return ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255)


def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be an (N, 3, H, W) tensor of RGB images, got {shape}.")
    if len(images) == 0:
        raise ValueError(f"{name} holds no images: metrics need at least one image per set.")


# ----------------------------------------------------------------------------------------------------- SWD
def _blur(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """5x5 depthwise convolution with mirror edges (scipy.ndimage 'mirror' == torch 'reflect')."""
    channels = images.shape[1]
    weight = kernel.to(images).expand(channels, 1, 5, 5)
    return F.conv2d(F.pad(images, (2, 2, 2, 2), mode="reflect"), weight, groups=channels)


def pyr_down(images: torch.Tensor) -> torch.Tensor:
    """cv2.pyrDown: Gaussian blur, keep every other pixel."""
    return _blur(images, _GAUSSIAN_5X5)[:, :, ::2, ::2]


def pyr_up(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """cv2.pyrUp: zero-insertion upsampling then 4x the Gaussian blur."""
    n, c, h, w = images.shape
    up = images.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = images
    return _blur(up, 4 * _GAUSSIAN_5X5)[:, :, : size[0], : size[1]]


def laplacian_pyramid(images: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """Band-pass levels from fine to coarse; the last level is the low-pass residual."""
    pyramid = [images.float()]
    for _ in range(1, num_levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - pyr_up(pyramid[-1], pyramid[-2].shape[-2:])
    return pyramid


def swd_resolutions(size: int) -> list[int]:
    """Pyramid levels of Progressive GAN: size, size/2, ... down to 16; a single level for images below 16 px."""
    if size < SWD_PATCH_SIZE:
        raise ValueError(f"SWD needs images of at least {SWD_PATCH_SIZE}x{SWD_PATCH_SIZE} pixels, got {size}.")
    resolutions = []
    while size >= SWD_MIN_RESOLUTION:
        resolutions.append(size)
        size //= 2
    return resolutions or [size]


def _patches(level: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` random 7x7 patches per image, fully inside it: (N * count, 3, 7, 7)."""
    n, c, h, w = level.shape
    half = SWD_PATCH_SIZE // 2
    offsets = torch.arange(-half, half + 1)
    ys = torch.randint(half, h - half, (n * count,), generator=generator)
    xs = torch.randint(half, w - half, (n * count,), generator=generator)
    image = torch.arange(n).repeat_interleave(count)
    return level[
        image[:, None, None, None],
        torch.arange(c)[None, :, None, None],
        (ys[:, None] + offsets)[:, None, :, None],
        (xs[:, None] + offsets)[:, None, None, :],
    ]


def swd_descriptors(images: torch.Tensor, seed: int = 0, chunk_size: int = 256) -> list[torch.Tensor]:
    """Per pyramid level, the normalised (N * 128, 147) patch descriptors of one image set.

    Patch positions depend only on `seed`, the image count and the size, so two sets of the same shape are sampled
    at the same places: identical sets give exactly 0 and swapping the sets gives exactly the same value.
    """
    _check_images(images, "images")
    resolutions = swd_resolutions(min(images.shape[-2:]))
    generator = torch.Generator().manual_seed(seed)
    per_level: list[list[torch.Tensor]] = [[] for _ in resolutions]
    for start in range(0, len(images), chunk_size):
        chunk = to_uint8_levels(images[start : start + chunk_size])
        for lod, level in enumerate(laplacian_pyramid(chunk, len(resolutions))):
            per_level[lod].append(_patches(level, SWD_PATCHES_PER_IMAGE, generator))
    return [_normalise(torch.cat(chunks)) for chunks in per_level]


def _normalise(descriptors: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per colour channel over the whole set (np.std, i.e. no Bessel correction)."""
    var, mean = torch.var_mean(descriptors, dim=(0, 2, 3), keepdim=True, correction=0)
    return ((descriptors - mean) / var.sqrt().clamp_min(1e-12)).reshape(len(descriptors), -1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator) -> float:
    """Mean over 4 x 128 random unit directions of the 1-D Wasserstein-1 distance between projected descriptors.

    Projections are sorted with numpy, whose column sort is the faster one on the CPU for these shapes.
    """
    if a.shape != b.shape:
        raise ValueError(f"SWD compares sets of equal size; got {tuple(a.shape)} and {tuple(b.shape)} descriptors.")
    a_np, b_np = a.numpy(), b.numpy()
    results = []
    for _ in range(SWD_DIRECTION_REPEATS):
        directions = torch.randn(a.shape[1], SWD_DIRECTIONS_PER_REPEAT, generator=generator, dtype=torch.float64)
        directions = (directions / directions.norm(dim=0, keepdim=True)).float().numpy()
        proj_a = np.sort(a_np @ directions, axis=0)
        proj_b = np.sort(b_np @ directions, axis=0)
        results.append(float(np.abs(proj_a - proj_b).mean(dtype=np.float64)))
    return float(np.mean(results))


def sliced_wasserstein_distance(a: torch.Tensor, b: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """SWD x 1e3 between two image sets in [-1, 1], per pyramid resolution ("64", "32", "16") and "avg"."""
    _check_images(a, "the first image set")
    _check_images(b, "the second image set")
    if a.shape != b.shape:
        raise ValueError(
            f"SWD compares two sets of the same number and size of images; got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    return swd_from_descriptors(swd_descriptors(a, seed), swd_descriptors(b, seed), seed, swd_resolutions(a.shape[-1]))


def swd_from_descriptors(
    desc_a: list[torch.Tensor], desc_b: list[torch.Tensor], seed: int, resolutions: Sequence[int]
) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed + 1)
    values = [1e3 * sliced_wasserstein(a, b, generator) for a, b in zip(desc_a, desc_b)]
    result = {str(res): value for res, value in zip(resolutions, values)}
    result["avg"] = float(np.mean(values))
    return result


# ----------------------------------------------------------------------------------------------------- Frechet
def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features, in float64."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"Feature statistics need at least 2 feature vectors, got shape {f.shape}.")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2): the 2-Wasserstein distance of two Gaussians.

    tr((S1 S2)^1/2) is computed through the symmetric matrix S1^1/2 S2 S1^1/2 with eigen-decompositions, so it needs
    no scipy, stays real and handles singular covariances (fewer samples than feature dimensions).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(
            f"Frechet distance needs matching means and covariances; got {mu1.shape}, {sigma1.shape}, "
            f"{mu2.shape}, {sigma2.shape}."
        )
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt, 0.0))


def frechet_distance_from_features(features1: Any, features2: Any) -> float:
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


# ----------------------------------------------------------------------------------------------------- KID
def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m = len(x)
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    features1: Any, features2: Any, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018) as torch-fidelity computes it: unbiased polynomial-kernel MMD^2, mean and std
    over random subsets (subset size capped by the smaller set)."""
    f1 = np.asarray(features1.detach().cpu() if isinstance(features1, torch.Tensor) else features1, np.float64)
    f2 = np.asarray(features2.detach().cpu() if isinstance(features2, torch.Tensor) else features2, np.float64)
    size = min(subset_size, len(f1), len(f2))
    if size < 2:
        raise ValueError("KID needs at least 2 images in each set.")
    rng = np.random.RandomState(seed)
    mmds = [
        _mmd2_unbiased(f1[rng.choice(len(f1), size, replace=False)], f2[rng.choice(len(f2), size, replace=False)])
        for _ in range(num_subsets)
    ]
    return float(np.mean(mmds)), float(np.std(mmds))


# ----------------------------------------------------------------------------------------------------- DINOv2
def load_dinov2(name_or_path: str = DEFAULT_DINOV2, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A DINOv2 `Dinov2Model` from a local folder, the local cache, or (only if it answers quickly) the Hub."""
    from transformers import Dinov2Model

    if os.path.isdir(name_or_path):
        return Dinov2Model.from_pretrained(name_or_path).to(device).eval()
    try:
        return Dinov2Model.from_pretrained(name_or_path, local_files_only=True).to(device).eval()
    except OSError:
        pass
    if not network.is_repo_id(name_or_path):
        raise MetricUnavailable(f"FD_DINOv2 needs DINOv2 weights, and there is no folder at {name_or_path}.")
    if network.is_offline() or (not network.behind_proxy() and not network.hub_reachable()):
        raise MetricUnavailable(
            f"FD_DINOv2 needs the DINOv2 weights {name_or_path!r}, which are not in the local Hugging Face cache, "
            "and the Hub cannot be reached: pass --dinov2 with a local copy, or leave fd_dinov2 out of --metrics."
        )
    try:
        return Dinov2Model.from_pretrained(name_or_path).to(device).eval()
    except OSError as error:
        raise MetricUnavailable(f"Could not load DINOv2 weights {name_or_path!r}: {first_line(error)}") from error


@torch.no_grad()
def dinov2_features(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64, resolution: int = 224
) -> torch.Tensor:
    """(N, D) CLS features after the final layer norm (`pooler_output`), as dgm-eval / EDM2 use for FD_DINOv2.

    Images go through 8-bit quantisation, a bicubic antialiased resize to `resolution` (224 px: 16x16 patches of
    14 px) and ImageNet normalisation.
    """
    _check_images(images, "images")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    features = []
    for start in range(0, len(images), batch_size):
        x = to_uint8_levels(images[start : start + batch_size]).to(device) / 255.0
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", antialias=True, align_corners=False)
        x = ((x.clamp(0, 1) - mean) / std).to(dtype)
        features.append(model(pixel_values=x).pooler_output.float().cpu())
    return torch.cat(features)


# ----------------------------------------------------------------------------------------------------- Inception
def find_inception_weights(path: str | None = None) -> str | None:
    """The Inception-v3 weights file: `path`, else torch-fidelity's file in the torch hub cache; None if absent."""
    if path:
        return path if os.path.isfile(path) else None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    return str(cached) if cached.is_file() else None


def load_inception(weights_path: str | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """torch-fidelity's TF-compatible Inception-v3, from a local weights file only (it would otherwise download)."""
    found = find_inception_weights(weights_path)
    if found is None:
        where = weights_path or f"{Path(torch.hub.get_dir()) / 'checkpoints' / INCEPTION_WEIGHTS_FILE}"
        raise MetricUnavailable(
            f"FID/KID need torch-fidelity's Inception weights and there is no file at {where}: pass "
            f"--inception-weights with a local copy of {INCEPTION_WEIGHTS_FILE} (nothing is downloaded)."
        )
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as error:
        raise MetricUnavailable(
            f"FID/KID need the torch-fidelity package, which cannot be imported here ({first_line(error)})."
        ) from error
    return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=found).to(
        device
    )


@torch.no_grad()
def inception_features(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, 2048) pool features; torch-fidelity's extractor takes uint8 images and resizes them itself."""
    _check_images(images, "images")
    device = next(model.parameters()).device
    features = []
    for start in range(0, len(images), batch_size):
        x = to_uint8_levels(images[start : start + batch_size]).to(torch.uint8).to(device)
        features.append(model(x)[0].float().cpu())
    return torch.cat(features)


# ----------------------------------------------------------------------------------------------------- suite
def parse_metrics(spec: str | Iterable[str]) -> list[str]:
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown or not names:
        raise ValueError(f"Unknown metric {', '.join(unknown) or '(none)'}; choose from {', '.join(ALL_METRICS)}.")
    return list(dict.fromkeys(names))


class Evaluator:
    """Scores image sets against one reference set, doing the reference-side work (features, statistics) once.

    The trainer builds one and calls it every N steps; `evaluate_pipeline` builds one per call. With
    `skip_unavailable`, metrics whose package or weights are missing are left out and explained in `self.skipped`;
    otherwise they raise `MetricUnavailable`.
    """

    def __init__(
        self,
        reference: torch.Tensor,
        metrics: str | Iterable[str] = ("swd",),
        *,
        dinov2: str | torch.nn.Module = DEFAULT_DINOV2,
        dinov2_resolution: int = 224,
        inception_weights: str | None = None,
        kid_subset_size: int = 1000,
        seed: int = 0,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        skip_unavailable: bool = False,
    ):
        _check_images(reference, "the reference images")
        self.reference = reference
        self.metrics = parse_metrics(metrics)
        self.seed, self.device, self.batch_size = seed, device, batch_size
        self.dinov2_resolution, self.kid_subset_size = dinov2_resolution, kid_subset_size
        self.skipped: dict[str, str] = {}
        self._dinov2 = self._dinov2_stats = self._inception = self._inception_ref = None
        self._swd_ref: list[torch.Tensor] | None = None
        if "fd_dinov2" in self.metrics:
            self._try("fd_dinov2", skip_unavailable, lambda: self._setup_dinov2(dinov2))
        if "fid" in self.metrics or "kid" in self.metrics:
            wanted = [m for m in ("fid", "kid") if m in self.metrics]
            self._try(wanted, skip_unavailable, lambda: self._setup_inception(inception_weights))

    def _try(self, names: str | list[str], skip: bool, setup) -> None:
        try:
            setup()
        except MetricUnavailable as error:
            if not skip:
                raise
            for name in [names] if isinstance(names, str) else names:
                self.skipped[name] = str(error)
                self.metrics.remove(name)

    def _setup_dinov2(self, dinov2: str | torch.nn.Module) -> None:
        model = load_dinov2(dinov2, self.device) if isinstance(dinov2, str) else dinov2.eval()
        self._dinov2 = model
        features = dinov2_features(model, self.reference, self.batch_size, self.dinov2_resolution)
        self._dinov2_stats = feature_statistics(features)

    def _setup_inception(self, weights: str | None) -> None:
        self._inception = load_inception(weights, self.device)
        self._inception_ref = inception_features(self._inception, self.reference, self.batch_size)

    def _swd(self, images: torch.Tensor) -> dict[str, float]:
        if images.shape != self.reference.shape:
            raise ValueError(
                f"SWD compares sets of the same number and size of images: {tuple(images.shape)} generated vs "
                f"{tuple(self.reference.shape)} reference."
            )
        if self._swd_ref is None:
            self._swd_ref = swd_descriptors(self.reference, self.seed)
        desc = swd_descriptors(images, self.seed)
        levels = swd_from_descriptors(desc, self._swd_ref, self.seed, swd_resolutions(images.shape[-1]))
        return {f"swd_{key}": value for key, value in levels.items()}

    def __call__(self, images: torch.Tensor) -> dict[str, float]:
        """Flat {name: value} for logging: swd_<res>..., swd_avg, fd_dinov2, fid, kid_mean, kid_std."""
        _check_images(images, "the generated images")
        result: dict[str, float] = {}
        if "swd" in self.metrics:
            result.update(self._swd(images))
        if "fd_dinov2" in self.metrics:
            feats = dinov2_features(self._dinov2, images, self.batch_size, self.dinov2_resolution)
            result["fd_dinov2"] = frechet_distance(*feature_statistics(feats), *self._dinov2_stats)
        if "fid" in self.metrics or "kid" in self.metrics:
            feats = inception_features(self._inception, images, self.batch_size)
            if "fid" in self.metrics:
                result["fid"] = frechet_distance_from_features(feats, self._inception_ref)
            if "kid" in self.metrics:
                mean, std = kernel_inception_distance(feats, self._inception_ref, subset_size=self.kid_subset_size)
                result["kid_mean"], result["kid_std"] = mean, std
        return result


def evaluate_pipeline(
    pipe: Any,
    reference: torch.Tensor | Evaluator,
    num_images: int | None = None,
    *,
    seed: int = 0,
    batch_size: int = 16,
    num_inference_steps: int | None = None,
    metrics: str | Iterable[str] = ("swd",),
    sample_kwargs: dict[str, Any] | None = None,
    **evaluator_kwargs: Any,
) -> dict[str, float]:
    """Samples `num_images` (image i seeded `seed + i`, as `anime-ddpm sample`) and scores them against `reference`.

    `reference` is an (N, 3, H, W) tensor in [-1, 1] (e.g. `data.take_images(config, N)`) or a ready `Evaluator`
    (the trainer's choice: reference features are computed once). `num_images` defaults to the reference count.
    """
    from .sampling import default_steps, generate

    evaluator = reference if isinstance(reference, Evaluator) else Evaluator(reference, metrics, **evaluator_kwargs)
    count = len(evaluator.reference) if num_images is None else num_images
    if count < 1:
        raise ValueError(f"The number of images to evaluate must be at least 1, got {count}.")
    if "swd" in evaluator.metrics and count != len(evaluator.reference):
        raise ValueError(f"SWD needs as many samples as reference images: {count} vs {len(evaluator.reference)}.")
    steps = num_inference_steps or default_steps(None)
    images = generate(
        pipe, count, seed=seed, batch_size=batch_size, num_inference_steps=steps, **(sample_kwargs or {})
    )
    return evaluator(images * 2 - 1)


def format_table(metrics: dict[str, float]) -> str:
    """A two-column text table for the terminal."""
    width = max([len(k) for k in metrics] + [6])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
    lines += [
        f"{name:<{width}}  {value:.4f}" if math.isfinite(value) else f"{name:<{width}}  nan"
        for name, value in metrics.items()
    ]
    return "\n".join(lines)
