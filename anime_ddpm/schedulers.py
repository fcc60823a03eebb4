"""Short scheduler names for the command line, the demo and training previews."""

from __future__ import annotations

import inspect

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)


SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
}

# Steps that give close to full quality for each sampler (DDPM needs the whole chain without learned variance).
DEFAULT_STEPS: dict[str, int] = {
    "ddpm": 1000,
    "ddim": 50,
    "dpm++": 25,
    "euler": 50,
    "euler-a": 50,
    "heun": 25,
    "unipc": 25,
}


# The beta schedules every scheduler of SCHEDULERS builds from its name. DDPMScheduler also knows "sigmoid" and
# "laplace"; `scheduler_from` hands the other samplers such a schedule as its betas (`trained_betas`).
PORTABLE_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")

# diffusers' DPM-Solver and UniPC repeat a timestep (and then fail) when asked for all T steps with "leading" spacing.
_NO_FULL_CHAIN = ("dpm++", "unipc")


def max_inference_steps(name: str | None, num_train_timesteps: int) -> int:
    """The most sampling steps scheduler `name` can take for a model trained with T steps."""
    return num_train_timesteps - 1 if name in _NO_FULL_CHAIN else num_train_timesteps


def scheduler_from(name: str, base: SchedulerMixin) -> SchedulerMixin:
    """A scheduler of kind `name` with the training noise schedule of `base` (betas, T, prediction type).

    A schedule the sampler cannot build by name (sigmoid, laplace) reaches it as `base`'s own betas. The x_0
    clipping of the training config (`clip_sample`) carries over to every sampler that supports it. The learned
    variance of a `learned_range` DDPM only makes sense to `DDPMScheduler`; every other sampler gets a
    fixed-variance config and the pipeline hands it the mean channels only.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}.")
    scheduler_class = SCHEDULERS[name]
    # Every value of base's config counts, defaults included: from_config would give the keys listed in
    # `_use_default_values` the other class's own defaults (HeunDiscreteScheduler's beta_start/beta_end differ).
    config = {key: value for key, value in base.config.items() if key != "_use_default_values"}
    if name == "ddpm":
        return scheduler_class.from_config(config)
    config.pop("variance_type", None)
    overrides = {}
    if name == "dpm++":
        overrides.update(algorithm_type="dpmsolver++", solver_order=2)
    if config.get("trained_betas") is None and config.get("beta_schedule") not in PORTABLE_BETA_SCHEDULES:
        overrides.update(trained_betas=base.betas.tolist())
    accepted = inspect.signature(scheduler_class.__init__).parameters
    if config.get("clip_sample") and "clip_sample" not in accepted and "thresholding" in accepted:
        # DDPM and DDIM clip the predicted x_0 to [-1, 1]; DPM-Solver++ and UniPC have no clip_sample, and without
        # it the wild x_0 estimates of a young epsilon model near t = T turn into saturated noise. Thresholding
        # with sample_max_value = the clip range is exactly that clipping.
        overrides.update(thresholding=True, sample_max_value=config.get("clip_sample_range", 1.0))
    # Only the settings this class takes: DDPM's others (thresholding off, variance...) would be saved with it
    # without meaning anything. Keyword overrides: from_config drops keys another class's config saved.
    config = {key: value for key, value in config.items() if key in accepted}
    return scheduler_class.from_config(config, **overrides)
