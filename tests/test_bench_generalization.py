"""The generalization probe's x_0 estimate: exact for every prediction type when the UNet's output is exact."""

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from bench.bench_generalization import predicted_x0, x0_error


class ExactUNet:
    """Returns the true target of the noise it was built with, as a perfect UNet of the given kind would."""

    def __init__(self, scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, self_condition: bool = False):
        self.scheduler, self.x0, self.noise = scheduler, x0, noise
        self.config = SimpleNamespace(self_condition=self_condition)
        self.inputs: list[torch.Tensor] = []

    def __call__(self, model_input: torch.Tensor, timesteps: torch.Tensor) -> SimpleNamespace:
        self.inputs.append(model_input)
        kind = self.scheduler.config.prediction_type
        if kind == "sample":
            target = self.x0
        elif kind == "epsilon":
            target = self.noise
        else:
            target = self.scheduler.get_velocity(self.x0, self.noise, timesteps)
        return SimpleNamespace(sample=target)


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon", "v_prediction"])
def test_exact_output_gives_x0_back(prediction_type: str) -> None:
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type
    )
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=generator)
    for t in (10, 500, 900):
        noisy = scheduler.add_noise(x0, noise, torch.tensor([t]))
        estimate = predicted_x0(ExactUNet(scheduler, x0, noise), scheduler, noisy, t)
        torch.testing.assert_close(estimate, x0, atol=2e-4, rtol=0)


def test_self_conditioned_unet_gets_an_empty_estimate_and_noises_repeat() -> None:
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="sample")
    x0 = torch.zeros(2, 3, 8, 8)
    unet = ExactUNet(scheduler, x0, torch.zeros_like(x0), self_condition=True)
    assert x0_error(unet, scheduler, x0, 500, repeats=2) == 0.0
    x0_error(unet, scheduler, x0, 500, repeats=1)  # a second model or image set sees the same noises
    assert unet.inputs[0].shape[1] == 6 and unet.inputs[0][:, 3:].abs().max() == 0
    torch.testing.assert_close(unet.inputs[0], unet.inputs[2])  # the same noise for the same (t, repeat)
    assert not torch.equal(unet.inputs[0], unet.inputs[1])  # and a new one for the next repeat
