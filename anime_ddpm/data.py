"""Training images from presets, Hub datasets, local folders or parquet files, and mixtures of them.

Every source becomes a `datasets.IterableDataset` of undecoded images (`Image(decode=False)`) tagged with its source
index; mixtures are `interleave_datasets` of those; `split_dataset_by_node` gives each process its share. Decoding
and preprocessing happen in `TrainDataset`, a torch `IterableDataset` around that stream, so that a truncated,
empty, non-image or oversized file is skipped and counted instead of ending the run, and so that the stream's
`state_dict` (position in the shards) is what a checkpoint stores.

Preprocessing reproduces what users of diffusers' `train_unconditional.py` get from torchvision, without torchvision
(there is no CPU wheel of it here): `Resize(resolution)` (short side, bilinear, antialiased as PIL always is),
`CenterCrop`/`RandomCrop`, `RandomHorizontalFlip`, `ToTensor`, `Normalize([0.5], [0.5])`.

Local folders and the emoji preset are lists of files with one shard per file: `datasets` permutes shards each
epoch, so they are fully shuffled with no shuffle buffer (and resume exactly); DataLoader workers and ranks share
them file by file. Hub and parquet streams shuffle with a buffer, whose content is lost on resume.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from io import BytesIO
from itertools import islice
from typing import Any
from urllib.parse import urlparse

import datasets
import numpy as np
import torch
from datasets import Features, IterableDataset, Value
from datasets import Image as ImageFeature
from datasets.distributed import split_dataset_by_node
from PIL import Image, ImageOps
from torchdata.stateful_dataloader import StatefulDataLoader

from . import emoji, network
from .errors import first_line


logger = logging.getLogger(__name__)

DEFAULT_DATASET = "emoji"
FEATURES = Features({"image": ImageFeature(decode=False), "source": Value("int64")})
IMAGE_EXTENSIONS = frozenset(
    [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".jfif", ".ppm", ".pgm", ".tga"]
)
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's decompression-bomb limit
CELEBA_FACE_BOX = (25, 57, 153, 185)  # 128x128 centred at (89, 121) of the aligned 178x218 images (DDPM, DDIM)
CELEBA_SIZE = (178, 218)
MAX_SHARDS_IN_MEMORY = 256  # shards of a non-streamed (downloaded) Hub dataset
SKIP_WARNINGS = 10  # skipped files named in the log per process; the rest are only counted
SKIP_REASONS = ("empty", "not an image", "truncated", "too large", "unreadable")
MAX_COUNTED_WORKERS = 64
DRAFT_SCALE, DRAFT_SIZE = "anime_ddpm.draft_scale", "anime_ddpm.full_size"  # Image.info keys of a reduced decode
DRAFT_MIN_PIXELS = 128 * 128  # smaller JPEGs decode in a fraction of a millisecond: always in full


class DataError(ValueError):
    """A dataset problem the user can fix, said in one sentence (no network, no images, bad mixture...)."""


@dataclass
class DataConfig:
    dataset: str | None = None  # preset, Hub id, folder, parquet file/glob, or mixture "anime:0.7,celeba:0.3"
    resolution: int = 32
    center_crop: bool = True  # False: random crop
    random_flip: bool = False
    image_column: str | None = None  # default: the preset's, else "image"
    dataset_config_name: str | None = None
    split: str = "train"
    train_data_dir: str | None = None  # a local image folder (diffusers' flag)
    cache_dir: str | None = None
    streaming: bool | None = None  # None: stream Hub ids (local folders and emoji are always read lazily)
    shuffle_buffer: int = 1000  # 0: no shuffling at all
    seed: int = 0
    token: str | None = None  # for private and gated Hub datasets; default: HF_TOKEN or the saved login
    jpeg_draft: bool = True  # decode large JPEGs at a reduced scale (Preprocess); False: the bit-exact reference
    data_retry_minutes: float = 0.0  # a Hub that does not answer as the stream opens: wait this long (training: 30)

    @classmethod
    def from_options(cls, options: Any, **overrides: Any) -> DataConfig:
        """The data settings among any object's attributes (parsed flags, a TrainingConfig) with the same names;
        None means "the default" and `overrides` win."""
        values = {f.name: getattr(options, f.name, None) for f in dataclasses.fields(cls)}
        values.update(overrides)
        return cls(**{name: value for name, value in values.items() if value is not None})


@dataclass(frozen=True)
class Preset:
    hub_id: str
    description: str
    image_column: str = "image"
    crop_box: tuple[int, int, int, int] | None = None  # applied before resizing, in CELEBA_SIZE coordinates


PRESETS: dict[str, Preset] = {
    "anime": Preset("DrishtiSharma/Anime-Face-Dataset", "Kaggle Anime Face Dataset, 63,565 faces of ~64-100 px"),
    "anime-21k": Preset("huggan/anime-faces", "21,551 anime faces (getchu crops)"),
    "celeba": Preset(
        "nielsr/CelebA-faces", "CelebA, 202,599 aligned faces, DDPM's 128 px face crop", crop_box=CELEBA_FACE_BOX
    ),
}
EMOJI_PRESETS = tuple(emoji.SUBSETS)  # emoji, emoji-smileys, emoji-people


@dataclass(frozen=True)
class Source:
    """One resolved entry of `DataConfig.dataset`."""

    name: str  # as the user wrote it; becomes `source_names[i]`
    kind: str  # "emoji", "folder", "parquet" or "hub"
    location: str  # emoji preset, folder, parquet glob, or Hub id
    weight: float = 1.0
    image_column: str = "image"
    crop_box: tuple[int, int, int, int] | None = None


# ----------------------------------------------------------------------------------------------- preprocessing


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: transparency composited on white, 16/32-bit greyscale scaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
            values = values / 257.0  # 16-bit range -> 8-bit
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L").convert("RGB")
    if (image.mode == "P" and "transparency" in image.info) or image.mode in ("LA", "La", "PA", "RGBa", "RGBA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's `Resize(size)` output (w, h): short side `size`, long side truncated, not rounded."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """torchvision's `Resize(size)` on a PIL image (bilinear; Pillow antialiases when downscaling)."""
    new_size = resized_size(*image.size, size)
    if new_size == image.size:
        return image
    return image.resize(new_size, Image.Resampling.BILINEAR)


def center_crop_offsets(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's `CenterCrop`: (left, top) rounded half to even, as its `int(round(...))` does."""
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


def random_crop_offsets(width: int, height: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """torchvision's `RandomCrop`: each offset uniform over every position that fits."""
    return int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))


def scaled_box(box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """A crop box given for CelebA's 178x218 images, scaled to an image of another size."""
    if (width, height) == CELEBA_SIZE:
        return box
    sx, sy = width / CELEBA_SIZE[0], height / CELEBA_SIZE[1]
    return round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """`ToTensor()` then `Normalize([0.5], [0.5])`, in torchvision's order of operations: (3, H, W) in [-1, 1]."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    return pixels.float().div(255).sub(0.5).div(0.5)


@dataclass(frozen=True)
class Preprocess:
    """torchvision's Resize, CenterCrop/RandomCrop, RandomHorizontalFlip, ToTensor, Normalize, on a crop box.

    With `jpeg_draft`, a JPEG of 128x128 pixels or more and at least twice the needed size is decoded at 1/2, 1/4
    or 1/8 scale by libjpeg (`Image.draft`: the DCT scaled down; 1.3-1.5x less time per CelebA image, 2.4-3x for
    512 px images) and resized from there over the same region of the image, so the output has the same geometry
    and differs by its anti-aliasing filter only: 2.8/255 mean absolute difference on photos at CelebA's 64 px face
    crop, under 1/255 of mean colour (docs/data.md). Off: bit for bit the torchvision-equivalent reference.
    """

    resolution: int = 32
    center_crop: bool = True
    random_flip: bool = False
    jpeg_draft: bool = False

    def draft_size(self, width: int, height: int, crop_box: tuple[int, int, int, int] | None = None):
        """The smallest full-image size (w, h) to decode at, or None to decode in full: what `Image.draft` takes."""
        if not self.jpeg_draft or width * height < DRAFT_MIN_PIXELS:
            return None
        left, top, right, bottom = scaled_box(crop_box, width, height) if crop_box else (0, 0, width, height)
        short = min(right - left, bottom - top)
        if short < 2 * self.resolution:
            return None
        return -(-width * self.resolution // short), -(-height * self.resolution // short)

    def from_file(
        self, value: dict[str, Any], rng: np.random.Generator, crop_box: tuple[int, int, int, int] | None = None
    ) -> torch.Tensor:
        """An undecoded image ({"bytes", "path"}) to the training tensor, as the training stream does it; `BadImage`
        for an unusable file."""
        image = decode_image(value, draft_size=partial(self.draft_size, crop_box=crop_box))
        return self(image, rng, crop_box)

    def __call__(
        self, image: Image.Image, rng: np.random.Generator, crop_box: tuple[int, int, int, int] | None = None
    ) -> torch.Tensor:
        image = to_rgb(image)
        scale = image.info.get(DRAFT_SCALE, 1)
        if scale > 1:  # decoded at 1/scale: crop and resize in one go, over the full-size image's region
            width, height = image.info[DRAFT_SIZE]
            box = scaled_box(crop_box, width, height) if crop_box else (0, 0, width, height)
            size = resized_size(box[2] - box[0], box[3] - box[1], self.resolution)
            image = image.resize(size, Image.Resampling.BILINEAR, box=tuple(v / scale for v in box))
        else:
            if crop_box is not None:
                image = image.crop(scaled_box(crop_box, *image.size))
            image = resize_short_side(image, self.resolution)
        width, height = image.size
        if self.center_crop:
            left, top = center_crop_offsets(width, height, self.resolution)
        else:
            left, top = random_crop_offsets(width, height, self.resolution, rng)
        if (left, top, width, height) != (0, 0, self.resolution, self.resolution):
            image = image.crop((left, top, left + self.resolution, top + self.resolution))
        if self.random_flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(image)


# ----------------------------------------------------------------------------------------------- decoding


class BadImage(Exception):
    """A file that cannot be used; `reason` is the key it is counted under in `TrainDataset.skipped`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _read_bytes(value: dict[str, Any]) -> bytes:
    if value.get("bytes") is not None:
        return value["bytes"]
    path = value.get("path")
    if not path:
        raise BadImage("empty", "no bytes and no path")
    try:
        if os.path.exists(path):
            with open(path, "rb") as f:
                return f.read()
        with datasets.utils.file_utils.xopen(path, "rb") as f:  # remote files (hf://, https://)
            return f.read()
    except OSError as err:
        raise BadImage("unreadable", str(err)) from err


def decode_image(
    value: dict[str, Any] | Image.Image,
    max_pixels: int = MAX_IMAGE_PIXELS,
    draft_size: Callable[[int, int], tuple[int, int] | None] | None = None,
) -> Image.Image:
    """An `Image(decode=False)` value ({"bytes", "path"}) -> a loaded PIL image, or `BadImage`.

    Size is checked from the header before any pixel is decoded, so a decompression bomb costs nothing.
    EXIF orientation is applied, as `datasets.Image` does. `draft_size(w, h)` (`Preprocess.draft_size`) lets a JPEG
    without EXIF rotation decode at a reduced scale; the image then carries its scale and full size in `info`.
    """
    if isinstance(value, Image.Image):
        return value
    data = _read_bytes(value)
    if not data:
        raise BadImage("empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise BadImage("too large", str(err)) from err
        except Exception as err:  # UnidentifiedImageError, SyntaxError, struct errors from odd headers
            raise BadImage("not an image", str(err)) from err
    if image.width * image.height > max_pixels:
        raise BadImage("too large", f"{image.width}x{image.height} pixels")
    try:
        if draft_size is not None and image.format == "JPEG":
            _draft(image, draft_size)
        image.load()
        if image.getexif().get(Image.ExifTags.Base.Orientation) is not None:
            image = ImageOps.exif_transpose(image)
    except Exception as err:  # "image file is truncated", "broken data stream", unsupported compression...
        reason = "truncated" if isinstance(err, EOFError) or re.search("truncat|broken", str(err)) else "unreadable"
        raise BadImage(reason, str(err)) from err
    return image


def _draft(image: Image.Image, draft_size: Callable[[int, int], tuple[int, int] | None]) -> None:
    size = image.size
    wanted = draft_size(*size)
    if wanted is None or image.getexif().get(Image.ExifTags.Base.Orientation, 1) != 1:
        return
    drafted = image.draft("RGB", wanted)
    if drafted is not None and image.size != size:
        image.info[DRAFT_SCALE] = size[0] / drafted[1][2]
        image.info[DRAFT_SIZE] = size


# ----------------------------------------------------------------------------------------------- sources


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """ "anime:0.7,celeba:0.3" -> [("anime", 0.7), ("celeba", 0.3)]; no weights at all means equal weights.

    A single name keeps any colon that is not followed by a number (a Windows path, say).
    """
    parts = [part.strip() for part in spec.split(",")]
    if len(parts) == 1:
        name, _, weight = parts[0].rpartition(":")
        if name and _is_number(weight):
            return [(name, 1.0)]
        return [(parts[0], 1.0)]
    entries = []
    for part in parts:
        name, colon, weight = part.rpartition(":")
        if not colon:
            name, weight = part, ""
        if not name or (weight and not _is_number(weight)) or (weight and float(weight) < 0):
            raise DataError(
                f"Cannot read {part!r} in the mixture {spec!r}: write it as 'name:weight,name:weight' with weights >= 0, e.g. 'anime:0.7,celeba:0.3'."
            )
        entries.append((name, float(weight) if weight else None))
    weights = [w for _, w in entries]
    if all(w is None for w in weights):
        return [(name, 1.0 / len(entries)) for name, _ in entries]
    if any(w is None for w in weights) or sum(weights) <= 0:
        raise DataError(
            f"The mixture {spec!r} needs a weight for every dataset and a positive total, e.g. 'anime:0.7,celeba:0.3'."
        )
    total = sum(weights)
    return [(name, w / total) for name, w in entries]


def _is_number(text: str) -> bool:
    try:
        return np.isfinite(float(text))
    except ValueError:
        return False


def resolve_source(name: str, weight: float, config: DataConfig) -> Source:
    """What a dataset name refers to: an emoji preset, a Hub preset, a local folder or parquet files, or a Hub id."""
    column = config.image_column
    if name in EMOJI_PRESETS:
        return Source(name, "emoji", name, weight)
    if name in PRESETS:
        preset = PRESETS[name]
        return Source(name, "hub", preset.hub_id, weight, column or preset.image_column, preset.crop_box)
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        kind = (
            "parquet"
            if not _has_images(path) and glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True)
            else "folder"
        )
        location = os.path.join(path, "**", "*.parquet") if kind == "parquet" else path
        return Source(name, kind, location, weight, column or "image")
    if path.endswith(".parquet") or (glob.has_magic(path) and glob.glob(path)):
        return Source(name, "parquet", path, weight, column or "image")
    if os.path.isabs(path) or path.startswith(".") or not network.is_repo_id(name):
        raise DataError(
            f"{name!r} is not a preset ({', '.join([*EMOJI_PRESETS, *PRESETS])}), an existing folder, parquet files or a Hub dataset id; check the spelling or the path."
        )
    return Source(name, "hub", name, weight, column or "image")


def _has_images(folder: str) -> bool:
    return any(True for _ in _iter_image_files(folder))


def resolve_sources(config: DataConfig) -> list[Source]:
    if config.dataset and config.train_data_dir:
        raise DataError("Give either a dataset (--dataset) or a local folder (--train_data_dir), not both.")
    if config.train_data_dir:
        if not os.path.isdir(os.path.expanduser(config.train_data_dir)):
            raise DataError(f"The folder {config.train_data_dir!r} (--train_data_dir) does not exist.")
        return [Source(config.train_data_dir, "folder", os.path.expanduser(config.train_data_dir))]
    return [resolve_source(name, weight, config) for name, weight in parse_mixture(config.dataset or DEFAULT_DATASET)]


def _iter_image_files(folder: str) -> Iterator[str]:
    """Image files under `folder`, sorted, hidden ones left out; followed links are walked once each.

    A link to a folder already being walked (`ln -s . loop`) would list its files again, or forever; folders are
    recognised by (device, inode), so each real folder is visited once, and each real file listed once.
    """
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        info = os.stat(root)
        if (info.st_dev, info.st_ino) in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add((info.st_dev, info.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            path = os.path.join(root, name)
            try:
                file_info = os.stat(path)
            except OSError:  # a dangling link: listed, and skipped as unreadable when read
                yield path
                continue
            if (file_info.st_dev, file_info.st_ino) not in seen_files:
                seen_files.add((file_info.st_dev, file_info.st_ino))
                yield path


def list_image_files(folder: str, split: str = "train") -> list[str]:
    """Image files under `folder` (or its `split` subfolder when there is one), sorted, hidden files left out."""
    split_dir = os.path.join(folder, split)
    if os.path.isdir(split_dir):
        folder = split_dir
    elif split != "train":
        raise DataError(f"The folder {folder!r} has no {split!r} subfolder; put the {split} images there.")
    files = list(_iter_image_files(folder))
    if not files:
        extensions = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise DataError(
            f"No image files ({extensions}) were found in {folder!r}; point the dataset at a folder of images."
        )
    return files


def _generate_files(paths: list[str], source: int) -> Iterator[dict[str, Any]]:
    for path in paths:
        yield {"image": {"bytes": None, "path": path}, "source": source}


def _file_stream(paths: list[str], index: int, config: DataConfig) -> IterableDataset:
    """One shard per file, so that ranks, workers and the per-epoch shard permutation work file by file."""
    if config.shuffle_buffer > 0:
        order = np.random.default_rng([config.seed, index]).permutation(len(paths))
        paths = [paths[i] for i in order]
    return IterableDataset.from_generator(
        _generate_files, features=FEATURES, gen_kwargs={"paths": paths, "source": index}
    )


def _tag_source(example: dict[str, Any], source: int) -> dict[str, Any]:
    return {"source": source}


def _image_column(features: Features | None, wanted: str, source: Source, explicit: bool) -> str:
    """The image column to read: the one asked for, or the only image column when the default is absent."""
    if features is None or wanted in features:
        return wanted
    image_columns = [name for name, feature in features.items() if isinstance(feature, ImageFeature)]
    if not explicit and len(image_columns) == 1:
        return image_columns[0]
    raise DataError(
        f"The dataset {source.name!r} has no column {wanted!r} (its columns: {', '.join(features)}); name the image column with --image_column."
    )


def _standardise(ds: IterableDataset, source: Source, index: int, config: DataConfig) -> IterableDataset:
    """Any table -> {"image": Image(decode=False), "source": index}; buffer-shuffled when shuffling is on."""
    column = _image_column(ds.features, source.image_column, source, explicit=config.image_column is not None)
    ds = ds.select_columns([column])
    if column != "image":
        ds = ds.rename_column(column, "image")
    ds = ds.cast_column("image", ImageFeature(decode=False))
    ds = ds.map(_tag_source, fn_kwargs={"source": index}, features=FEATURES)
    if config.shuffle_buffer > 0:
        # One shard at a time into the buffer (shards are still permuted every epoch): datasets 5.2 interleaves up
        # to 10 by default, and a DataLoader worker then cannot resume, since `_iter_pytorch` loads the worker's
        # saved state into the stream before splitting it between workers (IndexError in `load_state_dict`).
        ds = ds.shuffle(seed=config.seed + index, buffer_size=config.shuffle_buffer, max_buffer_input_shards=1)
    return ds


def _no_hub_error(source: Source, reason: str) -> DataError:
    named = repr(source.location) if source.name == source.location else f"{source.name!r} ({source.location})"
    return DataError(
        f"Cannot load the dataset {named} from the Hugging Face Hub ({reason}); "
        "train offline with `--dataset emoji` or a local image folder (`--train_data_dir DIR`)."
    )


def _hub_access_error(source: Source, err: Exception, token: str | None = None) -> DataError | None:
    """One sentence for a Hub dataset that is missing, private or gated (None for other failures).

    `datasets` says only "doesn't exist on the Hub or cannot be accessed" or "is a gated dataset" and drops the
    Hub's error (`raise ... from None`), so the Hub's access check tells which: 401/403 GatedRepo or RepoNotFound.
    """
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub import auth_check, constants, get_token
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if not isinstance(err, DatasetNotFoundError) or not network.is_repo_id(source.location):
        return None
    named = repr(source.location) if source.name == source.location else f"{source.name!r} ({source.location})"
    page = f"{constants.ENDPOINT}/datasets/{source.location}"
    try:
        auth_check(source.location, repo_type="dataset", token=token)
        return None  # readable after all: some other failure
    except GatedRepoError as gated:
        if gated.response is not None and gated.response.status_code == 403:
            return DataError(
                f"The dataset {named} is gated on the Hugging Face Hub and your token has not been granted access: ask for it at {page}."
            )
        return DataError(
            f"The dataset {named} is gated on the Hugging Face Hub: accept its conditions at {page}, then log in (`hf auth login`) or set HF_TOKEN."
        )
    except RepositoryNotFoundError:
        if token or get_token():
            return DataError(
                f"The dataset {named} is not on the Hugging Face Hub, or it is private and your token cannot read it: check the name and the token (HF_TOKEN or `hf auth login`)."
            )
        return DataError(
            f"The dataset {named} is not on the Hugging Face Hub, or it is private: check the name, and for a private dataset log in (`hf auth login`) or set HF_TOKEN."
        )
    except Exception:  # the check itself failed (network): say what datasets said
        return None


def _load_hub(source: Source, config: DataConfig) -> IterableDataset:
    from huggingface_hub import constants

    streaming = True if config.streaming is None else config.streaming
    host = urlparse(constants.ENDPOINT).hostname
    probe = not network.is_offline() and not network.behind_proxy()
    reason = network.why_unreachable() if probe else None
    if reason == network.NO_NETWORK or (reason and not config.data_retry_minutes):
        raise _no_hub_error(source, f"no network connection to {host}" if reason == network.NO_NETWORK else f"{host} does not answer ({reason})")  # fmt: skip

    probes = [reason]  # the first attempt uses the probe just made; each retry probes again

    def load() -> IterableDataset:
        # A Hub that is down (refused, no answer, 5xx, 429) as the run starts is waited for, as later in the run.
        still = probes.pop() if probes else network.why_unreachable() if probe else None
        if still is not None:
            raise ConnectionError(f"{host} does not answer ({still})")
        return datasets.load_dataset(source.location, config.dataset_config_name, split=config.split,
                                     streaming=streaming, cache_dir=config.cache_dir, token=config.token)  # fmt: skip

    try:
        ds = network.retry_while_transient(load, config.data_retry_minutes * 60, f"The Hub ({host})")
    except Exception as err:
        if network.is_offline():
            raise _no_hub_error(source, "offline mode is on and it is not in the cache") from err
        error = _hub_access_error(source, err, config.token) or _no_hub_error(source, first_line(err).rstrip("."))
        raise error from err
    if not streaming:
        return ds.to_iterable_dataset(num_shards=max(1, min(len(ds), MAX_SHARDS_IN_MEMORY)))
    return _reshard(ds)


def _load_parquet(source: Source, config: DataConfig) -> IterableDataset:
    files = sorted(glob.glob(source.location, recursive=True))
    if not files:
        raise DataError(f"No parquet files match {source.location!r}; check the path.")
    streaming = True if config.streaming is None else config.streaming
    try:
        ds = datasets.load_dataset(
            "parquet", data_files=files, split="train", streaming=streaming, cache_dir=config.cache_dir
        )
    except Exception as err:
        raise DataError(
            f"Cannot read the parquet files {source.name!r} ({first_line(err)}); check that they are parquet tables."
        ) from err
    if not streaming:
        return ds.to_iterable_dataset(num_shards=max(1, min(len(ds), MAX_SHARDS_IN_MEMORY)))
    return _reshard(ds)


def _reshard(ds: IterableDataset) -> IterableDataset:
    """More shards (parquet row groups) than files, so that DataLoader workers and ranks all get some."""
    try:
        return ds.reshard()
    except Exception:  # formats that cannot be split further stay as they are
        return ds


def _source_stream(source: Source, index: int, config: DataConfig) -> tuple[IterableDataset, int | None]:
    """A source as a standardised stream, with its number of examples when known."""
    if source.kind == "emoji":
        paths = emoji.emoji_files(source.location, config.resolution, _emoji_split(config.split), config.cache_dir)
        return _file_stream(paths, index, config), len(paths)
    if source.kind == "folder":
        paths = list_image_files(source.location, config.split)
        return _file_stream(paths, index, config), len(paths)
    if source.kind == "parquet":
        ds = _load_parquet(source, config)
        return _standardise(ds, source, index, config), _parquet_rows(source.location)
    ds = _load_hub(source, config)
    return _standardise(ds, source, index, config), _num_rows(ds, config.split)


def _emoji_split(split: str) -> str:
    if split not in emoji.SPLITS:
        raise DataError(
            f"The emoji datasets have the splits 'train' and 'test' (held out for metrics), not {split!r}."
        )
    return split


def _parquet_rows(pattern: str) -> int | None:
    import pyarrow.parquet as pq

    try:
        return sum(pq.ParquetFile(path).metadata.num_rows for path in glob.glob(pattern, recursive=True))
    except Exception:
        return None


def _num_rows(ds: IterableDataset, split: str) -> int | None:
    splits = ds.info.splits or {}
    info = splits.get(split) or (splits.get("train") if len(splits) == 1 else None)
    return info.num_examples if info is not None and info.num_examples else None


# ----------------------------------------------------------------------------------------------- the dataset


class TrainDataset(torch.utils.data.IterableDataset):
    """This rank's share of the training images: yields {"pixel_values": (3, R, R) in [-1, 1], "source": int}.

    `skipped` counts unusable files by reason; `source_names[i]` names source i; `set_epoch` reshuffles;
    `state_dict`/`load_state_dict` (used by `StatefulDataLoader`) resume an interrupted pass.
    """

    def __init__(
        self,
        stream: IterableDataset,
        sources: list[Source],
        config: DataConfig,
        rank: int = 0,
        world_size: int = 1,
        num_examples: int | None = None,
    ):
        super().__init__()
        self.stream = stream
        self.sources = sources
        self.source_names = [source.name for source in sources]
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.num_examples = num_examples  # of the whole split (all ranks), when known
        self.preprocess = Preprocess(config.resolution, config.center_crop, config.random_flip, config.jpeg_draft)
        # One row per process (main, then each DataLoader worker) in shared memory, so that workers' counts
        # reach the main process however a worker's stream ends.
        self._skip_counts = torch.zeros(1 + MAX_COUNTED_WORKERS, len(SKIP_REASONS), dtype=torch.int64).share_memory_()
        self.epoch = 0
        self._resume_state: dict | None = None

    @property
    def skipped(self) -> Counter:
        """Unusable files met so far (all DataLoader workers included), by reason."""
        totals = self._skip_counts.sum(0).tolist()
        return Counter({reason: n for reason, n in zip(SKIP_REASONS, totals) if n})

    @property
    def num_shards(self) -> int:
        """This rank's shards: the most DataLoader workers that each get some data."""
        return self.stream.num_shards

    @property
    def shuffled(self) -> bool:
        return self.config.shuffle_buffer > 0

    def set_epoch(self, epoch: int) -> None:
        """Another permutation per epoch (seed + epoch); a no-op without shuffling."""
        self.epoch = epoch
        if self.shuffled:
            self.stream.set_epoch(epoch)

    def state_dict(self) -> dict:
        if self._resume_state is not None:  # resumed but not yet iterated
            return self._resume_state
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Makes the next iteration (only) continue from `state`."""
        self._resume_state = state

    def _rng(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        return np.random.default_rng([self.config.seed, self.epoch, self.rank, info.id if info else 0])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        state, self._resume_state = self._resume_state, None
        self.stream.load_state_dict(state)  # None: start from the beginning of the epoch
        rng = self._rng()
        info = torch.utils.data.get_worker_info()
        counts = self._skip_counts[0 if info is None else 1 + info.id % MAX_COUNTED_WORKERS]
        for example in self.stream:
            source = example["source"]
            try:
                pixels = self.preprocess.from_file(example["image"], rng, self.sources[source].crop_box)
            except BadImage as err:
                self._skip(example["image"], err.reason, counts)
                continue
            except Exception:  # an image Pillow opens but cannot convert (exotic modes)
                self._skip(example["image"], "unreadable", counts)
                continue
            yield {"pixel_values": pixels, "source": source}

    def _skip(self, value: Any, reason: str, counts: torch.Tensor) -> None:
        counts[SKIP_REASONS.index(reason)] += 1
        if int(counts.sum()) <= SKIP_WARNINGS:
            where = value.get("path") if isinstance(value, dict) else None
            logger.warning("Skipping an unusable image (%s)%s.", reason, f": {where}" if where else "")

    def __repr__(self) -> str:
        sources = ", ".join(f"{s.name} ({s.kind}, p={s.weight:.3g})" for s in self.sources)
        return f"TrainDataset([{sources}], resolution={self.config.resolution}, rank={self.rank}/{self.world_size})"


def build_dataset(config: DataConfig, rank: int = 0, world_size: int = 1) -> TrainDataset:
    """The stream of preprocessed training images for process `rank` of `world_size` (disjoint shares)."""
    if config.resolution < 1:
        raise DataError(f"The resolution must be a positive number of pixels, got {config.resolution}.")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}.")
    sources = resolve_sources(config)
    streams, sizes = zip(*(_source_stream(source, i, config) for i, source in enumerate(sources)))
    if len(streams) == 1:
        stream, num_examples = streams[0], sizes[0]
    else:
        stream = datasets.interleave_datasets(
            list(streams),
            probabilities=[s.weight for s in sources],
            seed=config.seed,
            stopping_strategy="first_exhausted",
        )
        num_examples = None
    if world_size > 1:
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
    return TrainDataset(stream, sources, config, rank, world_size, num_examples)


# ----------------------------------------------------------------------------------------------- the loader


class TrainLoader(StatefulDataLoader):
    """Batches of a `TrainDataset`; its `state_dict` is the data position for a checkpoint (all workers included).

    `torchdata`'s `StatefulDataLoader` asks each worker for its dataset's state with every batch, so a resume
    continues every worker's shards where the last delivered batch left them.
    """

    def __init__(self, dataset: TrainDataset, batch_size: int, num_workers: int = 0, **kwargs: Any):
        workers = min(num_workers, dataset.num_shards)
        if workers < num_workers:
            logger.info("Using %d DataLoader workers: the data has only %d shards.", workers, dataset.num_shards)
        kwargs.setdefault("pin_memory", torch.cuda.is_available())
        with warnings.catch_warnings():  # torchdata 0.11 calls torch.set_vital, deprecated in recent torch
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            super().__init__(dataset, batch_size=batch_size, num_workers=workers, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.dataset.epoch, "loader": super().state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the epoch too: the next iteration continues that epoch's pass after the last batch delivered."""
        self.set_epoch(state["epoch"])
        super().load_state_dict(state["loader"])


def build_dataloader(dataset: TrainDataset, batch_size: int, num_workers: int = 0, **kwargs: Any) -> TrainLoader:
    """Batches {"pixel_values": (B, 3, R, R), "source": (B,)}; not for `accelerator.prepare` (ranks are split)."""
    if batch_size < 1:
        raise ValueError(f"The batch size must be at least 1, got {batch_size}.")
    return TrainLoader(dataset, batch_size, num_workers, **kwargs)


def take_images(config: DataConfig, n: int) -> torch.Tensor:
    """The first `n` images of the (seeded, so fixed) stream as (n, 3, R, R) in [-1, 1], for metrics and previews.

    Returns fewer, with a warning, when the split is smaller (the emoji test split has 64 images).
    """
    if n < 1:
        raise ValueError(f"The number of images must be at least 1, got {n}.")
    dataset = build_dataset(config)
    images = [example["pixel_values"] for example in islice(dataset, n)]
    if not images:
        raise DataError(
            f"The dataset {config.dataset or config.train_data_dir or DEFAULT_DATASET!r} gave no usable images."
        )
    if len(images) < n:
        logger.warning("Asked for %d images but the dataset has only %d.", n, len(images))
    return torch.stack(images)
