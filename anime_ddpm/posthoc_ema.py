"""Power-function EMAs and post-hoc EMA reconstruction (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", section 3 and appendix C). Math only: no files, no Accelerate.

A power-function EMA with exponent gamma averages the weights of steps 1..T with a density proportional to
t ** gamma, so its length grows with the run; its relative width `sigma_rel` (the density's standard deviation over
T) is the one number that names it. Two of them, snapshotted every N steps, span the others: the average of any
sigma_rel at the last snapshot is, very nearly, a weighted sum of the snapshots, with weights from a least-squares fit
of the densities. So the EMA length, which Karras et al. found to matter a lot and to be hard to guess, can be chosen
after an expensive run instead of before it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from diffusers.training_utils import EMAModel


# The two EMAs a run snapshots (Karras et al.'s choice): between them they span sigma_rel of about 0.02 to 0.25.
SNAPSHOT_SIGMA_RELS = (0.05, 0.10)
MAX_SIGMA_REL = 0.28  # gamma > 0: the density grows towards the end of the run


def sigma_rel_from_gamma(gamma: float) -> float:
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """The exponent whose density has this relative width: the largest root of s^2 (g+2)^2 (g+3) = g + 1."""
    if not 0 < sigma_rel <= MAX_SIGMA_REL:
        raise ValueError(f"sigma_rel must be in (0, {MAX_SIGMA_REL}], got {sigma_rel}.")
    s2 = sigma_rel**2
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


class PowerFunctionEMA(EMAModel):
    """diffusers' EMAModel with Karras et al.'s decay, beta_t = (1 - 1/t) ** (gamma + 1) at step t.

    After T steps it weights the weights of step t by (t^(g+1) - (t-1)^(g+1)) / T^(g+1): exactly the power-function
    density, whatever T, and no warm-up or maximum decay to set."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter], sigma_rel: float, foreach: bool = True):
        super().__init__(parameters, foreach=foreach)
        self.sigma_rel = sigma_rel
        self.gamma = gamma_from_sigma_rel(sigma_rel)

    def get_decay(self, optimization_step: int) -> float:
        return (1 - 1 / optimization_step) ** (self.gamma + 1) if optimization_step > 0 else 0.0


def _log_inner_products(steps_a: np.ndarray, gammas_a: np.ndarray, steps_b: np.ndarray, gammas_b: np.ndarray):
    """log of the integral over t of p_a(t) p_b(t), with p(t) = (g+1) t^g / T^(g+1) on [0, T] (in logs: T^(g+1)
    overflows float64 for long runs and short EMAs)."""
    ga, gb = gammas_a[:, None], gammas_b[None, :]
    ta, tb = steps_a[:, None], steps_b[None, :]
    exponent = ga + gb + 1
    return (np.log(ga + 1) + np.log(gb + 1) + exponent * np.log(np.minimum(ta, tb)) - np.log(exponent)
            - (ga + 1) * np.log(ta) - (gb + 1) * np.log(tb))  # fmt: skip


def posthoc_weights(
    snapshot_steps: Sequence[int], snapshot_sigma_rels: Sequence[float], sigma_rel: float, step: int
) -> np.ndarray:
    """Weights w such that sum_i w_i * snapshot_i is the power-function EMA of `sigma_rel` at `step`, in the least-
    squares sense of the densities (Karras et al., appendix C.3). Snapshots after `step` must not be passed."""
    steps = np.asarray(snapshot_steps, dtype=np.float64)
    if len(steps) == 0 or steps.min() < 1 or steps.max() > step:
        raise ValueError(f"Snapshots must be taken at steps 1..{step}, got {sorted(snapshot_steps)}.")
    gammas = np.asarray([gamma_from_sigma_rel(s) for s in snapshot_sigma_rels], dtype=np.float64)
    # Work in units of the target step, so that every quantity stays near 1.
    steps = steps / step
    gram = np.exp(_log_inner_products(steps, gammas, steps, gammas))
    target = np.exp(_log_inner_products(steps, gammas, np.ones(1), np.asarray([gamma_from_sigma_rel(sigma_rel)])))
    return np.linalg.lstsq(gram, target[:, 0], rcond=None)[0]
