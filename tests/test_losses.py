"""Tests of the training objectives against formulas written out independently here (float64, torch.distributions)."""

import math

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch.distributions import Normal, kl_divergence

from anime_ddpm.losses import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    DiffusionLoss,
    DiffusionSchedule,
    capped_v_weight,
    discretized_gaussian_log_likelihood,
    make_noise_scheduler,
    min_snr_weight,
    model_out_channels,
    sampling_scheduler,
    timestep_probabilities,
)


SHAPE = (4, 3, 4, 4)
LN2 = math.log(2.0)


def images(seed=0, shape=SHAPE):
    """Pixels quantized to the 256 values of an 8-bit image in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=generator).float() / 127.5 - 1


def gaussian(seed, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def abar64(scheduler):
    return scheduler.alphas_cumprod.double()


def expected_target(scheduler, x0, noise, t, prediction_type):
    """The regression targets written from their definitions (DDPM eq. 14, Salimans & Ho 2022 sec. 4) in float64."""
    abar = abar64(scheduler)[t].view(-1, 1, 1, 1)
    x0, noise = x0.double(), noise.double()
    return {
        "epsilon": noise,
        "v_prediction": abar.sqrt() * noise - (1 - abar).sqrt() * x0,
        "sample": x0,
    }[prediction_type]


class OracleModel(torch.nn.Module):
    """Returns a fixed tensor (the exact target, or anything else) and records what it was called with."""

    def __init__(self, output):
        super().__init__()
        self.output = output
        self.calls = []

    def forward(self, x_t, t, class_labels=None):
        self.calls.append((x_t, t, class_labels))
        return self.output


# ------------------------------------------------------------------------------------------------ schedulers
def test_make_noise_scheduler_validates_and_accepts_cosine_alias():
    scheduler = make_noise_scheduler(beta_schedule="cosine", prediction_type="v_prediction", num_train_timesteps=50)
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert scheduler.config.num_train_timesteps == 50
    with pytest.raises(ValueError, match="beta_schedule"):
        make_noise_scheduler(beta_schedule="cosin")
    with pytest.raises(ValueError, match="prediction_type"):
        make_noise_scheduler(prediction_type="eps")
    with pytest.raises(ValueError, match="learned_range"):
        make_noise_scheduler(variance_type="learned")


def test_cosine_alphas_cumprod_match_formula():
    """Improved DDPM eq. 17: abar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) pi/2), beta capped at 0.999."""
    T, s = 1000, 0.008
    scheduler = make_noise_scheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")

    def f(t):
        return torch.cos(((t / T + s) / (1 + s)) * torch.pi / 2) ** 2

    steps = torch.arange(T + 1, dtype=torch.float64)
    abar = f(steps) / f(torch.zeros(1, dtype=torch.float64))
    betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    torch.testing.assert_close(scheduler.betas.double(), betas, rtol=1e-5, atol=1e-7)
    # diffusers' alphas_cumprod[i] is abar after step i+1; the cap only bites at the very last step.
    uncapped = betas < 0.999
    assert uncapped.sum() == T - 1 and betas[-1] == 0.999
    torch.testing.assert_close(scheduler.alphas_cumprod.double()[uncapped], abar[1:][uncapped], rtol=2e-5, atol=1e-8)
    assert not torch.allclose(scheduler.alphas_cumprod, make_noise_scheduler(num_train_timesteps=T).alphas_cumprod)


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
def test_every_schedule_target_and_variance_trains(beta_schedule, prediction_type, variance_type):
    scheduler = make_noise_scheduler(
        num_train_timesteps=100,
        beta_schedule=beta_schedule,
        beta_start=1e-3,
        beta_end=0.05,
        prediction_type=prediction_type,
        variance_type=variance_type,
    )
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, model_out_channels(scheduler, 3), 3, padding=1)
    output = DiffusionLoss(scheduler, snr_gamma=5.0)(
        lambda x, t, y: net(x), images(), generator=torch.Generator().manual_seed(1)
    )
    output.loss.backward()
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in net.parameters())
    assert not output.simple.requires_grad
    if variance_type == "learned_range":
        assert torch.isfinite(output.vlb_bits_per_dim) and not output.vlb_bits_per_dim.requires_grad
    else:
        assert output.vlb_bits_per_dim is None


@pytest.mark.parametrize("beta_schedule", BETA_SCHEDULES)
def test_every_schedule_samples_with_every_sampler_on_the_training_betas(beta_schedule):
    """What training accepts, every sampler runs: schedules DPM-Solver & co. cannot build by name (sigmoid, laplace)
    reach them as betas, and config values left at DDPMScheduler's defaults are not swapped for another class's."""
    from anime_ddpm import AnimeDDPMPipeline, build_unet
    from anime_ddpm.schedulers import SCHEDULERS, scheduler_from

    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule=beta_schedule)  # beta_start/end: defaults
    abar = scheduler.alphas_cumprod
    assert (abar.diff() < 0).all() and 0 < abar[-1] < abar[0] < 1
    torch.manual_seed(0)
    unet = build_unet("tiny", 8).eval()
    for name in SCHEDULERS:
        sampler = scheduler_from(name, scheduler)
        torch.testing.assert_close(sampler.alphas_cumprod, abar, msg=name)
        pipe = AnimeDDPMPipeline(unet=unet, scheduler=sampler)
        pipe.set_progress_bar_config(disable=True)
        images = pipe(num_inference_steps=3, output_type="pt", generator=torch.Generator().manual_seed(0)).images
        assert images.shape == (1, 3, 8, 8) and torch.isfinite(images).all(), name


def test_timesteps_are_uniform_on_zero_to_T():
    loss = DiffusionLoss(make_noise_scheduler(num_train_timesteps=10))
    t = loss.sample_timesteps(5000, torch.device("cpu"), torch.Generator().manual_seed(0))
    counts = torch.bincount(t, minlength=10)
    assert len(counts) == 10 and counts.min() > 400  # every t in [0, T) is drawn, none outside


@pytest.mark.parametrize("logit_mean", [0.0, 0.5])
def test_logit_normal_timesteps_follow_sd3s_density_and_the_stated_probabilities(logit_mean):
    """t = floor(T u), u = sigmoid(N(mean, 1)): the draws match P(t) bin by bin, and P(t) is the logit-normal's mass
    over [t/T, (t+1)/T) integrated here numerically from its density (SD3, Esser et al. 2024, eq. 19)."""
    T = 20
    loss = DiffusionLoss(make_noise_scheduler(num_train_timesteps=T), weighting_scheme="logit_normal",
                         logit_mean=logit_mean)  # fmt: skip
    u = torch.linspace(0, 1, 200_001, dtype=torch.float64)[1:-1]
    density = torch.exp(-((torch.logit(u) - logit_mean) ** 2) / 2) / (math.sqrt(2 * math.pi) * u * (1 - u))
    numeric = torch.stack([torch.trapezoid(density[(u >= t / T) & (u <= (t + 1) / T)],
                                           u[(u >= t / T) & (u <= (t + 1) / T)]) for t in range(T)])  # fmt: skip
    torch.testing.assert_close(loss.timestep_probabilities, numeric, atol=2e-4, rtol=0)
    assert loss.timestep_probabilities.sum().item() == pytest.approx(1.0, abs=1e-12)

    n = 200_000
    t = loss.sample_timesteps(n, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < T
    observed = torch.bincount(t, minlength=T).double() / n
    standard_error = (loss.timestep_probabilities * (1 - loss.timestep_probabilities) / n).sqrt()
    assert ((observed - loss.timestep_probabilities).abs() <= 4 * standard_error + 1e-6).all()
    # A positive mean moves the draws to the noisy half: P(t >= T/2) = Phi(mean).
    assert (t >= T // 2).double().mean().item() == pytest.approx(
        0.5 * (1 + math.erf(logit_mean / math.sqrt(2))), abs=0.005
    )


def test_uniform_timestep_probabilities_and_bad_schemes():
    torch.testing.assert_close(timestep_probabilities(8), torch.full((8,), 1 / 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="weighting_scheme"):
        DiffusionLoss(make_noise_scheduler(), weighting_scheme="cosmap")
    with pytest.raises(ValueError, match="logit_std must be positive"):
        DiffusionLoss(make_noise_scheduler(), weighting_scheme="logit_normal", logit_std=0.0)


def test_vlb_estimate_stays_unbiased_when_timesteps_are_not_uniform():
    """Under logit-normal timesteps the VLB term is importance-weighted, L_t / P(t): its expectation over the
    sampler's P(t), taken exactly by enumerating t, is the same sum over t as the uniform estimate's T L_t."""
    T = 12
    scheduler = make_noise_scheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2",
                                     variance_type="learned_range")  # fmt: skip
    uniform = DiffusionLoss(scheduler)
    shifted = DiffusionLoss(scheduler, weighting_scheme="logit_normal", logit_mean=0.5)
    x0, noise = images(shape=(1, 3, 4, 4)), gaussian(1, shape=(1, 3, 4, 4))
    model = OracleModel(torch.cat([gaussian(2, (1, 3, 4, 4)), gaussian(3, (1, 3, 4, 4)).tanh()], dim=1))

    def estimate(objective, t):
        return objective(model, x0, timesteps=torch.tensor([t]), noise=noise).vlb_bits_per_dim.double()

    exact = sum(estimate(uniform, t) for t in range(T)) / T  # E over uniform t of (T L_t + L_T) = sum_t L_t + L_T
    expected = sum(shifted.timestep_probabilities[t] * estimate(shifted, t) for t in range(T))
    torch.testing.assert_close(expected, exact, rtol=1e-5, atol=0)
    # The weights differ per t (rare t weigh more), so this is not the uniform estimate relabelled.
    assert not torch.isclose(estimate(shifted, 0), estimate(uniform, 0))


# ------------------------------------------------------------------------------------------------ targets
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_loss_is_zero_for_the_exact_target(prediction_type):
    scheduler = make_noise_scheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    x0, noise, t = images(), gaussian(1), torch.tensor([0, 1, 500, 999])
    target = expected_target(scheduler, x0, noise, t, prediction_type).float()
    model = OracleModel(target)
    output = DiffusionLoss(scheduler)(model, x0, timesteps=t, noise=noise)
    assert output.loss.item() < 1e-10 and output.simple.item() < 1e-10
    # ...and the same model is far from zero loss on other data: the loss does look at the target.
    assert DiffusionLoss(scheduler)(model, images(5), timesteps=t, noise=gaussian(2)).loss.item() > 0.1


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_input_perturbation_moves_the_input_and_keeps_the_target(prediction_type):
    """DDPM-IP (Ning et al. 2023): x_t is built from noise + gamma * xi, the target from the noise alone."""
    scheduler = make_noise_scheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    x0, noise, t = images(shape=(64, 3, 8, 8)), gaussian(1, (64, 3, 8, 8)), torch.full((64,), 500)
    target = expected_target(scheduler, x0, noise, t, prediction_type).float()
    model = OracleModel(target)
    gamma = 0.1
    output = DiffusionLoss(scheduler, input_perturbation=gamma)(
        model, x0, timesteps=t, noise=noise, generator=torch.Generator().manual_seed(2)
    )
    assert output.loss.item() < 1e-10  # the exact unperturbed target is still exact
    x_t = model.calls[0][0]
    shift = x_t.double() - (abar64(scheduler)[500].sqrt() * x0 + (1 - abar64(scheduler)[500]).sqrt() * noise)
    # The extra input noise is gamma * sqrt(1 - abar_t) * xi with xi ~ N(0, I), drawn from the caller's generator.
    assert shift.std().item() == pytest.approx(gamma * (1 - abar64(scheduler)[500]).sqrt().item(), rel=0.05)
    assert shift.mean().abs().item() < 0.01
    # Off by default: no extra draw, so x_t is exactly the forward process's.
    plain = OracleModel(target)
    DiffusionLoss(scheduler)(plain, x0, timesteps=t, noise=noise, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(plain.calls[0][0], scheduler.add_noise(x0, noise, t), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="input_perturbation must be >= 0"):
        DiffusionLoss(scheduler, input_perturbation=-0.1)


class SelfConditionedModel(torch.nn.Module):
    """x_t times 3 plus the previous estimate; records each call's input, timesteps, labels and grad mode."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(3.0))
        self.calls = []

    def forward(self, x, t, class_labels=None):
        self.calls.append((x.detach().clone(), t.clone(), class_labels, torch.is_grad_enabled()))
        channels = x.shape[1] // 2
        return self.weight * x[:, :channels] + x[:, channels:]


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_self_conditioning_feeds_half_the_batch_its_own_clipped_x0_without_gradient(prediction_type):
    """Analog Bits, algorithm 3: for a random half of the batch a first pass, with zeros beside x_t and no gradient,
    gives the x_0 estimate that the second pass sees (clipped to the data range, as the sampler clips it); the other
    half sees zeros, as at the first sampling step. Only the second pass is trained."""
    scheduler = make_noise_scheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    x0, noise = images(shape=(64, 3, 4, 4)), gaussian(1, (64, 3, 4, 4))
    t = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(4))
    labels = torch.arange(64) % 3
    model = SelfConditionedModel()
    loss_fn = DiffusionLoss(scheduler, self_condition=True, input_perturbation=0.0)
    output = loss_fn(
        model, x0, class_labels=labels, timesteps=t, noise=noise, generator=torch.Generator().manual_seed(5)
    )

    (first, first_t, first_labels, first_grad), (second, second_t, second_labels, second_grad) = model.calls
    assert not first_grad and second_grad
    assert second.shape == (64, 6, 4, 4) and torch.equal(second_t, t) and torch.equal(second_labels, labels)
    x_t = scheduler.add_noise(x0, noise, t)
    torch.testing.assert_close(second[:, :3], x_t, atol=1e-5, rtol=0)
    chosen = second[:, 3:].flatten(1).abs().amax(dim=1) > 0
    assert 16 <= int(chosen.sum()) <= 48  # about half of 64
    # The first pass saw exactly the chosen examples, with zeros beside them.
    assert torch.equal(first_t, t[chosen]) and torch.equal(first_labels, labels[chosen])
    torch.testing.assert_close(first[:, :3], x_t[chosen], atol=1e-5, rtol=0)
    assert torch.equal(first[:, 3:], torch.zeros_like(first[:, 3:]))
    estimate = loss_fn.schedule.predict_x0(3.0 * x_t[chosen], x_t[chosen], t[chosen], prediction_type)
    torch.testing.assert_close(second[chosen, 3:], estimate.clamp(-1, 1), atol=1e-5, rtol=0)
    assert second[:, 3:].abs().max() <= 1.0
    # The gradient reaches the weight through the second pass only: d/dw of the loss at w = 3 by the chain rule.
    output.loss.backward()
    prediction = 3.0 * x_t + second[:, 3:]
    target = loss_fn.schedule.target(x0, noise, t, prediction_type)
    expected = (2 * (prediction - target) * x_t).flatten(1).mean(dim=1).mean()
    torch.testing.assert_close(model.weight.grad, expected, atol=1e-4, rtol=1e-4)


def test_self_conditioning_runs_the_first_pass_even_when_no_example_was_chosen():
    """Every rank must run as many forwards as the others (FSDP and ZeRO-3 gather weights in each): a batch where
    the coin chose no example still makes the first pass, and its result is discarded."""
    scheduler = make_noise_scheduler(prediction_type="sample")
    seed = next(s for s in range(100) if torch.rand(1, generator=torch.Generator().manual_seed(s)).item() >= 0.5)
    model = SelfConditionedModel()
    DiffusionLoss(scheduler, self_condition=True)(
        model, images(shape=(1, 3, 4, 4)), timesteps=torch.tensor([10]), noise=gaussian(1, (1, 3, 4, 4)),
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    assert len(model.calls) == 2
    assert torch.equal(model.calls[1][0][:, 3:], torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_learned_range_oracle_has_zero_kl(prediction_type):
    """Exact mean channels and v = -1 (Sigma = beta~_t, the true posterior variance) make every KL term vanish."""
    scheduler = make_noise_scheduler(prediction_type=prediction_type, variance_type="learned_range")
    x0, noise, t = images(), gaussian(1), torch.tensor([1, 2, 500, 999])
    target = expected_target(scheduler, x0, noise, t, prediction_type).float()
    loss = DiffusionLoss(scheduler)
    model = OracleModel(torch.cat([target, -torch.ones_like(target)], dim=1))
    output = loss(model, x0, timesteps=t, noise=noise)
    assert output.simple.item() < 1e-10
    x_t = model.calls[0][0]
    assert loss.vlb_terms(target, -torch.ones_like(target), x0, x_t, t).abs().max().item() < 1e-4
    # v = +1 (Sigma = beta_t) is a worse variance: clearly so at small t (at large t, beta_t and beta~_t coincide).
    assert loss.vlb_terms(target, torch.ones_like(target), x0, x_t, t)[:2].min().item() > 1e-2


def test_noising_is_fp32_under_bf16_autocast():
    """The forward process must not run in bf16: sqrt(1 - abar_0) = 0.01 would round to 0 and x_t == x_0."""
    scheduler = make_noise_scheduler()
    x0, noise, t = images(), gaussian(1), torch.zeros(SHAPE[0], dtype=torch.long)
    net = torch.nn.Conv2d(3, 3, 1)
    seen = {}

    def model(x_t, timesteps, class_labels):
        seen["x_t"] = x_t
        out = net(x_t)
        seen["output_dtype"] = out.dtype
        return out

    with torch.autocast("cpu", dtype=torch.bfloat16):  # the caller wraps everything, as accelerator.autocast() does
        output = DiffusionLoss(scheduler)(model, x0, timesteps=t, noise=noise)

    assert seen["output_dtype"] == torch.bfloat16  # the model did run in bf16...
    assert seen["x_t"].dtype == torch.float32 and output.loss.dtype == torch.float32  # ...the diffusion math did not
    abar0 = abar64(scheduler)[0]
    expected = abar0.sqrt() * x0.double() + (1 - abar0).sqrt() * noise.double()
    torch.testing.assert_close(seen["x_t"].double(), expected, rtol=0, atol=1e-6)
    assert (seen["x_t"] - x0).abs().max() > 0.01
    # What bf16 noising would have produced, to show this test can fail:
    abar_bf16 = scheduler.alphas_cumprod[0].to(torch.bfloat16)
    assert (1 - abar_bf16).sqrt().item() == 0.0


def test_model_returning_unet_output_and_class_labels_are_passed():
    scheduler = make_noise_scheduler()
    labels = torch.tensor([0, 1, 0, 1])

    class WithSample:
        def __init__(self, sample):
            self.sample = sample

    calls = []
    output = DiffusionLoss(scheduler)(
        lambda x, t, y: calls.append(y) or WithSample(torch.zeros_like(x)), images(), class_labels=labels
    )
    assert calls[0] is labels and torch.isfinite(output.loss)


def test_wrong_channel_count_is_explained():
    learned = make_noise_scheduler(variance_type="learned_range")
    with pytest.raises(ValueError, match="needs 6"):
        DiffusionLoss(learned)(lambda x, t, y: torch.zeros_like(x), images())
    with pytest.raises(ValueError, match="needs 3"):
        DiffusionLoss(make_noise_scheduler())(lambda x, t, y: torch.cat([x, x], 1), images())


# ------------------------------------------------------------------------------------------------ min-SNR
def test_min_snr_weights_match_formulas():
    snr, gamma = torch.tensor([0.0, 0.5, 5.0, 50.0]), 5.0
    torch.testing.assert_close(min_snr_weight(snr, gamma, "epsilon"), torch.tensor([1.0, 1.0, 1.0, 0.1]))
    torch.testing.assert_close(
        min_snr_weight(snr, gamma, "v_prediction"), torch.tensor([0.0, 0.5 / 1.5, 5 / 6, 5 / 51])
    )
    torch.testing.assert_close(min_snr_weight(snr, gamma, "sample"), torch.tensor([0.0, 0.5, 5.0, 5.0]))


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_loss_applies_min_snr_weights(prediction_type):
    gamma = 5.0
    scheduler = make_noise_scheduler(prediction_type=prediction_type)
    x0, noise, t = images(), gaussian(1), torch.tensor([0, 100, 400, 999])
    prediction = gaussian(3)
    output = DiffusionLoss(scheduler, snr_gamma=gamma)(OracleModel(prediction), x0, timesteps=t, noise=noise)

    target = expected_target(scheduler, x0, noise, t, prediction_type)
    mse = (prediction.double() - target).square().flatten(1).mean(1)
    abar = abar64(scheduler)[t]
    snr = abar / (1 - abar)
    weight = {
        "epsilon": torch.minimum(snr, torch.full_like(snr, gamma)) / snr,
        "v_prediction": torch.minimum(snr, torch.full_like(snr, gamma)) / (snr + 1),
        "sample": torch.minimum(snr, torch.full_like(snr, gamma)),
    }[prediction_type]
    assert weight.min() < 0.5 or weight.max() > 2  # the weights do differ from 1 at these timesteps
    torch.testing.assert_close(output.loss.double(), (weight * mse).mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(output.simple.double(), mse.mean(), rtol=1e-5, atol=0)


def test_capped_x0_weight_is_v_weight_up_to_the_cap():
    """min(SNR + 1, cap) on the x_0 error: 1 at pure noise (the plain x_0 loss), v's weight SNR + 1 in between, the cap
    at low noise; and it leaves the logged unweighted error alone."""
    cap = 5.0
    scheduler = make_noise_scheduler(prediction_type="sample")
    x0, noise, t = images(), gaussian(1), torch.tensor([0, 500, 700, 999])
    prediction = gaussian(3)
    output = DiffusionLoss(scheduler, x0_weight_cap=cap)(OracleModel(prediction), x0, timesteps=t, noise=noise)

    mse = (prediction.double() - x0.double()).square().flatten(1).mean(1)
    abar = abar64(scheduler)[t]
    weight = (abar / (1 - abar) + 1).clamp(max=cap)
    assert weight[0] == cap and 1 < weight[1] < cap and weight[-1] < 1.001  # the three regimes are all drawn
    torch.testing.assert_close(output.loss.double(), (weight * mse).mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(output.simple.double(), mse.mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(capped_v_weight(torch.tensor([0.0, 2.0, 100.0]), cap), torch.tensor([1.0, 3.0, 5.0]))


@pytest.mark.parametrize(
    "prediction_type, kwargs, message",
    [
        ("sample", {"x0_weight_cap": 0.5}, "at least 1"),
        ("sample", {"x0_weight_cap": math.nan}, "at least 1"),
        ("epsilon", {"x0_weight_cap": 5.0}, "needs prediction_type 'sample'"),
        ("sample", {"x0_weight_cap": 5.0, "snr_gamma": 5.0}, "give one"),
    ],
)
def test_capped_x0_weight_refuses_what_it_cannot_mean(prediction_type, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiffusionLoss(make_noise_scheduler(prediction_type=prediction_type), **kwargs)


# ------------------------------------------------------------------------------------------------ hybrid loss
def independent_posterior(scheduler, x0, x_t, t):
    """q(x_{t-1} | x_t, x_0) from DDPM eq. 6-7, in float64."""
    abar = abar64(scheduler)
    a_t = abar[t].view(-1, 1, 1, 1)
    a_prev = torch.where(t > 0, abar[(t - 1).clamp(min=0)], torch.ones_like(t, dtype=torch.float64)).view(-1, 1, 1, 1)
    beta = 1 - a_t / a_prev
    mean = (a_prev.sqrt() * beta * x0.double() + (1 - beta).sqrt() * (1 - a_prev) * x_t.double()) / (1 - a_t)
    variance = (1 - a_prev) / (1 - a_t) * beta
    return mean, variance, beta


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_kl_term_equals_closed_form_kl_of_two_gaussians(beta_schedule):
    scheduler = make_noise_scheduler(
        beta_schedule=beta_schedule, prediction_type="sample", variance_type="learned_range"
    )
    loss = DiffusionLoss(scheduler)
    x0, t = images(), torch.tensor([1, 10, 500, 999])
    x_t = DiffusionSchedule.from_scheduler(scheduler).add_noise(x0, gaussian(1), t)
    x0_hat, v = x0 + 0.1 * gaussian(2), gaussian(3).tanh()
    bits = loss.vlb_terms(x0_hat, v, x0, x_t, t)

    true_mean, true_variance, beta = independent_posterior(scheduler, x0, x_t, t)
    model_mean, _, _ = independent_posterior(scheduler, x0_hat, x_t, t)
    frac = (v.double() + 1) / 2
    model_variance = beta**frac * true_variance ** (1 - frac)  # exp(frac log beta + (1 - frac) log beta~)
    kl = kl_divergence(Normal(true_mean, true_variance.sqrt()), Normal(model_mean, model_variance.sqrt()))
    expected = kl.flatten(1).mean(1) / LN2
    assert expected[:2].min() > 0.1  # at large t the x_0 error barely moves the mean, so the KL is tiny there
    torch.testing.assert_close(bits.double(), expected, rtol=2e-4, atol=1e-7)


def test_decoder_probabilities_over_all_256_bins_sum_to_one():
    pixels = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # all 256 values of one pixel
    for mean, log_scale in [(0.0, -3.0), (0.37, -6.0), (-0.99, -4.0), (1.5, -2.0), (0.2, 1.0), (-1.0, -9.0)]:
        for dtype in (torch.float64, torch.float32):
            x = pixels.to(dtype)
            log_p = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
            assert torch.isfinite(log_p).all()
            torch.testing.assert_close(
                log_p.exp().sum().double(), torch.tensor(1.0, dtype=torch.float64), atol=2e-6, rtol=0
            )


def test_t0_term_is_the_discretized_decoder_nll():
    scheduler = make_noise_scheduler(prediction_type="sample", variance_type="learned_range")
    loss = DiffusionLoss(scheduler)
    x0, t = images(), torch.zeros(SHAPE[0], dtype=torch.long)
    x_t = DiffusionSchedule.from_scheduler(scheduler).add_noise(x0, gaussian(1), t)
    x0_hat, v = x0 + 0.01 * gaussian(2), gaussian(3).tanh()
    bits = loss.vlb_terms(x0_hat, v, x0, x_t, t)

    # At t = 0 the model mean is x0_hat (posterior coefficients 1 and 0); the variance interpolates between
    # beta_0 and the clipped beta~_1.
    abar = abar64(scheduler)
    beta0 = 1 - abar[0]
    clipped_posterior = (1 - abar[0]) / (1 - abar[1]) * (1 - abar[1] / abar[0])
    frac = (v.double() + 1) / 2
    std = (beta0**frac * clipped_posterior ** (1 - frac)).sqrt()
    normal = Normal(x0_hat.double(), std)
    x = x0.double()
    upper = torch.where(x > 0.999, torch.ones_like(x), normal.cdf(x + 1 / 255))
    lower = torch.where(x < -0.999, torch.zeros_like(x), normal.cdf(x - 1 / 255))
    expected = -torch.log(upper - lower).flatten(1).mean(1) / LN2
    torch.testing.assert_close(bits.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_vlb_gradients_reach_only_the_variance_channels(prediction_type):
    scheduler = make_noise_scheduler(prediction_type=prediction_type, variance_type="learned_range")
    loss = DiffusionLoss(scheduler)
    x0, t = images(), torch.tensor([0, 3, 500, 999])
    x_t = DiffusionSchedule.from_scheduler(scheduler).add_noise(x0, gaussian(1), t)
    output = torch.cat([gaussian(2), gaussian(3).tanh()], dim=1).requires_grad_()
    loss.vlb_terms(output[:, :3], output[:, 3:], x0, x_t, t).sum().backward()
    assert torch.isfinite(output.grad).all() and output.grad[:, :3].abs().max() == 0
    assert (output.grad[:, 3:].flatten(1).abs().sum(1) > 0).all()


@pytest.mark.parametrize("vlb_weight", [1e-3, 0.01])
def test_hybrid_loss_adds_lambda_times_the_vlb_estimate(vlb_weight):
    """L_hybrid = L_simple + lambda L_vlb, L_vlb estimated as T L_t (Improved DDPM eq. 16). T = 250 shows the scaling:
    with lambda = 1e-3 the term is improved-diffusion's `vb * num_timesteps / 1000`."""
    T = 250
    scheduler = make_noise_scheduler(
        num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", variance_type="learned_range"
    )
    loss = DiffusionLoss(scheduler, vlb_weight=vlb_weight)
    x0, noise, t = images(), gaussian(1), torch.tensor([0, 1, 100, 249])
    model = OracleModel(torch.cat([gaussian(2), gaussian(3).tanh()], dim=1))
    output = loss(model, x0, timesteps=t, noise=noise)
    vlb = loss.vlb_terms(model.output[:, :3], model.output[:, 3:], x0, model.calls[0][0], t)
    torch.testing.assert_close(output.loss, output.simple + vlb_weight * T * vlb.mean())
    if vlb_weight == 1e-3:
        torch.testing.assert_close(output.loss, output.simple + (T / 1000) * vlb.mean())
    prior = DiffusionSchedule.from_scheduler(scheduler).prior_bits_per_dim(x0)
    torch.testing.assert_close(output.vlb_bits_per_dim, (T * vlb + prior).mean())


# ------------------------------------------------------------------------------------------------ sampling agrees
def diffusers_step(scheduler, model_output, t, x_t, seed):
    return scheduler.step(model_output, t, x_t, generator=torch.Generator().manual_seed(seed)).prev_sample


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_training_reverse_step_is_what_diffusers_samples(prediction_type):
    """p(x_{t-1} | x_t) as trained (mean and learned log variance) equals DDPMScheduler(learned_range).step."""
    scheduler = make_noise_scheduler(prediction_type=prediction_type, variance_type="learned_range", clip_sample=False)
    schedule = DiffusionSchedule.from_scheduler(scheduler)
    x_t = gaussian(1, (1, 3, 4, 4))
    prediction, v = gaussian(2, (1, 3, 4, 4)), gaussian(3, (1, 3, 4, 4)).tanh()
    for step in [1, 2, 10, 500, 998, 999]:
        t = torch.tensor([step])
        mean = schedule.posterior_mean(schedule.predict_x0(prediction, x_t, t, prediction_type), x_t, t)
        log_variance = schedule.model_log_variance(v, t)
        noise = randn_tensor(x_t.shape, generator=torch.Generator().manual_seed(step), dtype=torch.float32)
        ours = mean + (0.5 * log_variance).exp() * noise
        theirs = diffusers_step(scheduler, torch.cat([prediction, v], 1), step, x_t, seed=step)
        # diffusers forms beta_t = 1 - abar_t / abar_prev in float32 (relative error ~5e-4 at t = 1); we use float64.
        torch.testing.assert_close(theirs, ours, rtol=2e-3, atol=1e-4)


def test_respaced_learned_range_step_uses_respaced_beta_and_posterior_variance():
    scheduler = make_noise_scheduler(variance_type="learned_range", clip_sample=False)
    scheduler.set_timesteps(50)  # leading spacing: 980, 960, ..., 20, 0
    t, t_prev = 500, 480
    assert t_prev == scheduler.previous_timestep(t)
    abar = abar64(scheduler)
    # The respaced chain's step t -> t_prev, written out (Improved DDPM sec. 4).
    beta = 1 - abar[t] / abar[t_prev]
    posterior_variance = (1 - abar[t_prev]) / (1 - abar[t]) * beta
    assert beta > 10 * scheduler.betas[t]  # far from the 1000-step beta_t: using that would fail below

    x_t, eps, v = gaussian(1, (1, 3, 4, 4)), gaussian(2, (1, 3, 4, 4)), gaussian(3, (1, 3, 4, 4)).tanh()
    frac = (v.double() + 1) / 2
    log_variance = frac * beta.log() + (1 - frac) * posterior_variance.log()
    x0 = (x_t.double() - (1 - abar[t]).sqrt() * eps.double()) / abar[t].sqrt()
    mean = (abar[t_prev].sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - abar[t_prev]) * x_t.double()) / (1 - abar[t])
    noise = randn_tensor(x_t.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    expected = mean + (0.5 * log_variance).exp() * noise.double()

    theirs = diffusers_step(scheduler, torch.cat([eps, v], 1), t, x_t, seed=7)
    torch.testing.assert_close(theirs.double(), expected, rtol=1e-4, atol=1e-4)

    # The library's respaced schedule gives the same variance (index 25 of the kept 0, 20, ..., 980 is t = 500).
    respaced = DiffusionSchedule.from_scheduler(scheduler).respaced(scheduler.timesteps)
    index = torch.tensor([25])
    torch.testing.assert_close(respaced.model_log_variance(v, index).double(), log_variance, rtol=1e-5, atol=1e-6)


def test_sampling_scheduler_keeps_learned_range_and_checks_the_unet():
    from anime_ddpm import build_unet

    scheduler = make_noise_scheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    scheduler.set_timesteps(10)
    sampler = sampling_scheduler(scheduler, build_unet("tiny", 8, learned_variance=True))
    assert sampler is not scheduler and sampler.config.variance_type == "learned_range"
    assert sampler.config.beta_schedule == "squaredcos_cap_v2" and sampler.num_inference_steps is None
    with pytest.raises(ValueError, match="needs 6"):
        sampling_scheduler(scheduler, build_unet("tiny", 8, learned_variance=False))


def test_zero_terminal_snr_needs_v_prediction():
    with pytest.raises(ValueError, match="v_prediction"):
        DiffusionLoss(make_noise_scheduler(rescale_betas_zero_snr=True))
    scheduler = make_noise_scheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    output = DiffusionLoss(scheduler, snr_gamma=5.0)(
        lambda x, t, y: torch.zeros_like(x), images(), timesteps=torch.tensor([0, 1, 998, 999])
    )
    assert torch.isfinite(output.loss)


def test_diffusers_ddpm_scheduler_default_still_matches():
    """Guard: the defaults of make_noise_scheduler are the DDPM paper's (and diffusers') linear 1e-4..0.02."""
    torch.testing.assert_close(make_noise_scheduler().alphas_cumprod, DDPMScheduler().alphas_cumprod)
