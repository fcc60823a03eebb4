"""Named `UNet2DModel` configurations: the networks the DDPM literature trains, sized by name and resolution.

Attention sits at the 16x16 feature map (as in DDPM, DDIM and Improved DDPM) with one head per block: diffusers'
default `attention_head_dim=8` splits 64 channels into 8 heads of size 8, which the CPU attention kernel runs
slowly, and the papers' networks use a single head anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffusers import UNet2DModel


ATTENTION_RESOLUTION = 16
DEFAULT_PRESET = "small4"  # the trainer's --model and build_unet's default: docs/recipe.md says why


@dataclass(frozen=True)
class UNetPreset:
    description: str
    block_out_channels: tuple[int, ...]
    layers_per_block: int = 2
    norm_num_groups: int = 32
    dropout: float = 0.0
    attention_resolution: int | None = ATTENTION_RESOLUTION
    # For presets copied verbatim from elsewhere: the exact down/up block types and head size to use.
    down_block_types: tuple[str, ...] | None = None
    up_block_types: tuple[str, ...] | None = None
    attention_head_dim: int | None = None


PRESETS: dict[str, UNetPreset] = {
    "tiny": UNetPreset(
        "a few ten thousand parameters, for tests and smoke runs", (8, 16), layers_per_block=1, norm_num_groups=4
    ),
    "small": UNetPreset("1.6M parameters: the CPU default until December 2026 (3 levels)", (32, 64, 64)),
    # One ResBlock per level buys a fourth level (a 4x4 map at 32 px) for less time per step than `small`: at equal
    # time, a third as many malformed faces (docs/recipe.md, "The UNet's shape at equal time").
    "small4": UNetPreset(
        "3.0M parameters, 4 levels of one ResBlock: the CPU default at 32 px", (32, 64, 64, 128), layers_per_block=1
    ),
    "ddpm-cifar10": UNetPreset(
        "the DDPM CIFAR-10 network (Ho et al. 2020), 35.7M parameters at 32 px", (128, 256, 256, 256), dropout=0.1
    ),
    "ddim-celeba64": UNetPreset(
        "the DDPM/DDIM CelebA-64 network, 78.7M parameters", (128, 256, 256, 256, 512), dropout=0.1
    ),
    "diffusers-example": UNetPreset(
        "the default of diffusers' train_unconditional.py, 113.7M parameters",
        (128, 128, 256, 256, 512, 512),
        down_block_types=(
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "AttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
    ),
}


def unet_config(
    preset: str = DEFAULT_PRESET,
    resolution: int = 32,
    in_channels: int = 3,
    learned_variance: bool = False,
    num_class_embeds: int | None = None,
    self_condition: bool = False,
) -> dict[str, Any]:
    """The keyword arguments of `UNet2DModel` for a preset at a resolution.

    `learned_variance` doubles the output channels (mean and variance interpolation, Improved DDPM);
    `num_class_embeds` adds a class embedding (domain conditioning); `self_condition` doubles the input channels,
    the second half holding the network's previous estimate of x_0 (self-conditioning, Chen et al. 2022).
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown UNet preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    spec = PRESETS[preset]
    levels = len(spec.block_out_channels)
    min_resolution = 2 ** (levels - 1)
    if resolution < min_resolution or resolution % min_resolution:
        raise ValueError(
            f"The {preset!r} preset downsamples {levels - 1} times, so the resolution must be a multiple of "
            f"{min_resolution}; got {resolution}."
        )
    if spec.down_block_types is not None:
        down, up = spec.down_block_types, spec.up_block_types
        head_dim = spec.attention_head_dim
    else:
        feature_sizes = [resolution // 2**i for i in range(levels)]
        if spec.attention_resolution in feature_sizes:
            attn_level = feature_sizes.index(spec.attention_resolution)
        else:  # small images: attend at the coarsest level instead
            attn_level = levels - 1
        down = tuple("AttnDownBlock2D" if i == attn_level else "DownBlock2D" for i in range(levels))
        up = tuple("AttnUpBlock2D" if i == levels - 1 - attn_level else "UpBlock2D" for i in range(levels))
        head_dim = spec.block_out_channels[attn_level]  # one head
    config: dict[str, Any] = dict(
        sample_size=resolution,
        in_channels=in_channels * (2 if self_condition else 1),
        out_channels=in_channels * (2 if learned_variance else 1),
        block_out_channels=spec.block_out_channels,
        layers_per_block=spec.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=spec.norm_num_groups,
        dropout=spec.dropout,
        attention_head_dim=head_dim,
    )
    if num_class_embeds:
        config["num_class_embeds"] = num_class_embeds
    return config


def build_unet(
    preset: str = DEFAULT_PRESET, resolution: int = 32, self_condition: bool = False, **kwargs: Any
) -> UNet2DModel:
    """A stock `UNet2DModel`; a self-conditioned one says so in its config (`self_condition: true` in
    unet/config.json), which is how the pipeline knows to feed it its previous x_0."""
    unet = UNet2DModel(**unet_config(preset, resolution, self_condition=self_condition, **kwargs))
    if self_condition:
        unet.register_to_config(self_condition=True)
    return unet
