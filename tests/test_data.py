"""anime_ddpm.data: sources, preprocessing (torchvision's documented steps), bad files, ranks, workers, resume."""

from __future__ import annotations

import socket
import struct
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

from anime_ddpm import data, network
from anime_ddpm.data import (
    CELEBA_FACE_BOX,
    DataConfig,
    DataError,
    Preprocess,
    build_dataloader,
    build_dataset,
    parse_mixture,
    take_images,
)


# ------------------------------------------------------------------------------------------------ helpers


def solid(index: int, size=(12, 10)) -> Image.Image:
    """An image whose red value identifies it (index < 36), so tests can tell which files came out."""
    return Image.new("RGB", size, (index * 7, 100, 200))


def ident(pixels: torch.Tensor) -> int:
    """Inverse of `solid` on a preprocessed (3, R, R) tensor."""
    return round(float((pixels[0, 0, 0] + 1) * 127.5)) // 7


def make_folder(folder: Path, count: int, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        solid(i).save(folder / f"{i:03d}.png")
    return folder


def make_parquet(path: Path, count: int, rows_per_group: int, column: str = "image") -> Path:
    table = Dataset.from_dict({column: [solid(i) for i in range(count)], "label": list(range(count))})
    table.cast_column(column, ImageFeature()).to_parquet(str(path), batch_size=rows_per_group)
    return path


def ids(examples) -> list[int]:
    return [ident(example["pixel_values"]) for example in examples]


def batch_ids(batches) -> list[int]:
    return [ident(pixels) for batch in batches for pixels in batch["pixel_values"]]


def config(dataset: str | Path, **kwargs) -> DataConfig:
    kwargs.setdefault("resolution", 8)
    return DataConfig(dataset=str(dataset), **kwargs)


# ------------------------------------------------------------------------------------------------ preprocessing
# torchvision's documented steps, pinned on small inputs with expectations worked out by hand: Resize(int) scales the
# short side and truncates the long side, bilinear with antialiasing; CenterCrop offsets int(round((h - size) / 2))
# (Python's round: half to even); RandomCrop any offset that fits; ToTensor + Normalize([0.5], [0.5]) maps 0 -> -1
# and 255 -> 1.


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def columns_image(width: int, height: int, step: int = 10) -> Image.Image:
    """Red = step * column, green = step * row: a pixel's value says where it came from."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([step * x, step * y, np.zeros_like(x)], -1).astype(np.uint8))


def levels(pixels: torch.Tensor) -> np.ndarray:
    """[-1, 1] back to 0..255."""
    return np.rint((pixels.numpy() + 1) * 127.5).astype(int)


@pytest.mark.parametrize(
    "size, resized",
    [
        ((37, 23), (25, 16)),  # 37 * 16 / 23 = 25.7: truncated, not rounded to 26
        ((23, 37), (16, 25)),
        ((50, 9), (88, 16)),  # 88.9
        ((17, 41), (16, 38)),  # 38.6
        ((64, 64), (16, 16)),
        ((25, 16), (25, 16)),  # short side already 16: unchanged
        ((16, 27), (16, 27)),
    ],
)
def test_resize_scales_the_short_side_and_truncates_the_long_one(size, resized):
    assert data.resized_size(*size, 16) == resized
    assert data.resize_short_side(noise_image(*size), 16).size == resized


def test_resize_is_bilinear_with_antialiasing():
    """8x8 -> 2x2 with a single white pixel at (3, 3). The triangle filter widened 4x (antialiasing) gives input
    pixels 0..5 the weights 5, 7, 7, 5, 3, 1 (/28) for the first output pixel and 1, 3, 5, 7, 7, 5 for the second:
    255 * (5/28)^2 = 8, 255 * 5/28 * 3/28 = 5, 255 * (3/28)^2 = 3. Plain bilinear sampling would miss the pixel."""
    dot = np.zeros((8, 8, 3), np.uint8)
    dot[3, 3] = 255
    out = np.asarray(data.resize_short_side(Image.fromarray(dot), 2))
    assert out[..., 0].tolist() == [[8, 5], [5, 3]]


def test_center_crop_offsets_round_half_to_even():
    # (25 - 16) / 2 = 4.5 -> 4, (21 - 16) / 2 = 2.5 -> 2, (23 - 16) / 2 = 3.5 -> 4, (27 - 16) / 2 = 5.5 -> 6
    assert [data.center_crop_offsets(w, 16, 16)[0] for w in (25, 21, 23, 27, 16)] == [4, 2, 4, 6, 0]
    for (width, height), (left, top) in {(25, 16): (4, 0), (16, 21): (0, 2)}.items():  # short side 16: no resize
        out = levels(
            Preprocess(resolution=16, center_crop=True)(columns_image(width, height), np.random.default_rng())
        )
        assert out[0, 0, :].tolist() == [10 * (left + i) for i in range(16)]
        assert out[1, :, 0].tolist() == [10 * (top + i) for i in range(16)]


def test_to_tensor_and_normalize_map_0_to_minus_1_and_255_to_1():
    image = Image.new("RGB", (3, 2), (0, 128, 255))
    out = Preprocess(resolution=2, center_crop=True)(image, np.random.default_rng(0))
    assert out.shape == (3, 2, 2) and out.dtype == torch.float32  # (C, H, W), RGB order
    expected = torch.tensor([-1.0, 128 / 127.5 - 1, 1.0]).view(3, 1, 1).expand(3, 2, 2)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_resize_crop_and_normalise_together():
    """A 32x48 vertical ramp (row y = 4y): halved, each interior row is the mean of its symmetric filter window,
    8j + 2; the centre crop keeps rows 4..19 of 24, so output row k is 8k + 34 (the border rows, which the filter
    cuts short, are cropped away)."""
    ramp = Image.fromarray(np.repeat((4 * np.arange(48, dtype=np.uint8))[:, None, None], 32, 1).repeat(3, 2))
    out = levels(Preprocess(resolution=16, center_crop=True)(ramp, np.random.default_rng(0)))
    assert out.shape == (3, 16, 16)
    assert (out == (8 * np.arange(16) + 34)[None, :, None]).all()


def test_random_crop_and_flip_cover_every_outcome():
    """A 12x8 image at resolution 8: horizontal offsets 0..4, each with and without a mirror image."""
    preprocess = Preprocess(resolution=8, center_crop=False, random_flip=True)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        row = levels(preprocess(columns_image(12, 8, step=20), rng))[0, 0].tolist()
        left, flipped = min(row) // 20, row[0] > row[-1]
        assert row == [20 * (left + i) for i in range(8)][:: -1 if flipped else 1]
        seen.add((left, flipped))
    assert seen == {(left, flipped) for left in range(5) for flipped in (False, True)}
    tall = {levels(preprocess(columns_image(8, 11), rng))[1, 0, 0] // 10 for _ in range(100)}
    assert tall == {0, 1, 2, 3}  # vertical offsets 0..3


def png_bytes(img: Image.Image, **kwargs) -> bytes:
    import io

    buffer = io.BytesIO()
    img.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def decode_to_rgb(img: Image.Image, fmt: str = "PNG") -> np.ndarray:
    import io

    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return np.array(data.to_rgb(data.decode_image({"bytes": buffer.getvalue(), "path": None})))


def test_image_modes_become_rgb_with_transparency_on_white():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # transparent black -> white
    rgba.putpixel((1, 0), (0, 0, 0, 255))
    assert decode_to_rgb(rgba).tolist() == [[[255, 255, 255], [0, 0, 0]]]

    half = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    assert decode_to_rgb(half)[0, 0].tolist() == [127, 127, 127]

    la = Image.new("LA", (1, 1), (10, 0))
    assert decode_to_rgb(la)[0, 0].tolist() == [255, 255, 255]

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert decode_to_rgb(palette).tolist() == [[[255, 255, 255], [255, 0, 0]]]

    assert decode_to_rgb(Image.new("L", (1, 1), 77))[0, 0].tolist() == [77, 77, 77]
    assert decode_to_rgb(Image.new("1", (1, 1), 1))[0, 0].tolist() == [255, 255, 255]
    assert decode_to_rgb(Image.new("CMYK", (1, 1), (0, 0, 0, 0)), "JPEG")[0, 0].tolist() == [255, 255, 255]

    sixteen = Image.fromarray(np.array([[65535, 32896, 0]], dtype=np.uint16))  # I;16
    assert decode_to_rgb(sixteen)[0, :, 0].tolist() == [255, 128, 0]


def test_celeba_preset_crops_the_face_window_before_resizing():
    source = data.resolve_source("celeba", 1.0, DataConfig())
    assert (source.kind, source.location, source.crop_box) == ("hub", "nielsr/CelebA-faces", (25, 57, 153, 185))
    # A 178x218 photo whose 128x128 face window is red inside a black frame: the 16 px result is the window alone.
    pixels = np.zeros((218, 178, 3), np.uint8)
    pixels[57:185, 25:153] = (200, 0, 0)
    got = Preprocess(resolution=16)(Image.fromarray(pixels), np.random.default_rng(0), CELEBA_FACE_BOX)
    assert got.shape == (3, 16, 16) and (levels(got) == np.array([200, 0, 0])[:, None, None]).all()


def jpeg_bytes(image: Image.Image, **save) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    image.save(buffer, format="JPEG", quality=90, **save)
    return buffer.getvalue()


def decoded_both_ways(
    payload: bytes, resolution: int, crop_box=None
) -> tuple[torch.Tensor, torch.Tensor, Image.Image]:
    """(full decode through the reference, reduced-scale decode with jpeg_draft, the drafted image)."""
    from functools import partial

    exact, drafted = Preprocess(resolution), Preprocess(resolution, jpeg_draft=True)
    image = data.decode_image({"bytes": payload}, draft_size=partial(drafted.draft_size, crop_box=crop_box))
    reference = exact(data.decode_image({"bytes": payload}), np.random.default_rng(0), crop_box)
    return reference, drafted(image, np.random.default_rng(0), crop_box), image


@pytest.mark.parametrize(("size", "resolution", "crop_box", "scale"),
                         [((178, 218), 64, CELEBA_FACE_BOX, 2), ((178, 218), 32, CELEBA_FACE_BOX, 2), ((512, 384), 64, None, 4)])  # fmt: skip
def test_jpeg_draft_decodes_at_reduced_scale_within_the_stated_tolerance(size, resolution, crop_box, scale):
    from tests.hub_datasets import face_like

    rng = np.random.default_rng(0)
    for _ in range(8):
        reference, got, image = decoded_both_ways(jpeg_bytes(face_like(rng, *size)), resolution, crop_box)
        assert image.info[data.DRAFT_SCALE] == scale and image.info[data.DRAFT_SIZE] == size
        assert got.shape == reference.shape == (3, resolution, resolution)
        difference = (got - reference) * 127.5  # in 0-255 levels
        assert difference.abs().mean() < 3 and abs(difference.mean()) < 1  # the filter differs, not the geometry


def test_jpeg_draft_leaves_small_rotated_and_non_jpeg_images_to_the_exact_path():
    from tests.hub_datasets import face_like

    rng = np.random.default_rng(0)
    small = jpeg_bytes(face_like(rng, 64, 64))  # anime-sized: a full decode costs a fraction of a millisecond
    exif = Image.Exif()
    exif[Image.ExifTags.Base.Orientation] = 6
    rotated = jpeg_bytes(face_like(rng, 218, 178), exif=exif)
    from io import BytesIO

    png = BytesIO()
    face_like(rng, 178, 218).save(png, format="PNG")
    for payload, crop_box in ((small, None), (rotated, CELEBA_FACE_BOX), (png.getvalue(), CELEBA_FACE_BOX)):
        reference, got, image = decoded_both_ways(payload, 32 if payload is small else 16, crop_box)
        assert data.DRAFT_SCALE not in image.info and torch.equal(got, reference)


def test_training_streams_use_jpeg_draft_unless_turned_off(tmp_path):
    from tests.hub_datasets import face_like

    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(face_like(rng, 256, 256)))
    exact = Preprocess(32)
    reference = {
        ident_bytes: exact(data.decode_image({"bytes": ident_bytes}), np.random.default_rng(0))
        for ident_bytes in (p.read_bytes() for p in sorted(folder.iterdir()))
    }
    for draft in (True, False):
        got = [e["pixel_values"] for e in build_dataset(DataConfig(dataset=str(folder), jpeg_draft=draft))]
        closest = [min((g - r).abs().mean().item() for r in reference.values()) for g in got]
        assert len(got) == 4 and (max(closest) == 0) == (not draft) and max(closest) < 3 / 127.5


# ------------------------------------------------------------------------------------------------ sources


def test_folder_yields_every_image_once_as_normalised_tensors(tmp_path):
    folder = make_folder(tmp_path / "imgs", 7)
    (folder / "notes.txt").write_text("not an image, not listed")
    ds = build_dataset(config(folder, resolution=8, shuffle_buffer=0))
    examples = list(ds)
    assert sorted(ids(examples)) == list(range(7))
    assert all(e["pixel_values"].shape == (3, 8, 8) and e["source"] == 0 for e in examples)
    assert -1.0 <= float(examples[3]["pixel_values"].min()) and float(examples[3]["pixel_values"].max()) <= 1.0
    assert ds.source_names == [str(folder)] and ds.num_examples == 7 and not ds.skipped


def test_train_data_dir_and_split_subfolders(tmp_path):
    make_folder(tmp_path / "d" / "train", 3)
    make_folder(tmp_path / "d" / "test", 2, start=10)
    train = build_dataset(DataConfig(train_data_dir=str(tmp_path / "d"), resolution=8, shuffle_buffer=0))
    test = build_dataset(DataConfig(train_data_dir=str(tmp_path / "d"), resolution=8, split="test"))
    assert sorted(ids(train)) == [0, 1, 2] and sorted(ids(test)) == [10, 11]


def test_parquet_with_named_or_detected_image_column(tmp_path):
    path = make_parquet(tmp_path / "t.parquet", 6, rows_per_group=2, column="picture")
    named = build_dataset(config(path, image_column="picture", shuffle_buffer=0))
    assert ids(named) == list(range(6))
    detected = build_dataset(config(path, shuffle_buffer=0))  # "image" absent, one image column: use it
    assert ids(detected) == list(range(6))
    with pytest.raises(DataError, match="no column 'photo'.*--image_column"):
        build_dataset(config(path, image_column="photo"))
    downloaded = build_dataset(config(path, streaming=False, cache_dir=str(tmp_path / "hf"), seed=1))
    assert sorted(ids(downloaded)) == list(range(6)) and downloaded.num_examples == 6


def test_mixture_tags_each_example_with_its_source(tmp_path):
    make_folder(tmp_path / "a", 30)
    make_folder(tmp_path / "b", 6, start=30)
    ds = build_dataset(config(f"{tmp_path / 'a'}:0.8,{tmp_path / 'b'}:0.2", seed=1))
    assert ds.source_names == [str(tmp_path / "a"), str(tmp_path / "b")]
    examples = list(ds)
    for example in examples:  # images 0-29 come from a (source 0), 30-35 from b (source 1)
        assert example["source"] == (ident(example["pixel_values"]) >= 30)
    counts = Counter(e["source"] for e in examples)
    assert counts[0] > 2 * counts[1] > 0  # weights 0.8 / 0.2


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("anime:0.7,celeba:0.3", [("anime", 0.7), ("celeba", 0.3)]),
        ("a:3, b:1", [("a", 0.75), ("b", 0.25)]),
        ("a,b", [("a", 0.5), ("b", 0.5)]),
        ("user/set:1", [("user/set", 1.0)]),
        ("C:\\data\\faces", [("C:\\data\\faces", 1.0)]),
    ],
)
def test_parse_mixture(spec, expected):
    assert [(n, pytest.approx(w)) for n, w in parse_mixture(spec)] == expected


@pytest.mark.parametrize("spec", ["anime:0.7,celeba:x", "anime:0.7,celeba", "a:0,b:0", "a:-1,b:2", ",a:1"])
def test_unparsable_mixture_is_one_clear_error(spec):
    with pytest.raises(DataError, match="mixture") as info:
        build_dataset(DataConfig(dataset=spec))
    assert "\n" not in str(info.value)


def test_clear_errors_for_empty_folder_unknown_name_and_both_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No image files.*empty"):
        build_dataset(config(tmp_path / "empty"))
    with pytest.raises(DataError, match="not a preset"):
        build_dataset(config(tmp_path / "missing-folder"))
    with pytest.raises(DataError, match="not both"):
        build_dataset(DataConfig(dataset="emoji", train_data_dir=str(tmp_path)))


# ------------------------------------------------------------------------------------------------ bad input


def bomb_png() -> bytes:
    """A valid PNG whose header claims 30000x30000 pixels (Pillow refuses > 2x its 89M limit at open)."""
    raw = bytearray(png_bytes(Image.new("RGB", (8, 8))))
    ihdr = bytearray(raw[16:29])
    ihdr[0:8] = struct.pack(">II", 30000, 30000)
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return bytes(raw)


def make_bad_folder(folder: Path) -> Path:
    make_folder(folder, 5)
    whole = png_bytes(noise_image(64, 64), compress_level=0)
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image")
    (folder / "bomb.png").write_bytes(bomb_png())
    return folder


EXPECTED_SKIPS = {"truncated": 1, "empty": 1, "not an image": 1, "too large": 1}


def test_bad_files_are_skipped_and_counted(tmp_path):
    ds = build_dataset(config(make_bad_folder(tmp_path / "bad")))
    assert sorted(ids(ds)) == list(range(5))
    assert ds.skipped == EXPECTED_SKIPS


def test_bad_files_are_counted_across_dataloader_workers(tmp_path):
    ds = build_dataset(config(make_bad_folder(tmp_path / "bad"), shuffle_buffer=0))
    loader = build_dataloader(ds, batch_size=2, num_workers=2)
    assert sorted(batch_ids(loader)) == list(range(5))
    assert ds.skipped == EXPECTED_SKIPS


def test_hub_id_offline_fails_fast_with_one_sentence():
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        build_dataset(DataConfig(dataset="someone/anime-faces"))
    message = str(info.value)
    assert time.monotonic() - start < 5
    assert "'someone/anime-faces'" in message and "--dataset emoji" in message and "\n" not in message


def test_hub_id_without_network_fails_in_seconds_without_trying_datasets(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(network, "is_offline", lambda: False)
    monkeypatch.setattr(network, "behind_proxy", lambda: False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setattr(data.datasets, "load_dataset", lambda *a, **k: pytest.fail("datasets would retry for 24 s"))
    start = time.monotonic()
    with pytest.raises(
        DataError, match=r"DrishtiSharma/Anime-Face-Dataset.*does not answer \(refused\).*--dataset emoji"
    ):
        build_dataset(DataConfig(dataset="anime"))  # no --data_retry_minutes here: nothing to wait for
    assert time.monotonic() - start < 5


def test_a_hub_that_does_not_answer_as_the_stream_opens_is_waited_for_within_the_budget(monkeypatch, caplog):
    answers = iter(["refused", "refused", "no answer", None, None])
    monkeypatch.setattr(network, "is_offline", lambda: False)
    monkeypatch.setattr(network, "behind_proxy", lambda: False)
    monkeypatch.setattr(network, "why_unreachable", lambda timeout=2.0: next(answers))
    monkeypatch.setattr(network.time, "sleep", lambda seconds: None)
    loaded = []
    monkeypatch.setattr(data.datasets, "load_dataset", lambda *a, **k: loaded.append(a) or "the stream")
    source = data.resolve_source("anime", 1.0, DataConfig())
    with caplog.at_level("WARNING"):
        assert data._load_hub(source, DataConfig(dataset="anime", data_retry_minutes=1)) == "the stream"
    assert len(loaded) == 1 and "does not answer" in caplog.text and "answers again" in caplog.text
    # Without a budget (the CLI, previews): one sentence at once; and no network at all is never waited for.
    for answer, budget, words in (
        ("refused", 0, r"does not answer \(refused\)"),
        (network.NO_NETWORK, 30, "no network"),
    ):
        monkeypatch.setattr(network, "why_unreachable", lambda timeout=2.0, a=answer: a)
        with pytest.raises(DataError, match=words):
            data._load_hub(source, DataConfig(dataset="anime", data_retry_minutes=budget))


def test_retry_while_transient_gives_up_past_its_budget_with_the_last_error():
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    def down():
        raise ConnectionRefusedError("refused")

    with pytest.raises(ConnectionRefusedError):
        network.retry_while_transient(down, 60, "The Hub", clock=lambda: clock[0], sleep=sleep)
    assert 60 <= clock[0] < 95  # backoff 2, 4, 8, 16, 30, ... capped by what is left
    with pytest.raises(ValueError):  # not the network's failure: at once
        network.retry_while_transient(lambda: int("x"), 60, "The Hub", clock=lambda: 0.0, sleep=sleep)


def test_hub_probe_sees_a_listening_endpoint(monkeypatch):
    import huggingface_hub.constants

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setattr(network, "is_offline", lambda: False)
        assert network.hub_reachable(timeout=2)
        monkeypatch.setattr(network, "is_offline", lambda: True)  # offline mode: no probe, no connection
        assert not network.hub_reachable(timeout=2)


def test_symlink_loops_in_a_folder_list_each_image_once_and_end(tmp_path):
    (tmp_path / "faces" / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "faces" / name)
    (tmp_path / "faces" / "loop").symlink_to(".")  # one loop listed each image 41 times
    (tmp_path / "faces" / "sub" / "up").symlink_to("..")  # two loops walked for ever
    (tmp_path / "faces" / "same.png").symlink_to("a.png")
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere" / "c.png")
    (tmp_path / "faces" / "linked").symlink_to(tmp_path / "elsewhere")  # a linked folder outside is still read
    files = data.list_image_files(str(tmp_path / "faces"))
    assert sorted(Path(f).name for f in files) == ["a.png", "b.png", "c.png"]


# ------------------------------------------------------------------------------------------------ distribution


@pytest.mark.parametrize("kind", ["folder", "parquet-4-groups", "parquet-1-group"])
def test_two_ranks_get_disjoint_shares_that_cover_the_data(tmp_path, kind):
    if kind == "folder":
        source = make_folder(tmp_path / "imgs", 11)
    else:
        source = make_parquet(tmp_path / "t.parquet", 11, rows_per_group=3 if kind == "parquet-4-groups" else 11)
    shares = [ids(build_dataset(config(source, shuffle_buffer=4), rank=r, world_size=2)) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == list(range(11))
    assert abs(len(shares[0]) - len(shares[1])) <= 3 and min(map(len, shares)) > 0


def test_dataloader_workers_each_read_a_distinct_share(tmp_path):
    ds = build_dataset(config(make_folder(tmp_path / "imgs", 20)))
    loader = build_dataloader(ds, batch_size=3, num_workers=2)
    assert loader.num_workers == 2
    assert sorted(batch_ids(loader)) == list(range(20))


def test_each_epoch_is_a_different_permutation_reproducible_from_the_seed(tmp_path):
    folder = make_folder(tmp_path / "imgs", 20)
    ds = build_dataset(config(folder, seed=5))
    orders = []
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        orders.append(ids(ds))
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(20))
    assert orders[0] != orders[1] and orders[0] == orders[2] and orders[0] != list(range(20))
    unshuffled = build_dataset(config(folder, shuffle_buffer=0))
    unshuffled.set_epoch(3)
    assert ids(unshuffled) == list(range(20))


def resume_run(make_dataset, batch_size: int, num_workers: int, stop_after: int, epoch: int = 1):
    """(the uninterrupted epoch, the batches before a checkpoint + the batches after resuming in a new loader)."""
    full = build_dataloader(make_dataset(), batch_size, num_workers)
    full.set_epoch(epoch)
    reference = batch_ids(full)
    first = build_dataloader(make_dataset(), batch_size, num_workers)
    first.set_epoch(epoch)
    before = []
    for step, batch in enumerate(first):
        before += batch_ids([batch])
        if step + 1 == stop_after:
            state = first.state_dict()
            break
    resumed = build_dataloader(make_dataset(), batch_size, num_workers)
    resumed.load_state_dict(state)
    after = batch_ids(resumed)
    resumed.set_epoch(epoch + 1)
    next_epoch = batch_ids(resumed)
    return reference, before, after, next_epoch


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_continues_exactly_for_shuffled_folders(tmp_path, num_workers):
    folder = make_folder(tmp_path / "imgs", 20)
    reference, before, after, next_epoch = resume_run(lambda: build_dataset(config(folder)), 3, num_workers, 3)
    assert len(before) == 9
    assert before + after == reference  # no repeat, no skip, same order
    assert sorted(next_epoch) == list(range(20))  # the following epoch starts afresh


def test_resume_mid_epoch_of_a_mixture_with_workers(tmp_path):
    spec = f"{make_folder(tmp_path / 'a', 16)}:0.6,{make_folder(tmp_path / 'b', 10, start=16)}:0.4"
    reference, before, after, _ = resume_run(lambda: build_dataset(config(spec)), 3, 2, 2)
    assert len(before) == 6 and before + after == reference


def test_resume_of_a_buffered_stream_repeats_nothing_and_without_buffer_skips_nothing(tmp_path):
    path = make_parquet(tmp_path / "t.parquet", 24, rows_per_group=4)
    reference, before, after, _ = resume_run(lambda: build_dataset(config(path, shuffle_buffer=0)), 4, 0, 2)
    assert before + after == reference == list(range(24))
    reference, before, after, _ = resume_run(lambda: build_dataset(config(path, shuffle_buffer=5)), 4, 0, 2)
    assert len(set(before + after)) == len(before + after)  # no repeats
    assert len(before) + len(after) >= 24 - 5  # at most the shuffle buffer is lost


# ------------------------------------------------------------------------------------------------ emoji + helpers


def test_emoji_is_the_default_dataset_and_take_images_is_deterministic(emoji_cache):
    ds = build_dataset(DataConfig(resolution=8, cache_dir=emoji_cache))
    assert ds.source_names == ["emoji"] and ds.num_examples > 500
    first = take_images(DataConfig(resolution=8, cache_dir=emoji_cache, random_flip=True), 10)
    again = take_images(DataConfig(resolution=8, cache_dir=emoji_cache, random_flip=True), 10)
    assert first.shape == (10, 3, 8, 8) and torch.equal(first, again)
    test_split = take_images(DataConfig(resolution=8, cache_dir=emoji_cache, split="test"), 10_000)
    assert 40 < len(test_split) < 100  # fewer than asked: the held-out split is ~10%
    with pytest.raises(DataError, match="'train' and 'test'"):
        build_dataset(DataConfig(resolution=8, cache_dir=emoji_cache, split="validation"))


@pytest.fixture(scope="module")
def emoji_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("emoji-cache"))
