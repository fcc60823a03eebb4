"""anime-ddpm: DDPMs of anime and celebrity faces with Hugging Face diffusers and Accelerate."""

from .models import PRESETS, build_unet, unet_config
from .pipeline import AnimeDDPMPipeline, DenoisingRecorder
from .schedulers import SCHEDULERS, scheduler_from


__version__ = "0.1.0"

__all__ = [
    "AnimeDDPMPipeline",
    "DenoisingRecorder",
    "PRESETS",
    "SCHEDULERS",
    "build_unet",
    "scheduler_from",
    "unet_config",
]
