"""Table 6: time of the exact solver against Adam, per image, with the paper's settings.

On one store (``--model``, Appendix B settings), every image is decomposed with the
multi-layer QK graph by ``solver="exact"`` (top eigenvectors of ``M``; the expected
operator over the draws for diffusion models) and by Adam (the paper's Eq. 4, ``--steps``
backward passes; the buffered Adam for diffusion models).  Reported: seconds per image
(graph construction and solve, from the decomposition's ``seconds``), and how far Adam's
subspace is from the exact one (median principal angle, degrees).

Usage::

    python examples/paper/table6_timing.py --images 4 --image-size 224
    python examples/paper/table6_timing.py --model sd --device cuda
    python examples/paper/table6_timing.py --random-init --images 2 --steps 30
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import subspace_angles

from _paper import SHARED, paper_parser, record, report, segmentation_samples, setup
from interpret_spectral.spectral.decompose import decompose


def main(argv: list[str] | None = None) -> None:
    parser = paper_parser(__doc__, out="out/paper/table6", data=SHARED / "voc")
    args = parser.parse_args(argv)
    run = setup(args)
    samples = segmentation_samples(args, "images")
    store = record(run, [s.image for s in samples], [s.id for s in samples])
    results = {solver: decompose(store, graph="qk", **run.decompose_options(solver)) for solver in ("exact", "adam")}
    exact = results["exact"]["vectors"].values
    angles = []
    for i in range(len(samples)):
        a, b = (r["vectors"].values[i].reshape(-1, exact.shape[-1]) for r in results.values())
        angles.append(float(np.degrees(np.median(subspace_angles(a, b)))))
    steps = run.decompose_options("adam")["steps"]
    rows = [
        ["exact", float(results["exact"]["seconds"].mean()), "-", 0.0],
        [f"adam ({steps} steps)", float(results["adam"]["seconds"].mean()), steps, float(np.median(angles))],
    ]
    graphs = int(results["exact"].attrs["n_graphs"])
    report(run, f"Table 6: seconds per image on {len(samples)} image(s), {graphs} graphs, device "
           f"{args.device or 'cpu'}", ["solver", "s / image", "steps", "median angle to exact (deg)"], rows)


if __name__ == "__main__":
    main()
