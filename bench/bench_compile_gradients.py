"""How far `--compile`'s gradients are from exact ones, with Inductor's layout optimisation on and off.

For each UNet (preset:resolution), one batch (batch 4 or 8, fixed seeds) and an MSE loss against a random target, the
gradient of every parameter is computed in float64 eager (the exact gradient to ~1e-12), then in float32: eager,
`torch.compile` with Inductor's defaults, and `torch.compile(options=state.COMPILE_OPTIONS)` as `--compile` runs
it. Prints the relative error ||g - g64|| / ||g64|| over all parameters, and the parameters whose gradient came out
exactly zero. In torch 2.13 on CPU the default layout optimisation made the compiled backward silently wrong.

    .venv/bin/python bench/bench_compile_gradients.py [--configs tiny:16,small:32] [--threads 2]

Each compile takes a minute or two on 2 cores (Inductor caches the kernels for later runs).
"""

from __future__ import annotations

import argparse
import copy

import torch


def gradients(model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    output = model(x_t.to(next(model.parameters()).dtype), t).sample
    (output.double() - target).square().mean().backward()
    return torch.cat([p.grad.double().flatten() for p in model.parameters()])


def zero_parameters(model: torch.nn.Module, exact: torch.Tensor, got: torch.Tensor) -> list[str]:
    """Parameters whose gradient is exactly zero here but not in float64."""
    names, offset = [], 0
    for name, parameter in model.named_parameters():
        size = parameter.numel()
        if not got[offset : offset + size].any() and exact[offset : offset + size].any():
            names.append(name)
        offset += size
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="tiny:16,small:32", help="preset:resolution, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from anime_ddpm.models import build_unet
    from anime_ddpm.state import COMPILE_OPTIONS

    print("| UNet | eager fp32 | compiled, Inductor defaults | compiled, `--compile` (layout optimisation off) |")
    print("|---|---|---|---|")
    for spec in args.configs.split(","):
        preset, resolution = spec.split(":")[0], int(spec.split(":")[1])
        torch.manual_seed(0)
        unet = build_unet(preset, resolution)
        generator = torch.Generator().manual_seed(1)
        batch = 4 if resolution <= 16 else 8
        x_t = torch.randn(batch, 3, resolution, resolution, generator=generator, dtype=torch.float64)
        target = torch.randn(x_t.shape, generator=generator, dtype=torch.float64)
        t = torch.randint(0, 1000, (batch,), generator=generator)
        exact = gradients(copy.deepcopy(unet).double(), x_t, t, target)

        cells = []
        for options in (None, {}, COMPILE_OPTIONS):
            model = copy.deepcopy(unet)
            if options is not None:
                torch._dynamo.reset()  # a fresh compile each time, not a (dynamic-shape) recompile of the last one
                model.compile(options=options)
                gradients(model, x_t, t, target)  # compiles
            got = gradients(model, x_t, t, target)
            error = float((got - exact).norm() / exact.norm())
            zeros = zero_parameters(model, exact, got)
            cells.append(f"{error:.1e}" + (f" ({len(zeros)} parameters all-zero)" if zeros else ""))
        print(f"| {preset} {resolution} px | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
