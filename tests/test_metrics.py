import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from PIL import Image

from anime_ddpm import AnimeDDPMPipeline, build_unet, metrics, viz
from anime_ddpm.metrics import (
    Evaluator,
    MetricUnavailable,
    evaluate_pipeline,
    frechet_distance,
    kernel_inception_distance,
    sliced_wasserstein_distance,
)


# ----------------------------------------------------------------------------------------------------- fixtures
def synthetic_faces(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth colour fields with a sharp-edged disc: structure at every pyramid level, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size), mode="bilinear", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        cy, cx = torch.randint(size // 5, size - size // 5, (2,), generator=g)
        radius = torch.randint(size // 8, size // 3, (1,), generator=g)
        disc = (((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2).float()
        low[i] = low[i] * (1 - disc) + torch.rand(3, 1, 1, generator=g) * disc
    return low * 2 - 1


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.arange(-3, 4, dtype=torch.float32)
    k = torch.exp(-(k**2) / (2 * sigma**2))
    k = k / k.sum()
    weight = (k[:, None] * k[None, :]).expand(3, 1, 7, 7)
    return F.conv2d(F.pad(images, (3, 3, 3, 3), mode="reflect"), weight, groups=3)


def gamma(images: torch.Tensor, g: float) -> torch.Tensor:
    return ((images + 1) / 2) ** g * 2 - 1


@pytest.fixture(scope="module")
def faces():
    return synthetic_faces(32)


def tiny_dinov2(image_size=32, patch_size=8):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=image_size,
        patch_size=patch_size,
    )
    return Dinov2Model(config).eval()


# ----------------------------------------------------------------------------------------------------- Frechet
def random_spd(d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_frechet_matches_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_closed_form_for_commuting_covariances():
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(6, 6)))  # shared eigenvectors
    v1, v2 = np.linspace(0.2, 4, 6), np.linspace(3, 0.5, 6)
    s1, s2 = q @ np.diag(v1) @ q.T, q @ np.diag(v2) @ q.T
    mu = np.arange(6.0)
    expected = np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2) + 6 * 0.25
    assert frechet_distance(mu, s1, mu + 0.5, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_general_case_symmetry_and_identity():
    s1, s2 = random_spd(8, 2), random_spd(8, 3)
    mu1, mu2 = np.zeros(8), np.ones(8)
    # tr sqrt(S1 S2) = sum of square roots of the (real, positive) eigenvalues of S1 S2.
    trace_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
    expected = 8 + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)
    # One dimension: (mu1 - mu2)^2 + (sigma1 - sigma2)^2.
    assert frechet_distance(1.0, 4.0, 3.0, 9.0) == pytest.approx(4 + 1)


def test_frechet_handles_singular_covariances_from_few_samples():
    features = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))  # rank 9 < 64
    assert metrics.frechet_distance_from_features(features, features) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="matching"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g)
    same, _ = kernel_inception_distance(a, b, num_subsets=20, subset_size=100)
    shifted, _ = kernel_inception_distance(a, b + 1, num_subsets=20, subset_size=100)
    assert abs(same) < 0.05 < shifted


# ----------------------------------------------------------------------------------------------------- SWD
def test_pyramid_matches_mirror_edge_pyrdown_and_reconstructs():
    x = metrics.to_uint8_levels(synthetic_faces(2, 32))
    # cv2.pyrDown / scipy.ndimage.convolve(mode="mirror") written out with numpy's "reflect" padding.
    k = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    blurred = sum(k[i, j] * padded[:, :, i : i + 32, j : j + 32] for i in range(5) for j in range(5))
    np.testing.assert_allclose(metrics.pyr_down(x).numpy(), blurred[:, :, ::2, ::2], atol=1e-3)
    pyramid = metrics.laplacian_pyramid(x, 2)
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(32, 32), (16, 16)]
    rebuilt = pyramid[0] + metrics.pyr_up(pyramid[1], (32, 32))
    torch.testing.assert_close(rebuilt, x, atol=1e-3, rtol=0)


def test_swd_levels_and_descriptors_follow_progressive_gan():
    assert metrics.swd_resolutions(64) == [64, 32, 16]
    assert metrics.swd_resolutions(8) == [8]  # below 16 px: one level at full resolution
    desc = metrics.swd_descriptors(synthetic_faces(3, 32))
    assert [tuple(d.shape) for d in desc] == [(3 * 128, 147), (3 * 128, 147)]
    per_channel = desc[0].reshape(-1, 3, 7, 7).transpose(0, 1).reshape(3, -1).double()
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(1, correction=0), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)


def test_swd_is_zero_for_identical_sets_and_symmetric(faces):
    same = sliced_wasserstein_distance(faces, faces.clone())
    assert set(same) == {"32", "16", "avg"} and all(v == 0 for v in same.values())
    other = synthetic_faces(32, seed=1)
    forward, backward = sliced_wasserstein_distance(faces, other), sliced_wasserstein_distance(other, faces)
    assert forward == pytest.approx(backward, rel=1e-6)
    assert forward["avg"] > 1
    assert forward["avg"] == pytest.approx((forward["32"] + forward["16"]) / 2)


def test_swd_grows_with_blur_and_with_a_colour_shift(faces):
    blurred = [sliced_wasserstein_distance(faces, blur(faces, s)) for s in (0.5, 1.0, 2.0)]
    assert 0 < blurred[0]["32"] < blurred[1]["32"] < blurred[2]["32"]  # blur removes the finest band first
    assert blurred[0]["avg"] < blurred[1]["avg"] < blurred[2]["avg"]
    shifted = [sliced_wasserstein_distance(faces, gamma(faces, g))["avg"] for g in (1.5, 2.5, 4.0)]
    assert 0 < shifted[0] < shifted[1] < shifted[2]


def test_swd_rejects_mismatched_sets(faces):
    with pytest.raises(ValueError, match="same number"):
        sliced_wasserstein_distance(faces, faces[:5])
    with pytest.raises(ValueError, match="no images"):
        sliced_wasserstein_distance(faces[:0], faces[:0])


# ----------------------------------------------------------------------------------------------------- DINOv2
def test_dinov2_features_from_a_small_random_model(faces):
    model = tiny_dinov2()
    features = metrics.dinov2_features(model, faces[:6], batch_size=4, resolution=32)
    assert features.shape == (6, 32) and torch.isfinite(features).all()
    one_batch = metrics.dinov2_features(model, faces[:6], batch_size=6, resolution=32)
    torch.testing.assert_close(features, one_batch, atol=1e-5, rtol=1e-5)

    evaluator = Evaluator(faces, ["swd", "fd_dinov2"], dinov2=model, dinov2_resolution=32, batch_size=16)
    same = evaluator(faces.clone())
    assert same["fd_dinov2"] == pytest.approx(0, abs=1e-6) and same["swd_avg"] == 0
    worse = evaluator(blur(faces, 2.0))
    assert worse["fd_dinov2"] > 1e-4 and worse["swd_avg"] > 10
    assert evaluator(blur(faces, 2.0)) == worse  # deterministic, reference work reused


def test_dinov2_offline_is_one_sentence_and_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(MetricUnavailable, match="not in the local Hugging Face cache"):
        metrics.load_dinov2("facebook/dinov2-base")
    assert time.perf_counter() - start < 15
    with pytest.raises(MetricUnavailable, match="no folder"):
        metrics.load_dinov2(str(tmp_path / "missing-dinov2"))


def test_fid_without_weights_is_skipped_or_explained(faces, tmp_path):
    missing = str(tmp_path / "inception.pth")
    with pytest.raises(MetricUnavailable, match="--inception-weights"):
        Evaluator(faces, ["swd", "fid"], inception_weights=missing)
    evaluator = Evaluator(faces, ["swd", "fid", "kid"], inception_weights=missing, skip_unavailable=True)
    assert evaluator.metrics == ["swd"] and set(evaluator.skipped) == {"fid", "kid"}
    assert set(evaluator(faces)) == {"swd_32", "swd_16", "swd_avg"}


# ----------------------------------------------------------------------------------------------------- pipeline
def test_evaluate_pipeline_scores_samples_of_a_tiny_model():
    torch.manual_seed(0)
    pipe = AnimeDDPMPipeline(unet=build_unet("tiny", 16).eval(), scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    reference = synthetic_faces(6, 16)
    result = evaluate_pipeline(pipe, reference, 6, num_inference_steps=3, batch_size=4)
    assert set(result) == {"swd_16", "swd_avg"} and result["swd_avg"] > 0
    again = evaluate_pipeline(pipe, Evaluator(reference), num_inference_steps=3, batch_size=6)
    assert again == pytest.approx(result)  # image i seeded seed + i: batch size does not matter
    with pytest.raises(ValueError, match="as many samples"):
        evaluate_pipeline(pipe, reference, 4, num_inference_steps=3)


# ----------------------------------------------------------------------------------------------------- viz
def test_make_grid_is_near_square_with_padding():
    images = torch.zeros(5, 3, 8, 8)
    images[0, 0] = 1.0  # first image red
    grid = viz.make_grid(images, padding=2)
    assert grid.size == (3 * 10 + 2, 2 * 10 + 2)
    assert grid.getpixel((2, 2)) == (255, 0, 0) and grid.getpixel((12, 2)) == (0, 0, 0)
    assert grid.getpixel((0, 0)) == (255, 255, 255)
    from_pil = viz.make_grid([Image.new("RGB", (8, 8), (0, 0, 255))] * 4, padding=1, scale=2)
    assert from_pil.size == (2 * 17 + 1, 2 * 17 + 1) and from_pil.getpixel((1, 1)) == (0, 0, 255)


def test_gif_and_strip(tmp_path):
    frames = [Image.new("RGB", (10, 6), (i * 40, 0, 0)) for i in range(4)]
    path = viz.save_gif(frames, tmp_path / "a.gif", duration_ms=50, final_hold_ms=500)
    gif = Image.open(path)
    assert gif.n_frames == 4 and gif.info["loop"] == 0
    gif.seek(3)
    assert gif.info["duration"] == 500
    latents = [torch.zeros(2, 3, 8, 8) for _ in range(3)]
    strip = viz.denoising_strip(latents, latents, ["a", "b", "c"], scale=2)
    assert strip.width > 3 * 16 and strip.height > 4 * 16
