"""A solver from outside the package: block power iteration ("power"), registered in this one file.

It only uses the operator interface every solver gets (``size``, ``matmat``), so the
same object runs per image (:func:`interpret_spectral.decompose`) and across images
(:func:`interpret_spectral.decompose_dataset`, which hands it the full sparse graph).
"""

from __future__ import annotations

import time

import numpy as np

from interpret_spectral.spectral import Solution, Solver, register_solver
from interpret_spectral.spectral.finish import apply_numpy, check_components, finish


class PowerIteration(Solver):
    """Orthogonal (block power) iteration on ``M + shift I``, then the common finish."""

    name = "power"

    def solve(self, operator, n_components, *, seed=0, iterations=300, shift=1.0):
        n_components = check_components(operator, n_components)
        apply = apply_numpy(operator)
        start = time.perf_counter()
        x = np.random.default_rng(seed).standard_normal((operator.size, n_components))
        for _ in range(int(iterations)):
            x, _ = np.linalg.qr(apply(x) + shift * x)  # the shift keeps the top of a PSD-ish M on top
        vectors, values = finish(x, apply)
        return Solution(vectors, values, int(iterations), time.perf_counter() - start, self.name, float("nan"),
                        {"iterations": int(iterations), "shift": float(shift), "seed": seed})


POWER = register_solver(PowerIteration())
