"""The `anime-ddpm` command."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anime-ddpm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("sample", help="sample a grid of images from a saved pipeline")
    sample.add_argument("model", help="a folder written by training or save_pretrained, or a Hub repo id")
    sample.add_argument("--num", type=int, default=16)
    sample.add_argument("--steps", type=int, default=None)
    sample.add_argument("--scheduler", default=None)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--batch-size", type=int, default=16)
    sample.add_argument("--output", default="samples.png")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .sampling import default_steps, generate, load_pipeline, with_scheduler

    try:
        pipe = with_scheduler(load_pipeline(args.model), args.scheduler)
        steps = args.steps or default_steps(args.scheduler)
        images = generate(pipe, args.num, seed=args.seed, batch_size=args.batch_size, num_inference_steps=steps)
    except (ValueError, OSError) as error:
        print(f"anime-ddpm: {error}", file=sys.stderr)
        return 2
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.utils import make_image_grid

    pil = VaeImageProcessor.numpy_to_pil(images.permute(0, 2, 3, 1).numpy())
    cols = int(len(pil) ** 0.5) or 1
    rows = -(-len(pil) // cols)
    pil += [pil[0].copy().point(lambda _: 255)] * (rows * cols - len(pil))
    make_image_grid(pil, rows, cols).save(args.output)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
