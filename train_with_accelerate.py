#!/usr/bin/env python
"""Train a DDPM of faces with Accelerate on one CPU, one GPU, many GPUs or many machines.

    accelerate launch train_with_accelerate.py --help
    accelerate launch train_with_accelerate.py --output_dir ddpm-emoji-32              # the embedded emoji faces
    accelerate launch --multi_gpu --num_processes 4 train_with_accelerate.py --dataset anime --resolution 64

Accepts every flag of diffusers' examples/unconditional_image_generation/train_unconditional.py. The loop lives in
anime_ddpm/training.py.
"""

import sys

from anime_ddpm.training import main


if __name__ == "__main__":
    sys.exit(main(script=True))
