"""Pictures of models and data: image grids, denoising strips and GIFs, labelled tables of images.

Everything returns or takes PIL images so the CLI, the demo and the model card share one look: white padding,
nearest-neighbour upscaling (small faces stay crisp) and small text labels in PIL's built-in font.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont


ImageLike = torch.Tensor | Sequence[Image.Image]
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)


def to_pil(images: ImageLike, scale: int = 1) -> list[Image.Image]:
    """(N, 3, H, W) tensors in [0, 1] or PIL images -> RGB PIL images, upscaled `scale` times (nearest)."""
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"Expected images of shape (N, 3, H, W), got {tuple(images.shape)}.")
        array = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        array = array.permute(0, 2, 3, 1).numpy()
        pil = [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a).convert("RGB") for a in array]
    else:
        pil = [image.convert("RGB") for image in images]
    if scale != 1:
        pil = [image.resize((image.width * scale, image.height * scale), Image.NEAREST) for image in pil]
    return pil


def grid_shape(count: int, cols: int | None = None) -> tuple[int, int]:
    """(rows, cols) closest to square, wider rather than taller."""
    cols = cols or math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def make_grid(
    images: ImageLike, cols: int | None = None, padding: int = 2, scale: int = 1, background=BACKGROUND
) -> Image.Image:
    """A near-square grid of same-sized images with `padding` pixels between and around them."""
    pil = to_pil(images, scale)
    if not pil:
        raise ValueError("make_grid needs at least one image.")
    rows, cols = grid_shape(len(pil), cols)
    w, h = pil[0].size
    grid = Image.new("RGB", (cols * (w + padding) + padding, rows * (h + padding) + padding), background)
    for i, image in enumerate(pil):
        row, col = divmod(i, cols)
        grid.paste(image, (padding + col * (w + padding), padding + row * (h + padding)))
    return grid


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=12)  # the 10 px default loses its word spacing


def _text_size(text: str) -> tuple[int, int]:
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=_font())
    return right - left, bottom - top


def labelled_table(
    cells: Sequence[Sequence[Image.Image]],
    col_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    padding: int = 2,
    title: str | None = None,
    group_rows: int = 0,
) -> Image.Image:
    """Rows of same-sized images with optional column headers, row labels on the left and a title.

    `group_rows=k` leaves a wider gap after every k rows (e.g. between the x_t / x0 pairs of two samples).
    """
    h_cell = max(image.height for row in cells for image in row)
    w_cell = max(image.width for row in cells for image in row)
    n_cols = max(len(row) for row in cells)
    text_h = _text_size("Ag")[1] + 4
    left = max((_text_size(label)[0] for label in row_labels or []), default=-padding) + 2 * padding
    top = (text_h if col_labels else 0) + (text_h if title else 0)
    width = left + n_cols * (w_cell + padding) + padding
    gap = 3 * padding if group_rows else 0
    n_gaps = (len(cells) - 1) // group_rows if group_rows else 0
    height = top + len(cells) * (h_cell + padding) + padding + n_gaps * gap
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((padding, 1), title, fill=TEXT_COLOUR, font=_font())
    for c, label in enumerate(col_labels or []):
        x = left + c * (w_cell + padding) + (w_cell - _text_size(label)[0]) // 2
        draw.text((max(x, left), top - text_h + 1), label, fill=TEXT_COLOUR, font=_font())
    for r, row in enumerate(cells):
        y = top + padding + r * (h_cell + padding) + ((r // group_rows) * gap if group_rows else 0)
        if row_labels:
            draw.text((padding, y + (h_cell - text_h) // 2 + 2), row_labels[r], fill=TEXT_COLOUR, font=_font())
        for c, image in enumerate(row):
            canvas.paste(image, (left + c * (w_cell + padding), y))
    return canvas


def denoising_strip(
    latents: Sequence[torch.Tensor],
    pred_x0: Sequence[torch.Tensor],
    labels: Sequence[str],
    scale: int = 1,
    title: str | None = None,
) -> Image.Image:
    """Per sample two rows, x_t above the predicted x_0, one column per snapshot (tensors in [-1, 1], (B, 3, H, W))."""
    if not latents or len(latents) != len(pred_x0) or len(latents) != len(labels):
        raise ValueError("denoising_strip needs one label, one x_t and one predicted x_0 per snapshot.")
    rows, names = [], []
    for b in range(latents[0].shape[0]):
        rows.append(to_pil(torch.stack([(x[b] + 1) / 2 for x in latents]), scale))
        rows.append(to_pil(torch.stack([(x[b] + 1) / 2 for x in pred_x0]), scale))
        names += [f"#{b} x_t", f"#{b} x0"]
    return labelled_table(rows, col_labels=list(labels), row_labels=names, title=title, group_rows=2)


def denoising_frame(latents: torch.Tensor, pred_x0: torch.Tensor, label: str, scale: int = 1) -> Image.Image:
    """One GIF frame: x_t of every sample on the top row, their predicted x_0 below, a caption above."""
    top = to_pil((latents + 1) / 2, scale)
    bottom = to_pil((pred_x0 + 1) / 2, scale)
    return labelled_table([top, bottom], row_labels=["x_t", "x0"], title=label)


def save_gif(
    frames: Sequence[Image.Image], path: str | Path, duration_ms: int = 80, final_hold_ms: int = 1500
) -> Path:
    """An endlessly looping GIF (PIL `save_all`) that pauses on its last frame so the result can be seen."""
    if not frames:
        raise ValueError("save_gif needs at least one frame.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durations = [duration_ms] * (len(frames) - 1) + [max(final_hold_ms, duration_ms)]
    frames = [frame.convert("RGB") for frame in frames]
    frames[0].save(
        path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=False, disposal=1
    )
    return path


def auto_scale(size: int, target: int = 64) -> int:
    """Integer upscaling so that small images (32 px) are at least `target` px wide on screen."""
    return max(1, target // max(1, size))
