"""A closed-form noise predictor: the exact E[eps | x_t] for data from a known diagonal Gaussian.

Wrapped as a `UNet2DModel`, it lets tests check a sampler's mathematics without training anything: the pipeline
must turn noise into samples with the Gaussian's mean and standard deviation.
"""

import numpy as np
import torch
from diffusers import UNet2DModel
from diffusers.models.unets.unet_2d import UNet2DOutput


# The smallest UNet2DModel config: an oracle's `forward` ignores the layers, but the pipeline reads the config.
STUB_UNET_CONFIG = dict(
    block_out_channels=(4, 4),
    layers_per_block=1,
    norm_num_groups=2,
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
)


class GaussianOracleUNet(UNet2DModel):
    def __init__(self, mean, std, alphas_cumprod, sample_size=8, scheduler=None, prediction_type="epsilon"):
        super().__init__(sample_size=sample_size, **STUB_UNET_CONFIG)
        self.data_mean = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
        self.data_std = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
        abar = np.asarray(alphas_cumprod, dtype=np.float64)
        self.train_sigmas = np.sqrt((1 - abar) / abar)
        self.prediction_type = prediction_type  # "epsilon", or "sample": the exact E[x_0 | x_t] instead
        self.scheduler = scheduler  # sigma-space samplers (Euler, Heun) map fractional timesteps to their own sigmas

    def alpha_prod(self, timestep):
        t = torch.as_tensor(timestep).detach().cpu().double().reshape(-1)
        sigmas = getattr(self.scheduler, "sigmas", None)
        if sigmas is not None and len(sigmas) > len(self.scheduler.timesteps):
            # The scheduler's own sigma for this timestep: exact for Euler and Heun, whose timesteps are fractional.
            index = (self.scheduler.timesteps.double().cpu() - t[0]).abs().argmin()
            sigma = sigmas[index].double().expand_as(t).numpy()
        else:
            sigma = self.train_sigmas[t.long().numpy()]
        return torch.from_numpy(1 / (1 + sigma**2)).view(-1, 1, 1, 1)

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        x = sample.double()
        abar = self.alpha_prod(timestep)
        variance = abar * self.data_std**2 + (1 - abar)
        eps = (1 - abar).sqrt() * (x - abar.sqrt() * self.data_mean) / variance
        if self.prediction_type == "sample":
            x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
            return UNet2DOutput(sample=x0.to(sample.dtype))
        return UNet2DOutput(sample=eps.to(sample.dtype))
