"""Domain conditioning: a UNet that knows which dataset of a mixture each image came from.

With `--condition_on_source`, a mixture of N sources ("anime:0.7,celeba:0.3") trains a class-conditional
`UNet2DModel` with `num_class_embeds = N + 1`: class i is source i and the last class is the null label. Each
training label is replaced by the null label with probability p (0.1 by default, classifier-free guidance, Ho &
Salimans 2022), so one network predicts both E[eps | x_t, domain] and E[eps | x_t]; `AnimeDDPMPipeline(domain=...,
guidance_scale=w)` combines them as eps_null + w * (eps_domain - eps_null). A single source needs no label: it is
plain unconditional training (no class embedding).

The domain names travel in the UNet's config (`unet.register_to_config(domains=[...])`, saved in
`unet/config.json`), which is where `AnimeDDPMPipeline.domains`, the CLI's `--domain` and the model card read them.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


logger = logging.getLogger(__name__)

DEFAULT_CLASS_DROPOUT_PROB = 0.1


# ------------------------------------------------------------------------------------------- names and sizes
def _short_name(name: str) -> str:
    """A local folder or parquet path -> its last meaningful path component; presets and Hub ids unchanged."""
    path = os.path.expanduser(name)
    looks_local = (
        os.path.isabs(path)
        or name.startswith((".", "~"))
        or name.endswith(".parquet")
        or glob.has_magic(name)
        or os.path.exists(path)
    )
    if not looks_local:
        return name
    parts = [p for p in path.replace("\\", "/").split("/") if p and p not in (".", "..", "**")]
    while parts and any(c in parts[-1] for c in "*?["):  # "data/**/*.parquet" -> "data"
        parts.pop()
    if not parts:
        return name
    last = parts[-1]
    return last[: -len(".parquet")] if last.endswith(".parquet") else last


def domain_names(source_names: Sequence[str]) -> list[str]:
    """The domain names for a mixture's sources, in order: the names as written, local paths shortened to their
    folder (or file) name. Falls back to the names as written when shortening would make two of them equal."""
    names = [str(name) for name in source_names]
    short = [_short_name(name) for name in names]
    return short if len(set(short)) == len(short) else names


def num_class_embeds_for(domains: Sequence[str]) -> int | None:
    """`num_class_embeds` of the UNet for these domains: one class each plus the null class; None for < 2 domains
    (a single source trains an unconditional model)."""
    return len(domains) + 1 if len(domains) > 1 else None


def null_label(num_class_embeds: int) -> int:
    """The null (unconditional) class: the last one."""
    if num_class_embeds < 2:
        raise ValueError(f"A conditional UNet needs at least 2 classes (domains + null), got {num_class_embeds}.")
    return num_class_embeds - 1


def check_class_dropout_prob(p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"The class dropout probability must be between 0 and 1 (0.1 is usual), got {p}.")
    return p


# ------------------------------------------------------------------------------------------- label dropout
def drop_labels(labels: torch.Tensor, p: float, null: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of `labels` with each entry independently replaced by `null` with probability `p`.

    Draws one uniform number per label from `generator` (on the generator's device; the global RNG when None), so a
    seeded generator gives reproducible drops.
    """
    p = check_class_dropout_prob(p)
    labels = labels.long()
    if p == 0.0 or labels.numel() == 0:
        return labels.clone()
    device = generator.device if generator is not None else labels.device
    drop = torch.rand(labels.shape, generator=generator, device=device).to(labels.device) < p
    return torch.where(drop, torch.full_like(labels, null), labels)


# ------------------------------------------------------------------------------------------- the UNet config
def unet_domains(unet_or_config: Any) -> list[str]:
    """Domain names stored in a UNet (or its config / config dict); empty for an unconditional model."""
    config = getattr(unet_or_config, "config", unet_or_config)
    value = config.get("domains") if isinstance(config, Mapping) else getattr(config, "domains", None)
    return list(value or [])


def check_unet_classes(unet_or_config: Any, domains: Sequence[str]) -> None:
    """Raises ValueError (one sentence) unless the UNet has exactly one class per domain plus the null class."""
    config = getattr(unet_or_config, "config", unet_or_config)
    have = config.get("num_class_embeds") if isinstance(config, Mapping) else getattr(config, "num_class_embeds", None)
    want = num_class_embeds_for(domains)
    if have != want:
        raise ValueError(
            f"The UNet has num_class_embeds={have} but {len(domains)} domain(s) ({', '.join(domains)}) need "
            f"{want} (one class per domain plus the null class)."
        )
    known = unet_domains(config)
    if known and known != list(domains):
        raise ValueError(f"The UNet was trained on the domains {known}, not {list(domains)}: use the same mixture.")


def register_domains(unet: Any, domains: Sequence[str]) -> Any:
    """Records the domain names in the UNet's config (saved with it); checks the class count. Returns the UNet."""
    domains = [str(d) for d in domains]
    if len(set(domains)) != len(domains):
        raise ValueError(f"Domain names must be distinct, got {domains}.")
    check_unet_classes(unet, domains)
    unet.register_to_config(domains=domains)
    return unet


def conditional_unet_config(config: Mapping[str, Any], domains: Sequence[str]) -> dict[str, Any]:
    """A UNet config dict made class-conditional for these domains (for a config loaded from a file)."""
    existing = config.get("num_class_embeds")
    want = num_class_embeds_for(domains)
    if existing and existing != want:
        raise ValueError(
            f"The UNet config has num_class_embeds={existing} but {len(domains)} domains need {want}; remove it "
            "from the config or use a matching mixture."
        )
    if config.get("class_embed_type") is not None:
        raise ValueError("Domain conditioning uses the UNet's plain class embedding: remove class_embed_type.")
    return {**config, "num_class_embeds": want, "domains": list(domains)}


# ------------------------------------------------------------------------------------------- for the trainer
@dataclass
class SourceConditioning:
    """The trainer's view: domains, the UNet size, and the label of each batch (with dropout).

    Build it with `SourceConditioning.from_sources(dataset.source_names, p)`, which gives None for a single source.
    """

    domains: list[str]
    dropout_prob: float = DEFAULT_CLASS_DROPOUT_PROB

    def __post_init__(self) -> None:
        self.domains = [str(d) for d in self.domains]
        if len(self.domains) < 2:
            raise ValueError("Domain conditioning needs at least 2 sources; a single source trains unconditionally.")
        if len(set(self.domains)) != len(self.domains):
            raise ValueError(f"Domain names must be distinct, got {self.domains}.")
        self.dropout_prob = check_class_dropout_prob(self.dropout_prob)

    @classmethod
    def from_sources(
        cls, source_names: Sequence[str], dropout_prob: float = DEFAULT_CLASS_DROPOUT_PROB
    ) -> SourceConditioning | None:
        check_class_dropout_prob(dropout_prob)
        if len(source_names) < 2:
            logger.info("One data source: --condition_on_source trains an unconditional model.")
            return None
        return cls(domain_names(source_names), dropout_prob)

    @property
    def num_class_embeds(self) -> int:
        return len(self.domains) + 1

    @property
    def null_label(self) -> int:
        return len(self.domains)

    def labels(
        self,
        source: torch.Tensor,
        generator: torch.Generator | None = None,
        train: bool = True,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Class labels for a batch's `source` indices, on `device` (default: the source's): label dropout when
        `train`. Pass the loader's CPU tensor: the range check then costs no device synchronisation."""
        source = source.long()
        if source.device.type == "cpu" and source.numel():
            if int(source.min()) < 0 or int(source.max()) >= len(self.domains):
                raise ValueError(f"Source index out of range for {len(self.domains)} domains: {source.tolist()}.")
        if device is not None:
            source = source.to(device, non_blocking=True)
        return drop_labels(source, self.dropout_prob, self.null_label, generator) if train else source

    def prepare(self, unet: Any) -> Any:
        """Checks the UNet's class count and records the domain names in its config."""
        return register_domains(unet, self.domains)


# ------------------------------------------------------------------------------------------- sampling per domain
def sample_per_domain(
    pipe: Any,
    num_per_domain: int,
    *,
    domains: Sequence[str | int] | None = None,
    num_inference_steps: int = 25,
    **generate_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """{domain name: (n, C, H, W) in [0, 1]}: the same seeds (image i seeded seed + i) in every domain, so a column
    of a grid shares its starting noise. `generate_kwargs` (seed, batch_size, guidance_scale, ...) go to
    `sampling.generate`."""
    from .sampling import generate

    names = list(domains) if domains is not None else pipe.domains
    if not names:
        raise ValueError("This model has no domains: it was not trained with --condition_on_source.")
    return {
        str(name): generate(
            pipe, num_per_domain, num_inference_steps=num_inference_steps, domain=name, **generate_kwargs
        )
        for name in names
    }


def domain_grid(
    pipe: Any,
    num_images: int,
    *,
    batch_size: int = 64,
    guidance_scale: float = 1.0,
    scale: int | None = None,
    **sample_kwargs: Any,
):
    """A PIL grid with one labelled row per domain, `num_images` in all (at least one per domain).

    `sample_kwargs` (seed, num_inference_steps, ...) go to `sample_per_domain`."""
    from . import viz

    per_row = max(1, num_images // max(1, len(pipe.domains)))
    samples = sample_per_domain(pipe, per_row, batch_size=batch_size, guidance_scale=guidance_scale, **sample_kwargs)
    size = next(iter(samples.values())).shape[-1]
    scale = scale or viz.auto_scale(size)
    rows = [viz.to_pil(images, scale=scale) for images in samples.values()]
    title = f"guidance {guidance_scale:g}" if guidance_scale != 1.0 else None
    return viz.labelled_table(rows, row_labels=list(samples), title=title)
