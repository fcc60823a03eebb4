"""Training objectives for DDPMs: epsilon / v / sample targets, min-SNR weighting, and the Improved-DDPM hybrid loss.

The mathematics lives in small functions and in `DiffusionSchedule` (the per-timestep coefficient tables); the
`DiffusionLoss` class only wires them together for one training batch. Nothing here knows about Accelerate, data or
files, so every piece is testable with tiny tensors.

Papers cited by equation number:
- DDPM: Ho et al. 2020, "Denoising Diffusion Probabilistic Models".
- Improved DDPM: Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models".
- v-prediction: Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models".
- min-SNR: Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy".
- logit-normal timesteps: Esser et al. 2024, "Scaling Rectified Flow Transformers for High-Resolution Image
  Synthesis" (SD3), section 3.1, as diffusers' `compute_density_for_timestep_sampling` draws them.
- self-conditioning: Chen, Zhang & Hinton 2022, "Analog Bits: Generating Discrete Data using Diffusion Models with
  Self-Conditioning", section 3 (algorithm 3 for training, 4 for sampling).

Agreement with sampling: the learned variance is interpolated exactly as `DDPMScheduler(variance_type=
"learned_range")._get_variance` does at sampling time: log Sigma_t = frac * log beta_t + (1 - frac) * log beta~_t with
frac = (v + 1) / 2 and beta_t = 1 - abar_t / abar_prev taken from the scheduler's own `alphas_cumprod` (so a respaced
chain uses its respaced beta_t and beta~_t, as Improved DDPM section 4 prescribes). The two differ only at t = 0, where
diffusers clamps beta~_0 = 0 to 1e-20 and Improved DDPM uses beta~_1: the sampler adds no noise at t = 0, so the
variance there is only ever used by the training-time decoder likelihood, which follows the paper.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling
from diffusers.utils.torch_utils import randn_tensor

from .pipeline import image_channels


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# The training schedules: all of DDPMScheduler's (sigmoid and laplace reach the other samplers as betas).
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
BETA_SCHEDULE_ALIASES = {"cosine": "squaredcos_cap_v2"}
# How training timesteps are drawn: diffusers' SD3 `--weighting_scheme` names ("none": uniform, DDPM algorithm 1).
WEIGHTING_SCHEMES = ("none", "logit_normal")
FIXED_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")
VARIANCE_TYPES = (*FIXED_VARIANCE_TYPES, "learned_range")
# Half the width of one of the 256 pixel bins on [-1, 1].
HALF_BIN = 1.0 / 255.0
LOG_PROB_FLOOR = 1e-12

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], Any]


# --------------------------------------------------------------------------------------------------- schedulers
def make_noise_scheduler(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    prediction_type: str = "epsilon",
    variance_type: str = "fixed_small",
    **kwargs: Any,
) -> DDPMScheduler:
    """The training scheduler, validated up front so a typo fails with one sentence instead of deep in diffusers.

    `beta_schedule` is any `DDPMScheduler` schedule ("cosine" is accepted for `squaredcos_cap_v2`, Improved DDPM
    eq. 17); other keyword arguments (clip_sample, timestep_spacing, rescale_betas_zero_snr, ...) go to
    `DDPMScheduler` unchanged.
    """
    beta_schedule = BETA_SCHEDULE_ALIASES.get(beta_schedule, beta_schedule)
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"Unknown beta_schedule {beta_schedule!r}; choose one of {', '.join(BETA_SCHEDULES)}.")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"Unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}.")
    _check_variance_type(variance_type)
    if int(num_train_timesteps) < 2:
        raise ValueError(f"num_train_timesteps must be at least 2, got {num_train_timesteps}.")
    return DDPMScheduler(
        num_train_timesteps=int(num_train_timesteps),
        beta_schedule=beta_schedule,
        beta_start=beta_start,
        beta_end=beta_end,
        prediction_type=prediction_type,
        variance_type=variance_type,
        **kwargs,
    )


def _check_variance_type(variance_type: str) -> None:
    if variance_type == "learned":
        # diffusers' "learned" treats the output as the variance itself, Improved DDPM's as its log: ambiguous.
        raise ValueError('variance_type "learned" is not supported; use "learned_range" (Improved DDPM eq. 15).')
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"Unknown variance_type {variance_type!r}; choose one of {', '.join(VARIANCE_TYPES)}.")


def learns_variance(scheduler: DDPMScheduler) -> bool:
    """Whether the UNet must output 2C channels (mean target and variance interpolation v)."""
    return scheduler.config.get("variance_type", "fixed_small") == "learned_range"


def model_out_channels(scheduler: DDPMScheduler, in_channels: int = 3) -> int:
    """The UNet's `out_channels` for this scheduler: 2C with a learned variance, else C."""
    return 2 * in_channels if learns_variance(scheduler) else in_channels


def sampling_scheduler(scheduler: DDPMScheduler, unet: Any = None) -> DDPMScheduler:
    """A fresh `DDPMScheduler` to save with the pipeline: same config (learned_range included), no sampling state.

    With `unet` given, checks that its output channels match the variance type, so a saved pipeline cannot silently
    drop (or misread) the variance channels.
    """
    sampler = DDPMScheduler.from_config(scheduler.config)
    if unet is not None:
        expected = model_out_channels(sampler, image_channels(unet.config))
        if unet.config.out_channels != expected:
            raise ValueError(
                f"The UNet outputs {unet.config.out_channels} channels but variance_type "
                f"{sampler.config.variance_type!r} needs {expected}."
            )
    return sampler


# ------------------------------------------------------------------------------------------------ Gaussian math
def normal_kl(
    mean1: torch.Tensor, log_var1: torch.Tensor, mean2: torch.Tensor, log_var2: torch.Tensor
) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))) in nats (log-variances for stability).

    Written with expm1 so the near-zero KLs of nearly equal variances (large t) do not drown in float32 rounding.
    """
    log_ratio = log_var1 - log_var2
    return 0.5 * (torch.expm1(log_ratio) - log_ratio + (mean1 - mean2) ** 2 * torch.exp(-log_var2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log-probability of 8-bit pixels x in [-1, 1] under N(mean, exp(log_scale)^2) binned (DDPM eq. 13).

    Bins are 2/255 wide around the 256 pixel values; the two edge bins extend to -inf and +inf, so the 256
    probabilities sum to one. Uses the exact normal CDF, subtracting in whichever tail keeps precision.
    """
    inv_std = torch.exp(-log_scale)
    upper = (x - mean + HALF_BIN) * inv_std
    lower = (x - mean - HALF_BIN) * inv_std
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(X <= upper edge): the lowest bin
    log_sf_lower = torch.special.log_ndtr(-lower)  # log P(X > lower edge): the highest bin
    bin_probability = torch.where(
        lower > 0,
        torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
        torch.special.ndtr(upper) - torch.special.ndtr(lower),
    )
    log_bin = torch.log(bin_probability.clamp(min=LOG_PROB_FLOOR))
    return torch.where(x < -1 + HALF_BIN, log_cdf_upper, torch.where(x > 1 - HALF_BIN, log_sf_lower, log_bin))


def mean_bits_per_dim(nats: torch.Tensor) -> torch.Tensor:
    """Per-example mean over all non-batch dimensions, converted from nats to bits."""
    return nats.flatten(1).mean(dim=1) / math.log(2.0)


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, eq. 9 and its v / epsilon forms) for a given target.

    The x_0 loss is weighted by min(SNR, gamma); the same weight expressed for the epsilon loss (which equals the
    x_0 loss times SNR) is min(SNR, gamma) / SNR, and for the v loss ((SNR + 1) times x_0) min(SNR, gamma) / (SNR + 1).
    The epsilon form is written min(1, gamma / SNR) so that SNR = 0 (zero-terminal-SNR schedules) gives 1, not NaN.
    """
    if prediction_type == "epsilon":
        return (gamma / snr).clamp(max=1.0)
    clipped = snr.clamp(max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    if prediction_type == "sample":
        return clipped
    raise ValueError(f"Unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}.")


def capped_v_weight(snr: torch.Tensor, cap: float) -> torch.Tensor:
    """The x_0 loss weight min(SNR + 1, cap): v-prediction's weight on the x_0 error, capped.

    The v loss equals the x_0 loss times SNR + 1, which weighs low noise most; capping it keeps the x_0 target's
    parametrization (an x_0 model's error at low noise is blur, a v model's is noise left in the image) while
    training low noise more than the uniform x_0 weight does. High noise keeps the weight 1 (min-SNR's x_0 weight
    there is SNR, near 0).
    """
    return (snr + 1.0).clamp(max=cap)


def timestep_probabilities(
    num_train_timesteps: int, weighting_scheme: str = "none", logit_mean: float = 0.0, logit_std: float = 1.0
) -> torch.Tensor:
    """P(t) for t in [0, T) under a weighting scheme, exactly as `t = floor(T * u)` bins the continuous u.

    For logit-normal u = sigmoid(n), n ~ N(mean, std^2), so P(t) = Phi((logit((t+1)/T) - mean) / std)
    - Phi((logit(t/T) - mean) / std). A positive mean moves the draws to high t (more noise). The loss needs P(t)
    wherever a term must stay an unbiased estimate of a sum over t (the VLB).
    """
    if weighting_scheme == "none":
        return torch.full((num_train_timesteps,), 1.0 / num_train_timesteps, dtype=torch.float64)
    if weighting_scheme == "logit_normal":
        edges = torch.linspace(0.0, 1.0, num_train_timesteps + 1, dtype=torch.float64)
        cdf = torch.special.ndtr((torch.logit(edges) - logit_mean) / logit_std)  # logit(0) = -inf, logit(1) = inf
        return cdf[1:] - cdf[:-1]
    raise ValueError(f"Unknown weighting_scheme {weighting_scheme!r}; choose one of {', '.join(WEIGHTING_SCHEMES)}.")


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1)))


@dataclass(frozen=True)
class DiffusionSchedule:
    """Per-timestep coefficients of a variance-preserving chain, computed in float64 from its kept abar's.

    Built from `alphas_cumprod` alone, so the same code describes the full training chain and a respaced sampling
    chain (Improved DDPM section 4: beta_t = 1 - abar_t / abar_prev over the kept steps). Lookups return float32 on
    the timesteps' device.
    """

    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    betas: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef_x0: torch.Tensor
    posterior_mean_coef_xt: torch.Tensor

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor) -> DiffusionSchedule:
        abar = torch.as_tensor(alphas_cumprod).detach().cpu().to(torch.float64)
        if abar.ndim != 1 or len(abar) < 2:
            raise ValueError("A diffusion schedule needs at least 2 timesteps.")
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        betas = 1.0 - abar / abar_prev
        # DDPM eq. 7: q(x_{t-1} | x_t, x_0) = N(coef_x0 * x_0 + coef_xt * x_t, beta~_t).
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        # beta~_0 = 0: Improved DDPM replaces it by beta~_1 so the log (and the learned interpolation) stays finite.
        clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        return cls(
            alphas_cumprod=abar,
            alphas_cumprod_prev=abar_prev,
            betas=betas,
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=torch.log(clipped),
            posterior_mean_coef_x0=abar_prev.sqrt() * betas / (1.0 - abar),
            posterior_mean_coef_xt=(1.0 - betas).sqrt() * (1.0 - abar_prev) / (1.0 - abar),
        )

    @classmethod
    def from_scheduler(cls, scheduler: DDPMScheduler) -> DiffusionSchedule:
        """The full training chain, from the very `alphas_cumprod` the sampler will use."""
        return cls.from_alphas_cumprod(scheduler.alphas_cumprod)

    def respaced(self, timesteps: torch.Tensor | list[int]) -> DiffusionSchedule:
        """The chain that keeps only these timesteps (any order); index i of the result is the i-th smallest."""
        kept = torch.as_tensor(timesteps).detach().cpu().long().unique(sorted=True)
        return DiffusionSchedule.from_alphas_cumprod(self.alphas_cumprod[kept])

    def __len__(self) -> int:
        return len(self.alphas_cumprod)

    @staticmethod
    def at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] as float32 on t's device, shaped to broadcast against `like` (B, ...)."""
        return _broadcast(table.to(torch.float32).to(t.device)[t.long()], like)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        abar = self.alphas_cumprod.to(torch.float32).to(t.device)[t.long()]
        return abar / (1.0 - abar)

    # -- forward process
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM eq. 4), in float32 whatever the inputs."""
        x0, noise = x0.float(), noise.float()
        return (
            self.at(self.alphas_cumprod.sqrt(), t, x0) * x0
            + self.at((1.0 - self.alphas_cumprod).sqrt(), t, x0) * noise
        )

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction_type: str) -> torch.Tensor:
        """What the network regresses: eps (DDPM eq. 14), v = sqrt(abar) eps - sqrt(1-abar) x_0 (Salimans & Ho eq. 4
        rewritten), or x_0."""
        if prediction_type == "epsilon":
            return noise.float()
        if prediction_type == "v_prediction":
            sqrt_abar = self.at(self.alphas_cumprod.sqrt(), t, x0)
            sqrt_one_minus_abar = self.at((1.0 - self.alphas_cumprod).sqrt(), t, x0)
            return sqrt_abar * noise.float() - sqrt_one_minus_abar * x0.float()
        if prediction_type == "sample":
            return x0.float()
        raise ValueError(f"Unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}.")

    # -- reverse process
    def predict_x0(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction_type: str
    ) -> torch.Tensor:
        """x_0 implied by a prediction at x_t (the inverse of `target`; DDPM eq. 15 for epsilon)."""
        sqrt_abar = self.at(self.alphas_cumprod.sqrt(), t, x_t)
        sqrt_one_minus_abar = self.at((1.0 - self.alphas_cumprod).sqrt(), t, x_t)
        if prediction_type == "epsilon":
            return (x_t - sqrt_one_minus_abar * model_output) / sqrt_abar
        if prediction_type == "v_prediction":
            return sqrt_abar * x_t - sqrt_one_minus_abar * model_output
        if prediction_type == "sample":
            return model_output
        raise ValueError(f"Unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}.")

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x_0) (DDPM eq. 7); with a predicted x_0 it is the model mean p(x_{t-1} | x_t)."""
        return self.at(self.posterior_mean_coef_x0, t, x_t) * x0 + self.at(self.posterior_mean_coef_xt, t, x_t) * x_t

    def model_log_variance(self, variance_output: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log Sigma_theta = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1) / 2 (Improved DDPM eq. 15)."""
        frac = (variance_output + 1.0) / 2.0
        max_log = self.at(torch.log(self.betas), t, variance_output)
        min_log = self.at(self.posterior_log_variance_clipped, t, variance_output)
        return frac * max_log + (1.0 - frac) * min_log

    def vlb_terms_bits_per_dim(
        self,
        model_mean: torch.Tensor,
        model_log_variance: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """Per-example L_t in bits/dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0 and the discretized decoder
        NLL -log p(x_0|x_1) at t = 0 (DDPM eq. 5 and 13; Improved DDPM section 3.1)."""
        true_mean = self.posterior_mean(x0, x_t, t)
        true_log_variance = self.at(self.posterior_log_variance_clipped, t, x_t)
        kl = mean_bits_per_dim(normal_kl(true_mean, true_log_variance, model_mean, model_log_variance))
        decoder_nll = mean_bits_per_dim(-discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance))
        return torch.where(t == 0, decoder_nll, kl)

    def prior_bits_per_dim(self, x0: torch.Tensor) -> torch.Tensor:
        """Per-example L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim: the VLB term no parameter affects."""
        abar_last = self.alphas_cumprod[-1].to(torch.float32).to(x0.device)
        mean = abar_last.sqrt() * x0.float()
        log_var = torch.log1p(-abar_last).expand_as(mean)
        return mean_bits_per_dim(normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(mean)))


# ------------------------------------------------------------------------------------------------- the loss
@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to backward
    simple: torch.Tensor  # detached scalar: L_simple, the unweighted mean squared error of the target
    vlb_bits_per_dim: torch.Tensor | None  # detached scalar, learned variance only: estimate of the full VLB


def _autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """Keep the diffusion arithmetic in float32 even if the caller wrapped autocast around the whole loss."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class DiffusionLoss:
    """One training objective for a `DDPMScheduler` config: L_simple on its prediction target, optionally min-SNR
    weighted (or, for the x_0 target, weighted by min(SNR + 1, x0_weight_cap)), plus lambda * L_vlb for the variance
    channels when variance_type is "learned_range" (L_hybrid, Improved DDPM section 3.1).

    `vlb_weight` is lambda of Improved DDPM eq. 16 (1e-3), applied to L_vlb = sum_t L_t estimated as T * L_t.
    The model is called as `model(x_t, t, class_labels)` and may return a tensor or an object with `.sample` (a
    `UNet2DModel` works directly); the caller's autocast applies to it only: noising, targets and the loss run in
    float32.
    """

    def __init__(
        self,
        scheduler: DDPMScheduler,
        snr_gamma: float | None = None,
        vlb_weight: float = 1e-3,
        weighting_scheme: str = "none",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        input_perturbation: float = 0.0,
        self_condition: bool = False,
        x0_weight_cap: float = 0.0,
    ):
        config = scheduler.config
        self.prediction_type: str = config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"Unknown prediction_type {self.prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}."
            )
        _check_variance_type(config.get("variance_type", "fixed_small"))
        if config.get("rescale_betas_zero_snr", False) and self.prediction_type == "epsilon":
            raise ValueError(
                "rescale_betas_zero_snr makes x_0 unrecoverable from epsilon at the last step: use v_prediction."
            )
        if snr_gamma is not None and snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be positive (5 in Hang et al. 2023), got {snr_gamma}.")
        if x0_weight_cap:
            if not x0_weight_cap >= 1:  # NaN fails too
                raise ValueError(
                    f"x0_weight_cap must be 0 (off) or at least 1 (the weight at pure noise), got {x0_weight_cap}."
                )
            if self.prediction_type != "sample":
                raise ValueError(
                    f"x0_weight_cap weighs the x_0 error: it needs prediction_type 'sample', not {self.prediction_type!r}."
                )
            if snr_gamma is not None:
                raise ValueError("x0_weight_cap and snr_gamma are two loss weights: give one.")
        if weighting_scheme not in WEIGHTING_SCHEMES:
            raise ValueError(
                f"Unknown weighting_scheme {weighting_scheme!r}; choose one of {', '.join(WEIGHTING_SCHEMES)}."
            )
        if not logit_std > 0:
            raise ValueError(f"logit_std must be positive (1.0 in SD3), got {logit_std}.")
        if not input_perturbation >= 0:
            raise ValueError(f"input_perturbation must be >= 0 (0.1 in Ning et al. 2023), got {input_perturbation}.")
        self.scheduler = scheduler
        self.schedule = DiffusionSchedule.from_scheduler(scheduler)
        self.num_train_timesteps = len(self.schedule)
        self.learned_variance = learns_variance(scheduler)
        self.snr_gamma = snr_gamma
        self.vlb_weight = vlb_weight
        self.weighting_scheme = weighting_scheme
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)
        self.input_perturbation = float(input_perturbation)
        self.self_condition = bool(self_condition)
        self.x0_weight_cap = float(x0_weight_cap)
        self.timestep_probabilities = timestep_probabilities(
            self.num_train_timesteps, weighting_scheme, self.logit_mean, self.logit_std
        )
        # 1 / P(t) in float64 first, so that uniform timesteps weigh exactly T.
        self._inverse_timestep_probabilities = (1.0 / self.timestep_probabilities).to(torch.float32)

    def sample_timesteps(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None):
        """Timesteps uniform on [0, T) (DDPM algorithm 1), or floor(T u) with u logit-normal (SD3's sampling)."""
        sample_device = generator.device if generator is not None else device
        if self.weighting_scheme == "none":
            t = torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator, device=sample_device)
        else:
            u = compute_density_for_timestep_sampling(
                self.weighting_scheme,
                batch_size,
                logit_mean=self.logit_mean,
                logit_std=self.logit_std,
                device=sample_device,
                generator=generator,
            )
            t = (u * self.num_train_timesteps).long().clamp(max=self.num_train_timesteps - 1)
        return t.to(device)

    def __call__(
        self,
        model: Model,
        x0: torch.Tensor,
        *,
        class_labels: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        device = x0.device
        with _autocast_disabled(device):
            x0 = x0.float()
            if timesteps is None:
                timesteps = self.sample_timesteps(x0.shape[0], device, generator)
            timesteps = timesteps.to(device).long()
            if noise is None:
                noise = randn_tensor(x0.shape, generator=generator, device=device, dtype=torch.float32)
            noise = noise.to(device=device, dtype=torch.float32)
            x_t = self.schedule.add_noise(x0, self.perturbed(noise, generator), timesteps)

        model_input = x_t
        if self.self_condition:
            model_input = torch.cat([x_t, self.previous_estimate(model, x_t, timesteps, class_labels, generator)], 1)
        output = model(model_input, timesteps, class_labels)
        output = getattr(output, "sample", output)

        with _autocast_disabled(device):
            return self.loss_from_output(output.float(), x0, noise, x_t, timesteps)

    def perturbed(self, noise: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The noise that builds x_t: with input perturbation (DDPM-IP, Ning et al. 2023), noise + gamma * xi.

        The target stays the unperturbed noise (or x_0), so the model learns to undo inputs a little off the forward
        process, as its own earlier predictions are when it samples: the exposure bias of a long chain.
        """
        if not self.input_perturbation:
            return noise  # no extra draw: runs without it keep their random stream
        xi = randn_tensor(noise.shape, generator=generator, device=noise.device, dtype=torch.float32)
        return noise + self.input_perturbation * xi

    def previous_estimate(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        class_labels: torch.Tensor | None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """What a self-conditioned network sees beside x_t: zeros for half of the batch (the first sampling step),
        and for the other half its own x_0 estimate from a first, gradient-free pass with zeros there (Analog Bits,
        algorithm 3), clipped to [-1, 1] as the sampler clips it. The extra pass costs a forward over half the batch.
        """
        estimate = torch.zeros_like(x_t)
        draw_device = generator.device if generator is not None else x_t.device
        chosen = (torch.rand(x_t.shape[0], generator=generator, device=draw_device) < 0.5).nonzero().squeeze(1)
        chosen = chosen.to(x_t.device)
        # The first pass runs once per batch even when no example was chosen (on one, discarded): FSDP and ZeRO-3
        # gather the weights in every forward, and a rank that skipped it would leave the others waiting.
        passed = chosen if len(chosen) else torch.zeros(1, dtype=torch.long, device=x_t.device)
        x_passed, t_passed = x_t[passed], t[passed]
        labels = class_labels[passed] if class_labels is not None else None
        with torch.no_grad():
            output = model(torch.cat([x_passed, torch.zeros_like(x_passed)], 1), t_passed, labels)
            prediction = getattr(output, "sample", output).float()[:, : x_t.shape[1]]
            with _autocast_disabled(x_t.device):
                x0 = self.schedule.predict_x0(prediction, x_passed, t_passed, self.prediction_type)
        if len(chosen):
            estimate[chosen] = x0.clamp(-1.0, 1.0)
        return estimate

    def loss_from_output(
        self, output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> LossOutput:
        """The loss for a model output already computed at x_t (float32 tensors)."""
        channels = x0.shape[1]
        expected = 2 * channels if self.learned_variance else channels
        if output.shape[1] != expected:
            raise ValueError(
                f"The model outputs {output.shape[1]} channels but variance_type "
                f"{self.scheduler.config.variance_type!r} needs {expected} for {channels}-channel images."
            )
        prediction, variance_output = output[:, :channels], output[:, channels:]

        target = self.schedule.target(x0, noise, t, self.prediction_type)
        squared_error = (prediction - target).square().flatten(1).mean(dim=1)
        weights = torch.ones_like(squared_error)
        if self.snr_gamma is not None:
            weights = min_snr_weight(self.schedule.snr(t), self.snr_gamma, self.prediction_type)
        elif self.x0_weight_cap:
            weights = capped_v_weight(self.schedule.snr(t), self.x0_weight_cap)
        loss = (weights * squared_error).mean()

        vlb_estimate = None
        if self.learned_variance:
            vlb = self.vlb_terms(prediction, variance_output, x0, x_t, t)
            # L_vlb = sum_t L_t, estimated by L_t / P(t) at the sampled t: T * L_t when t is uniform (Improved DDPM
            # eq. 4-6, 16; with lambda = 1e-3 improved-diffusion's `vb * num_timesteps / 1000`), importance-weighted
            # under another weighting scheme so that the variance is still trained on the VLB itself.
            inverse_probability = self._inverse_timestep_probabilities.to(t.device)[t.long()]
            vlb_sum = inverse_probability * vlb
            loss = loss + self.vlb_weight * vlb_sum.mean()
            # For the logs, the whole negative ELBO in bits/dim: add the constant prior term L_T.
            prior = self.schedule.prior_bits_per_dim(x0)
            vlb_estimate = (vlb_sum + prior).mean().detach()

        return LossOutput(loss=loss, simple=squared_error.mean().detach(), vlb_bits_per_dim=vlb_estimate)

    def vlb_terms(
        self,
        prediction: torch.Tensor,
        variance_output: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """Per-example L_t in bits/dim with the mean detached: this term trains only the variance channels."""
        x0_prediction = self.schedule.predict_x0(prediction.detach(), x_t, t, self.prediction_type)
        model_mean = self.schedule.posterior_mean(x0_prediction, x_t, t)
        model_log_variance = self.schedule.model_log_variance(variance_output, t)
        return self.schedule.vlb_terms_bits_per_dim(model_mean, model_log_variance, x0, x_t, t)
