"""anime_ddpm.emoji: which OpenMoji faces, held-out split, rendering and its cache."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from anime_ddpm import emoji


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("emoji-cache"))


def test_selection_is_single_faces_with_every_skin_tone_and_hair_variant():
    people = set(emoji.emoji_names("emoji-people", split=None))
    smileys = set(emoji.emoji_names("emoji-smileys", split=None))
    assert not people & smileys
    assert set(emoji.emoji_names("emoji", split=None)) == people | smileys
    assert 90 <= len(smileys) <= 130 and 400 <= len(people) <= 700
    assert "1F600" in smileys and "1F636-200D-1F32B-FE0F" in smileys  # grinning face, face in clouds
    for tone in ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"):
        assert f"1F469-{tone}" in people  # woman, all skin tones
        assert f"1F468-{tone}-200D-1F9B0" in people  # man with red hair
    assert {"1F9D1-200D-1F9B1", "1F469-200D-1F9B3", "1F468-200D-1F9B2"} <= people  # curly, white hair, bald
    names = people | smileys
    for left_out in ("1F431", "1F480", "1F4A9", "1F550", "1F46B", "1F46A", "1F3A9", "1F468-200D-1F373"):
        assert left_out not in names  # cat, skull, poo, clock, couple, family, hat, cook (object)
    assert not any("200D-2764" in name or "1F91D" in name for name in names)  # couples written as ZWJ


def test_test_split_is_a_disjoint_tenth_of_each_subset():
    for preset in ("emoji-smileys", "emoji-people"):
        train = set(emoji.emoji_names(preset, "train"))
        test = set(emoji.emoji_names(preset, "test"))
        assert not train & test and train | test == set(emoji.emoji_names(preset, None))
        assert abs(len(test) / (len(train) + len(test)) - 0.1) < 0.02


def test_test_split_depends_only_on_the_names():
    """Held out by the names' own hashes: not by listing order, nor by Python's per-process hash seed."""
    names = emoji.emoji_names("emoji-smileys", None)
    held_out = set(emoji.emoji_names("emoji-smileys", "test"))
    assert emoji._in_test_split(names[::-1]) == held_out and emoji._in_test_split(names[1::2] + names[::2]) == held_out
    script = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('e', sys.argv[1]); "
        "e = importlib.util.module_from_spec(spec); spec.loader.exec_module(e); "
        "print(','.join(e.emoji_names('emoji', 'test')))"
    )
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", script, emoji.__file__],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip().split(",") == emoji.emoji_names("emoji", "test")


def test_rendering_is_deterministic_on_white_and_filled(cache):
    first = np.array(emoji.render_emoji("1F600", 16))
    assert np.array_equal(first, np.array(emoji.render_emoji("1F600", 16)))
    assert first.shape == (16, 16, 3)
    assert (first[0, 0] == 255).all() and (first[-1, -1] == 255).all()  # white corners
    yellow = (first[..., 0] > 200) & (first[..., 1] > 170) & (first[..., 2] < 120)
    assert yellow.mean() > 0.2  # the face fills the square (outlines and mouth take the rest at 16 px)


def test_cache_renders_once(cache, monkeypatch):
    files = emoji.emoji_files("emoji", 8, "train", cache)
    assert len(files) == len(emoji.emoji_names("emoji", "train"))
    assert Image.open(files[0]).size == (8, 8)
    monkeypatch.setattr(emoji, "render_emoji", lambda *a: pytest.fail("rendered again"))
    assert emoji.emoji_files("emoji-people", 8, "test", cache)[0].startswith(str(emoji.render_cache(8, cache)))


def test_smileys_and_people_are_told_apart_by_a_nearest_centroid(cache):
    def load(preset, split):
        files = emoji.emoji_files(preset, 8, split, cache)
        return np.stack([np.asarray(Image.open(f), dtype=np.float32).ravel() for f in files])

    centroids = [load(preset, "train").mean(0) for preset in ("emoji-smileys", "emoji-people")]
    correct = total = 0
    for label, preset in enumerate(("emoji-smileys", "emoji-people")):
        test = load(preset, "test")
        distances = np.stack([((test - c) ** 2).sum(1) for c in centroids], 1)
        correct += int((distances.argmin(1) == label).sum())
        total += len(test)
    assert correct / total >= 0.9
