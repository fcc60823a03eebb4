"""One figure from rows of several bench_recipe grids (the same sample seeds per column), each row labelled anew.

docs/recipe-ema-default.png was made with:

    python -m bench.compose_grids --output docs/recipe-ema-default.png \
      --row "60 min, seed 2, DPM++ 25, warm-up EMA=outputs/phema60/bench_recipe.png:0" \
      --row "60 min, seed 2, DPM++ 25, sigma_rel 0.15=outputs/phema60/bench_recipe-sigma_rel=0.15.png:0" \
      ... (DDPM 1000 is row 1 of those grids; the 15-minute rows from outputs/phema15) \
      --row "held-out emoji (real)=outputs/phema60/bench_recipe.png:2"

Row i of a grid is its i-th band of images under the title; the 12 images sit right-aligned in every grid.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw, ImageFont


IMAGES_WIDTH = 797  # the 12 images of a bench_recipe grid and their margins, from its right edge
LABEL_WIDTH = 260


def image_rows(path: str) -> tuple[Image.Image, list[tuple[int, int]]]:
    """The grid and the vertical extents of its bands of images (the title band left out)."""
    grid = Image.open(path).convert("RGB")
    white = (np.asarray(grid).astype(int).min(axis=2) > 245).all(axis=1)
    bands, start = [], None
    for y, is_white in enumerate(white):
        if not is_white and start is None:
            start = y
        if is_white and start is not None:
            bands.append((start, y))
            start = None
    return grid, bands[1:]


def row_strip(path: str, index: int) -> Image.Image:
    grid, bands = image_rows(path)
    top, bottom = bands[index]
    strip = grid.crop((grid.width - IMAGES_WIDTH, top, grid.width, bottom))
    ImageDraw.Draw(strip).rectangle((0, 0, 7, strip.height), fill="white")  # the end of the grid's own label
    return strip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", action="append", required=True, help="LABEL=GRID.png:ROW (repeatable, top first)")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    entries = []
    for spec in args.row:
        label, _, where = spec.partition("=")
        path, _, index = where.rpartition(":")
        entries.append((label, row_strip(path, int(index))))
    figure = Image.new("RGB", (LABEL_WIDTH + max(s.width for _, s in entries), sum(s.height + 4 for _, s in entries)))
    figure.paste("white", (0, 0, *figure.size))
    draw, font, y = ImageDraw.Draw(figure), ImageFont.load_default(), 0
    for label, strip in entries:
        figure.paste(strip, (LABEL_WIDTH, y))
        draw.text((4, y + strip.height // 2 - 6), label, fill="black", font=font)
        y += strip.height + 4
    figure.save(args.output, optimize=True)
    print(f"{args.output}: {figure.size[0]}x{figure.size[1]}")


if __name__ == "__main__":
    main()
