# Copyright 2026 The anime-ddpm authors. Licensed under the Apache License, Version 2.0.
"""AnimeDDPMPipeline: unconditional (or domain-conditioned) image generation with any DDPM-compatible scheduler.

This file imports nothing from the rest of `anime_ddpm` on purpose: it is uploaded as-is as the `pipeline.py` of
every model we push, so users with only diffusers installed can load it with
`DiffusionPipeline.from_pretrained(repo, custom_pipeline=repo, trust_remote_code=True)`.
"""

from __future__ import annotations

import ast
import inspect
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor


OUTPUT_TYPES = ("pil", "np", "pt")
# k-diffusion samplers whose `step` takes epsilon or v but raises for an x_0 ("sample") model: for them the pipeline
# turns x_0 into epsilon in their sigma space (latents = x_0 + sigma * eps).
EPSILON_ONLY_SCHEDULERS = (
    "EulerAncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DPMSolverSDEScheduler",
)
CALLBACK_TENSOR_INPUTS = ("latents", "pred_original_sample", "model_output")

# Keys of a UNet's config (unet/config.json) that this pipeline reads and `UNet2DModel.__init__` does not take.
PIPELINE_CONFIG_KEYS = ("domains", "self_condition")


class PipelineConfigKeysFilter(logging.Filter):
    """Drops diffusers' warning that our UNet config keys "will be ignored" (they are kept in the config, which is
    where this pipeline reads them); the warning about any other unexpected key still shows."""

    prefix, marker = "The config attributes ", " were passed to UNet2DModel"

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.prefix) or self.marker not in message:
            return True
        try:
            keys = ast.literal_eval(message[len(self.prefix) : message.index(self.marker)]).keys()
        except (ValueError, SyntaxError, AttributeError):
            return True
        return not set(keys) <= set(PIPELINE_CONFIG_KEYS)


logging.getLogger("diffusers.configuration_utils").addFilter(PipelineConfigKeysFilter())


def predict_original_sample(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor | float, prediction_type: str
) -> torch.Tensor:
    """x_0 from a model output at a variance-preserving x_t, for schedulers whose `step` does not report it."""
    alpha_prod_t = torch.as_tensor(alpha_prod_t, dtype=sample.dtype, device=sample.device)
    beta_prod_t = 1 - alpha_prod_t
    if prediction_type == "epsilon":
        return (sample - beta_prod_t.sqrt() * model_output) / alpha_prod_t.sqrt()
    if prediction_type == "v_prediction":
        return alpha_prod_t.sqrt() * sample - beta_prod_t.sqrt() * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"Unknown prediction_type {prediction_type!r}; expected epsilon, v_prediction or sample.")


def step_parameters(scheduler: SchedulerMixin) -> set[str]:
    """The keyword arguments `scheduler.step` takes. A subclass whose `step(..., **kwargs)` hands them on to its base
    class takes what the base's `step` does: read from the first `step` up the class tree without `**kwargs`, so
    that such a scheduler still gets the caller's `generator` (else its noise would come from the global RNG and
    seeded images would not repeat) and never an argument its base would refuse."""
    for cls in type(scheduler).__mro__:
        step = cls.__dict__.get("step")
        if step is None:
            continue
        parameters = inspect.signature(step).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return set(parameters)
    return set()


def image_channels(unet_config: Any) -> int:
    """The channels of the images a UNet makes: its input channels, or half of them when it is self-conditioned
    (`self_condition` in its config: the other half is its previous estimate of x_0, Chen et al. 2022)."""
    get = (
        unet_config.get
        if isinstance(unet_config, dict)
        else lambda key, default=None: getattr(unet_config, key, default)
    )
    in_channels = int(get("in_channels"))
    return in_channels // 2 if get("self_condition", False) else in_channels


def evenly_spaced_steps(total: int, count: int) -> list[int]:
    """`count` step indices spread evenly from the first step to the last, so that a strip or a GIF of the reverse
    process always starts from noise and ends at the sample (every step when `count` <= 0 or >= `total`)."""
    if count <= 0 or count >= total:
        return list(range(total))
    if count == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def display_scale(scheduler: SchedulerMixin, step: int) -> float:
    """The factor that puts the latents after denoising step `step` on the data's [-1, 1] scale for display.

    Sigma-space samplers (Euler, Heun, ...) carry x_0 + sigma * eps, i.e. sqrt(1 + sigma^2) times the
    variance-preserving x_t that DDPM, DDIM, DPM-Solver and UniPC carry; shown as they are, they look saturated.
    """
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None or float(scheduler.init_noise_sigma) <= 1.0 + 1e-6 or step + 1 >= len(sigmas):
        return 1.0
    return 1.0 / math.sqrt(1.0 + float(sigmas[step + 1]) ** 2)


class DenoisingRecorder:
    """A `callback_on_step_end` that keeps x_t and the predicted x_0 at chosen step indices (for strips and GIFs).

    Example:
        >>> recorder = DenoisingRecorder(num_snapshots=8)
        >>> images = pipe(num_inference_steps=50, callback_on_step_end=recorder).images
        >>> recorder.steps, recorder.latents[0].shape, recorder.pred_original_samples[0].shape
    """

    tensor_inputs = ["latents", "pred_original_sample"]

    def __init__(self, steps: Sequence[int] | None = None, num_snapshots: int | None = None):
        """Keeps the step indices `steps` (negative ones count from the end), else `num_snapshots` evenly spaced
        ones (0: every step; default 10)."""
        if steps is None and num_snapshots is None:
            num_snapshots = 10
        if num_snapshots is not None and num_snapshots < 0:
            raise ValueError(f"num_snapshots must be 0 (every step) or more, got {num_snapshots}.")
        self._requested_steps = None if steps is None else sorted({int(s) for s in steps})
        self.num_snapshots = num_snapshots
        self.steps: list[int] = []
        self.timesteps: list[float] = []
        self.latents: list[torch.Tensor] = []
        self.pred_original_samples: list[torch.Tensor] = []

    def wanted_steps(self, total_steps: int) -> set[int]:
        if self._requested_steps is not None:
            return {s if s >= 0 else total_steps + s for s in self._requested_steps}
        return set(evenly_spaced_steps(total_steps, self.num_snapshots))

    def __call__(self, pipe: AnimeDDPMPipeline, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        if step in self.wanted_steps(pipe.num_timesteps):
            self.steps.append(step)
            self.timesteps.append(float(timestep))
            self.latents.append(callback_kwargs["latents"].detach().float().cpu())
            self.pred_original_samples.append(callback_kwargs["pred_original_sample"].detach().float().cpu())
        return {}


class AnimeDDPMPipeline(DiffusionPipeline):
    r"""
    Pipeline for unconditional image generation with a DDPM, driven by any scheduler compatible with `DDPMScheduler`.

    This model inherits from [`DiffusionPipeline`]. Check the superclass documentation for the generic methods
    implemented for all pipelines (downloading, saving, running on a particular device, etc.).

    Unlike diffusers' `DDPMPipeline` it scales the initial noise by `scheduler.init_noise_sigma`, calls
    `scheduler.scale_model_input`, and passes to `scheduler.step` only the keyword arguments it accepts, so DDIM,
    DPM-Solver, Euler, Heun, UniPC and PNDM all sample correctly. It also supports UNets that learn their variance
    (`out_channels = 2 * in_channels`), class-conditional UNets (one class per training domain, the last class
    reserved as the null label) with classifier-free guidance, and self-conditioned UNets (`self_condition` in the
    UNet's config: each step also sees the x_0 the previous step predicted, Chen et al. 2022, whatever the scheduler).

    Parameters:
        unet ([`UNet2DModel`]):
            A `UNet2DModel` to denoise the images.
        scheduler ([`SchedulerMixin`]):
            A scheduler compatible with [`DDPMScheduler`], e.g. [`DDPMScheduler`], [`DDIMScheduler`],
            [`DPMSolverMultistepScheduler`], [`EulerDiscreteScheduler`] or [`UniPCMultistepScheduler`].
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = list(CALLBACK_TENSOR_INPUTS)

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> AnimeDDPMPipeline:
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "model_index.json")):
            raise ValueError(
                f"{path} is not a saved pipeline (it has no model_index.json): give the folder that training or "
                "save_pretrained wrote, or a Hub repo id."
            )
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ----------------------------------------------------------------------------------------------------- sharing
    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """`DiffusionPipeline.save_pretrained`, plus this file as `pipeline.py`, so that the folder (and a Hub repo
        made from it, by `push_to_hub` or by hand) loads with only diffusers installed through
        `DiffusionPipeline.from_pretrained(path, custom_pipeline=path, trust_remote_code=True)`."""
        os.makedirs(save_directory, exist_ok=True)
        target = os.path.join(save_directory, "pipeline.py")
        source = os.path.abspath(__file__)
        if not (os.path.exists(target) and os.path.samefile(source, target)):
            shutil.copyfile(source, target)
        super().save_pretrained(save_directory, *args, **kwargs)

    def push_to_hub(self, repo_id: str, *args: Any, **kwargs: Any) -> str:
        """Uploads the pipeline, `pipeline.py` and a model card to the Hub repo `repo_id` (created if needed).

        With the anime-ddpm package installed this is `anime_ddpm.hub.push_to_hub(self, repo_id, **kwargs)`: the card
        is rendered from the model's config and carries a sample grid, and failures are one sentence. Where this file
        runs without the package (a Hub repo's remote code) it is diffusers' own `push_to_hub`.
        """
        if args:
            raise TypeError(
                f"AnimeDDPMPipeline.push_to_hub takes only repo_id positionally, got {len(args)} more: pass them by "
                "keyword (e.g. private=True)."
            )
        try:  # imported here: this file must load without the package, and anime_ddpm.hub imports this module
            from anime_ddpm.hub import push_to_hub
            from anime_ddpm.pipeline import AnimeDDPMPipeline as PackagedPipeline
        except ImportError as error:
            if not (error.name or "").startswith("anime_ddpm"):
                raise
            return super().push_to_hub(repo_id, **kwargs)
        if not isinstance(self, PackagedPipeline):  # this file loaded as remote code beside an installed package
            return super().push_to_hub(repo_id, **kwargs)
        return push_to_hub(self, repo_id, **kwargs)

    # ----------------------------------------------------------------------------------------------------- domains
    @property
    def domains(self) -> list[str]:
        """Names of the domains a class-conditional UNet was trained on (empty for an unconditional model)."""
        return list(getattr(self.unet.config, "domains", None) or [])

    def _domain_label(self, domain: str | int) -> int:
        num_class_embeds = self.unet.config.num_class_embeds
        if not num_class_embeds:
            raise ValueError("This model is unconditional: call it with domain=None (it has no domains to choose).")
        if isinstance(domain, str) and domain not in self.domains and domain.strip().isdigit():
            domain = int(domain)  # "1" from a command line: an index, unless a domain has that name
        if isinstance(domain, str):
            if domain not in self.domains:
                raise ValueError(f"Unknown domain {domain!r}: this model knows {self.domains}.")
            return self.domains.index(domain)
        if not 0 <= int(domain) < num_class_embeds - 1:
            raise ValueError(f"Domain index {domain} is out of range: use 0 to {num_class_embeds - 2}.")
        return int(domain)

    # ----------------------------------------------------------------------------------------------------- helpers
    def check_inputs(self, batch_size: int, num_inference_steps: int, output_type: str, guidance_scale: float):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
        max_steps = self.scheduler.config.num_train_timesteps
        if num_inference_steps > max_steps:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} exceeds the {max_steps} steps the model was trained with."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}; got {output_type!r}.")
        if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}.")

    def _step_kwargs(self, generator, eta: float) -> dict[str, Any]:
        accepted = step_parameters(self.scheduler)
        kwargs: dict[str, Any] = {}
        if "generator" in accepted:
            kwargs["generator"] = generator
        if "eta" in accepted:
            kwargs["eta"] = eta
        return kwargs

    def _uses_learned_variance(self) -> bool:
        return self.scheduler.config.get("variance_type", None) in ("learned", "learned_range")

    def _alpha_prod(self, timestep: torch.Tensor) -> torch.Tensor:
        return self.scheduler.alphas_cumprod.to(timestep.device)[timestep.long()]

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    # ----------------------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 1000,
        output_type: str | None = "pil",
        return_dict: bool = True,
        eta: float = 0.0,
        domain: str | int | None = None,
        guidance_scale: float = 1.0,
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable[[DiffusionPipeline, int, Any, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""
        The call function to the pipeline for generation.

        Args:
            batch_size (`int`, *optional*, defaults to 1):
                The number of images to generate.
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*):
                A [`torch.Generator`](https://pytorch.org/docs/stable/generated/torch.Generator.html) to make
                generation deterministic. A list with one generator per image gives each image the result it would
                have if generated alone.
            num_inference_steps (`int`, *optional*, defaults to 1000):
                The number of denoising steps. With `DDPMScheduler` fewer steps than the training steps respace the
                chain (Improved DDPM); fast schedulers (DPM-Solver++, UniPC) need only 20-50.
            output_type (`str`, *optional*, defaults to `"pil"`):
                The output format of the generated image. Choose between `"pil"` (`PIL.Image`), `"np"` (`np.array`)
                or `"pt"` (`torch.Tensor`), all in [0, 1].
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether or not to return a [`~pipelines.ImagePipelineOutput`] instead of a plain tuple.
            eta (`float`, *optional*, defaults to 0.0):
                DDIM's eta (0 is deterministic DDIM, 1 is DDPM-like); ignored by schedulers without it.
            domain (`str` or `int`, *optional*):
                For a model trained with `--condition_on_source`: the domain (name or index) to sample. `None`
                samples unconditionally (the null label).
            guidance_scale (`float`, *optional*, defaults to 1.0):
                Classifier-free guidance weight w in `eps_null + w * (eps_domain - eps_null)`. 1 means no guidance
                and costs no extra UNet evaluation.
            latents (`torch.Tensor`, *optional*):
                Pre-generated unit Gaussian noise of shape `(batch_size, C, H, W)` to start from.
            callback_on_step_end (`Callable`, *optional*):
                A function called at the end of each denoising step as `callback_on_step_end(self, step, timestep,
                callback_kwargs)`, where `callback_kwargs` holds the tensors named in
                `callback_on_step_end_tensor_inputs`. Returning `{"latents": ...}` replaces x_t. See
                [`DenoisingRecorder`] for keeping x_t and the predicted x_0 at chosen steps.
            callback_on_step_end_tensor_inputs (`List[str]`, *optional*):
                Tensors passed to the callback: any of `"latents"` (x_t after the step), `"pred_original_sample"`
                (the predicted x_0) and `"model_output"`. Defaults to the callback's own `tensor_inputs` attribute
                or `["latents"]`.

        Example:

        ```py
        >>> from anime_ddpm import AnimeDDPMPipeline
        >>> from diffusers import DPMSolverMultistepScheduler

        >>> pipe = AnimeDDPMPipeline.from_pretrained("./ddpm-emoji-32")
        >>> pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        >>> image = pipe(num_inference_steps=25).images[0]
        >>> image.save("face.png")
        ```

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`:
                If `return_dict` is `True`, [`~pipelines.ImagePipelineOutput`] is returned, otherwise a `tuple` is
                returned where the first element is a list with the generated images
        """
        self.check_inputs(batch_size, num_inference_steps, output_type, guidance_scale)
        if callback_on_step_end_tensor_inputs is None:
            callback_on_step_end_tensor_inputs = list(getattr(callback_on_step_end, "tensor_inputs", ["latents"]))
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"Unknown callback tensor inputs {sorted(unknown)}; choose from {self._callback_tensor_inputs}."
            )

        device = self._execution_device
        dtype = self.unet.dtype
        config = self.unet.config
        channels = image_channels(config)
        self_conditioned = bool(getattr(config, "self_condition", False))
        size = config.sample_size
        shape = (batch_size, channels, *((size, size) if isinstance(size, int) else size))

        # Class labels: the domain's index, or the null class (the last embedding) for unconditional sampling.
        class_labels = None
        guided = False
        if config.num_class_embeds:
            null_label = config.num_class_embeds - 1
            label = null_label if domain is None else self._domain_label(domain)
            class_labels = torch.full((batch_size,), label, device=device, dtype=torch.long)
            guided = domain is not None and guidance_scale != 1.0
            if guided:
                class_labels = torch.cat([class_labels, torch.full_like(class_labels, null_label)])
        elif domain is not None:
            self._domain_label(domain)  # raises the explanatory error

        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
        latents = latents.to(device=device, dtype=torch.float32)

        scheduler = self.scheduler
        prediction_type = scheduler.config.get("prediction_type", "epsilon")
        x0_to_epsilon = prediction_type == "sample" and type(scheduler).__name__ in EPSILON_ONLY_SCHEDULERS
        if x0_to_epsilon:  # told to expect epsilon for this call only (restored below)
            scheduler.register_to_config(prediction_type="epsilon")
            prediction_type = "epsilon"  # what model_output holds once converted
        try:
            scheduler.set_timesteps(num_inference_steps, device=device)
            latents = latents * scheduler.init_noise_sigma
            step_kwargs = self._step_kwargs(generator, eta)
            learned_variance = self._uses_learned_variance()
            timesteps = scheduler.timesteps
            self._num_timesteps = len(timesteps)
            previous_x0 = torch.zeros_like(latents)  # self-conditioning: no estimate before the first step

            for i, t in enumerate(self.progress_bar(timesteps)):
                model_input = scheduler.scale_model_input(latents, t)
                unet_input = torch.cat([model_input, previous_x0], dim=1) if self_conditioned else model_input
                unet_input = torch.cat([unet_input] * 2) if guided else unet_input
                timestep_batch = t.expand(unet_input.shape[0]) if t.ndim == 0 else t
                model_output = self.unet(
                    unet_input.to(dtype), timestep_batch, class_labels=class_labels
                ).sample.float()
                if guided:
                    cond, uncond = model_output.chunk(2)
                    # Guide the mean channels only; the variance channels come from the conditional prediction.
                    cond[:, :channels] = uncond[:, :channels] + guidance_scale * (
                        cond[:, :channels] - uncond[:, :channels]
                    )
                    model_output = cond
                if model_output.shape[1] == 2 * channels and not learned_variance:
                    model_output = model_output[:, :channels]
                if x0_to_epsilon:
                    # model_input = latents / sqrt(sigma^2 + 1) at this step, which gives sigma without touching the
                    # scheduler's internals; then epsilon = (latents - x_0) / sigma.
                    c_in = (scheduler.scale_model_input(torch.ones((), device=device), t)).float()
                    sigma = (1.0 / c_in**2 - 1.0).clamp(min=1e-12).sqrt()
                    model_output = (latents - model_output) / sigma

                step_output = scheduler.step(model_output, t, latents, **step_kwargs)
                latents = step_output.prev_sample

                wants_x0 = callback_on_step_end is not None and "pred_original_sample" in callback_on_step_end_tensor_inputs  # fmt: skip
                if self_conditioned or wants_x0:
                    pred_x0 = getattr(step_output, "pred_original_sample", None)
                    if pred_x0 is None:
                        pred_x0 = predict_original_sample(
                            model_output[:, :channels], model_input, self._alpha_prod(t), prediction_type
                        )
                    if self_conditioned:  # clipped as in training, where the estimate is clipped to [-1, 1]
                        previous_x0 = pred_x0.clamp(-1, 1)
                if callback_on_step_end is not None:
                    tensors = {"latents": latents, "model_output": model_output}
                    if wants_x0:
                        tensors["pred_original_sample"] = pred_x0
                    callback_kwargs = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = callback_outputs.get("latents", latents)
        finally:
            if x0_to_epsilon:
                scheduler.register_to_config(prediction_type="sample")

        image = (latents / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)

        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
