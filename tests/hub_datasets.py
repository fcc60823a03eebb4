"""Stand-ins for the Hub datasets behind the `anime` and `celeba` presets, for tests/hub_server.py (no tests here).

Same layout, schema and row-group structure as the real repos, with fewer and smaller images:
- DrishtiSharma/Anime-Face-Dataset: one file `data/train-00000-of-00001.parquet` (column `image`, JPEGs of 64-100 px;
  the real one has 63,565 rows) and a legacy `dataset_infos.json` (builder `image_folder`, one split `train`);
- nielsr/CelebA-faces: `data/train-0000{0,1,2}-of-00003.parquet` (178x218 JPEGs; 202,599 rows in all) and its
  `dataset_infos.json`.
The parquet comes from datasets' own writer (`Dataset.to_parquet`) with 100 rows per row group, what `push_to_hub`
wrote for image datasets when these repos were made (`PARQUET_ROW_GROUP_SIZE_FOR_IMAGE_DATASETS = 100` in datasets
2.x; 5.x aims at 100 MB row groups instead, which for a few hundred small images would be a single one).

    files, images = anime_files(rows=400)
    server.add_dataset(ANIME_ID, files)
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
from PIL import Image


ANIME_ID = "DrishtiSharma/Anime-Face-Dataset"
CELEBA_ID = "nielsr/CelebA-faces"
ROWS_PER_GROUP = 100
CELEBA_SIZE = (178, 218)


def face_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour blobs plus grain (bench/bench_data.py uses them too): every image distinct, even at 16 px."""
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    grain = rng.integers(-12, 13, image.shape, dtype=np.int16)
    return Image.fromarray(np.clip(image + grain, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def image_parquet(images: list[bytes], rows_per_group: int = ROWS_PER_GROUP) -> bytes:
    """A parquet table with one `image` column (datasets' Image feature, bytes embedded), by datasets' writer."""
    from datasets import Dataset
    from datasets import Image as ImageFeature

    table = Dataset.from_dict({"image": [{"bytes": data, "path": None} for data in images]})
    table = table.cast_column("image", ImageFeature())
    buffer = io.BytesIO()
    table.to_parquet(buffer, batch_size=rows_per_group)
    return buffer.getvalue()


def dataset_infos(repo_id: str, num_rows: int, num_bytes: int, download_size: int) -> bytes:
    """The legacy `dataset_infos.json` old `push_to_hub`s wrote, keyed by "user--name", builder `image_folder`."""
    info = {
        "description": "",
        "citation": "",
        "homepage": "",
        "license": "",
        "features": {"image": {"decode": True, "id": None, "_type": "Image"}},
        "post_processed": None,
        "supervised_keys": None,
        "task_templates": None,
        "builder_name": "image_folder",
        "config_name": None,
        "version": {"version_str": "0.0.0", "description": None, "major": 0, "minor": 0, "patch": 0},
        "splits": {
            "train": {
                "name": "train",
                "num_bytes": num_bytes,
                "num_examples": num_rows,
                "dataset_name": "image_folder",
            }
        },
        "download_checksums": None,
        "download_size": download_size,
        "post_processing_size": None,
        "dataset_size": num_bytes,
        "size_in_bytes": num_bytes + download_size,
    }
    return json.dumps({repo_id.replace("/", "--"): info}, indent=2).encode()


def repo_files(repo_id: str, shards: list[list[bytes]], rows_per_group: int = ROWS_PER_GROUP) -> dict[str, bytes]:
    files = {}
    for i, images in enumerate(shards):
        files[f"data/train-{i:05d}-of-{len(shards):05d}.parquet"] = image_parquet(images, rows_per_group)
    num_rows = sum(len(images) for images in shards)
    num_bytes = sum(len(data) for images in shards for data in images)
    files["dataset_infos.json"] = dataset_infos(repo_id, num_rows, num_bytes, sum(len(f) for f in files.values()))
    return files


def anime_images(rows: int = 400, seed: int = 0) -> list[bytes]:
    """Anime-face-like JPEGs of 64-100 px a side, not quite square, as the Kaggle set's."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(64, 101, (rows, 2))
    return [jpeg(face_like(rng, int(w), int(h))) for w, h in sizes]


def celeba_images(rows: int, seed: int = 1) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [jpeg(face_like(rng, *CELEBA_SIZE)) for _ in range(rows)]


def anime_files(rows: int = 400, seed: int = 0) -> tuple[dict[str, bytes], list[bytes]]:
    """The anime repo's files (one parquet file) and its images in file order."""
    images = anime_images(rows, seed)
    return repo_files(ANIME_ID, [images]), images


def celeba_files(rows_per_file: int = 150, seed: int = 1) -> tuple[dict[str, bytes], list[bytes]]:
    """The CelebA repo's files (three parquet files) and its images in file order."""
    images = celeba_images(3 * rows_per_file, seed)
    shards = [images[i * rows_per_file : (i + 1) * rows_per_file] for i in range(3)]
    return repo_files(CELEBA_ID, shards), images


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def large_photo_files(repo_id: str, rows: int = 48, seed: int = 3) -> tuple[dict[str, bytes], list[bytes]]:
    """One parquet file of large, grainy 640x640 JPEGs (~0.3 MB each, 8 rows per row group): the file spans several
    of the blocks that huggingface_hub's file system reads, so a stream reads it in several Range requests."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(rows):
        image = np.asarray(face_like(rng, 640, 640), dtype=np.int16)
        grain = rng.integers(-40, 41, image.shape, dtype=np.int16)  # incompressible: the file stays large
        images.append(jpeg(Image.fromarray(np.clip(image + grain, 0, 255).astype(np.uint8))))
    return repo_files(repo_id, [images], rows_per_group=8), images
