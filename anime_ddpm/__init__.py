"""anime-ddpm: DDPMs of anime and celebrity faces with Hugging Face diffusers and Accelerate.

The names below load on first use, so that `import anime_ddpm` (and with it `anime-ddpm --help` and every argument
error of the command line) does not wait for torch and diffusers to import.

A saved pipeline loads with `AnimeDDPMPipeline.from_pretrained(path)` (a folder or Hub repo id), or with diffusers
alone with `DiffusionPipeline.from_pretrained(path, custom_pipeline=path, trust_remote_code=True)`, which runs the
copy of `pipeline.py` saved beside the weights.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from .models import PRESETS, build_unet, unet_config
    from .pipeline import AnimeDDPMPipeline, DenoisingRecorder
    from .schedulers import SCHEDULERS, scheduler_from


__version__ = "0.1.0"

_LAZY = {
    "AnimeDDPMPipeline": ".pipeline",
    "DenoisingRecorder": ".pipeline",
    "PRESETS": ".models",
    "SCHEDULERS": ".schedulers",
    "build_unet": ".models",
    "scheduler_from": ".schedulers",
    "unet_config": ".models",
}

__all__ = [
    "AnimeDDPMPipeline",
    "DenoisingRecorder",
    "PRESETS",
    "SCHEDULERS",
    "build_unet",
    "scheduler_from",
    "unet_config",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
