"""Bad inputs, table-driven: every case must fail with a clear error type and a message naming the
offending thing (API), or exit with a non-zero status and one clear line on stderr (CLI)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image

import interpret_spectral as isp
from interpret_spectral.store import StoreError
from interpret_spectral.synthetic import planted_store


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """The fixtures: a valid store, damaged and foreign files, images, folders."""
    root = tmp_path_factory.mktemp("fx")
    rng = np.random.default_rng(0)
    planted_store(n_samples=2, grids=((4, 4), (2, 2)), path=root / "valid.h5").close()
    data = (root / "valid.h5").read_bytes()
    (root / "truncated.h5").write_bytes(data[: int(len(data) * 0.6)])
    (root / "random.h5").write_bytes(rng.integers(0, 256, 50000, dtype=np.uint8).tobytes())
    (root / "zero.h5").write_bytes(b"")
    (root / "text.txt").write_text("hello\n")
    (root / "empty_dir").mkdir()
    (root / "dir_named.png").mkdir()
    with h5py.File(root / "foreign.h5", "w") as f:
        f["data"] = np.arange(10)
    edits = {
        "future.h5": lambda f: f.attrs.__setitem__("format_version", 99),
        "strversion.h5": lambda f: f.attrs.__setitem__("format_version", "one"),
        "noversion.h5": lambda f: f.attrs.__delitem__("format_version"),
        "noorder.h5": lambda f: f["blocks.0.attn"].attrs.__delitem__("order"),
        "hugegrid.h5": lambda f: (f["blocks.0.attn"].attrs.__setitem__("grid_h", 10**6),
                                  f["blocks.0.attn"].attrs.__setitem__("grid_w", 10**6)),
        "hugeheads.h5": lambda f: f["blocks.1.attn"].attrs.__setitem__("num_heads", 10**9),
        "hugescale.h5": lambda f: f["blocks.1.attn"].attrs.__setitem__("scale", 1e30),
        "negscale.h5": lambda f: f["blocks.1.attn"].attrs.__setitem__("scale", -1.0),
        "strgrid.h5": lambda f: f["blocks.0.attn"].attrs.__setitem__("grid_w", "four"),
        "hugesample.h5": lambda f: [d.resize(10**12, axis=0) for d in _per_sample(f)],
        "wrongformat.h5": lambda f: f.attrs.__setitem__("format", "something.else"),
    }
    for name, edit in edits.items():
        shutil.copy(root / "valid.h5", root / name)
        with h5py.File(root / name, "r+") as f:
            edit(f)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "valid.png")
    png = (root / "valid.png").read_bytes()
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "notimage.png").write_text("this is not an image\n")
    (root / "zero.png").write_bytes(b"")
    store = isp.open_store(root / "valid.h5")
    vectors = isp.decompose(store, n_components=3, progress=False)
    store.close()
    vectors.to_netcdf(root / "vectors.nc", engine="h5netcdf")
    return root


def _per_sample(f):
    found = []
    f.visititems(lambda n, o: found.append(o) if isinstance(o, h5py.Dataset) and o.maxshape and o.maxshape[0] is None else None)
    return found


@pytest.fixture(scope="module")
def model():
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             embed_dim=32, num_heads=2, num_classes=0).eval()


@pytest.fixture(scope="module")
def vectors(fx):
    return xr.open_dataset(fx / "vectors.nc", engine="h5netcdf").load()


X = torch.zeros(1, 3, 32, 32)
OPEN = (StoreError, FileNotFoundError, IsADirectoryError)
# (id, call (fx, model, vectors) -> anything, error types, regex the message must match)
API_CASES = [
    # -- open_store / validate_store / create_store ---------------------------------------
    ("S01 missing file", lambda fx, m, v: isp.open_store(fx / "nope.h5"), FileNotFoundError, r"nope\.h5"),
    ("S02 a directory", lambda fx, m, v: isp.open_store(fx / "empty_dir"), OPEN, r"empty_dir is a folder"),
    ("S03 zero-byte file", lambda fx, m, v: isp.open_store(fx / "zero.h5"), StoreError, r"zero\.h5 is empty"),
    ("S04 random bytes", lambda fx, m, v: isp.open_store(fx / "random.h5"), StoreError, r"random\.h5 is not an HDF5 file"),
    ("S05 truncated store", lambda fx, m, v: isp.open_store(fx / "truncated.h5"), StoreError, r"truncated\.h5 is truncated"),
    ("S06 foreign HDF5", lambda fx, m, v: isp.open_store(fx / "foreign.h5"), StoreError, r"foreign\.h5 is not an interpret_spectral store"),
    ("S07 future version", lambda fx, m, v: isp.open_store(fx / "future.h5"), StoreError, r"future\.h5 has format_version 99, newer"),
    ("S08 version 'one'", lambda fx, m, v: isp.open_store(fx / "strversion.h5"), StoreError, r"format_version 'one', not a whole number"),
    ("S09 no version", lambda fx, m, v: isp.open_store(fx / "noversion.h5"), StoreError, r"format_version"),
    ("S10 site without order", lambda fx, m, v: isp.open_store(fx / "noorder.h5"), StoreError, r"'blocks\.0\.attn' lacks site attributes \['order'\]"),
    ("S11 grid of 10^6", lambda fx, m, v: isp.open_store(fx / "hugegrid.h5"), StoreError, r"'blocks\.0\.attn': grid_h\*grid_w"),
    ("S12 10^9 heads", lambda fx, m, v: isp.open_store(fx / "hugeheads.h5"), StoreError, r"num_heads=1000000000 but 'q' holds 2 heads"),
    ("S13 scale 1e30", lambda fx, m, v: isp.open_store(fx / "hugescale.h5"), StoreError, r"scale=1e\+30"),
    ("S14 negative scale", lambda fx, m, v: isp.open_store(fx / "negscale.h5"), StoreError, r"scale=-1\.0"),
    ("S15 grid 'four'", lambda fx, m, v: isp.open_store(fx / "strgrid.h5"), StoreError, r"grid_w='four'"),
    ("S16 sample dim 10^12", lambda fx, m, v: isp.open_store(fx / "hugesample.h5"), StoreError, r"declares 1000000000000 rows"),
    ("S17 wrong format attr", lambda fx, m, v: isp.open_store(fx / "wrongformat.h5"), StoreError, r"format='something\.else'"),
    ("S18 a text file", lambda fx, m, v: isp.open_store(fx / "text.txt"), StoreError, r"text\.txt is not an HDF5 file"),
    ("S19 a vectors file", lambda fx, m, v: isp.open_store(fx / "vectors.nc"), StoreError, r"vectors\.nc is not an interpret_spectral store"),
    ("S20 path is a number", lambda fx, m, v: isp.open_store(42), TypeError, r"path or URL of a store, got int"),
    ("S21 validate empty tree", lambda fx, m, v: isp.validate_store(xr.DataTree()), StoreError, r"not an interpret_spectral store"),
    ("S22 validate a Dataset", lambda fx, m, v: isp.validate_store(xr.Dataset()), TypeError, r"got Dataset"),
    ("S23 create_store no sites", lambda fx, m, v: isp.create_store([]), ValueError, r"at least one attention site"),
    ("S24 create_store sites=str", lambda fx, m, v: isp.create_store("blocks.0"), TypeError, r"sequence of AttentionSite"),
    ("S25 create_store float64", lambda fx, m, v: isp.create_store(_one_site(), dtype="float64"), ValueError, r"dtype must be 'float32' or 'float16', got 'float64'"),
    ("S26 create_store capture str", lambda fx, m, v: isp.create_store(_one_site(), capture="qkv"), TypeError, r"the string 'qkv'"),
    ("S27 create_store capture x", lambda fx, m, v: isp.create_store(_one_site(), capture=("q", "x")), ValueError, r"\['x'\]"),
    ("S28 create_store compression", lambda fx, m, v: isp.create_store(_one_site(), compression="zstd"), ValueError, r"compression must be one of .* got 'zstd'"),
    ("S29 create_store level 12", lambda fx, m, v: isp.create_store(_one_site(), compression_level=12), ValueError, r"compression_level .* got 12"),
    ("S30 create_store existing", lambda fx, m, v: isp.create_store(_one_site(), path=fx / "valid.h5"), FileExistsError, r"valid\.h5 exists; pass resume=True"),
    ("S31 create_store dir path", lambda fx, m, v: isp.create_store(_one_site(), path=fx / "empty_dir"), IsADirectoryError, r"empty_dir is a folder"),
    ("S32 resume and overwrite", lambda fx, m, v: isp.create_store(_one_site(), path=fx / "x.h5", resume=True, overwrite=True), ValueError, r"resume=True and overwrite=True"),
    ("S33 samples_requested -1", lambda fx, m, v: isp.create_store(_one_site(), samples_requested=-1), ValueError, r"samples_requested .* got -1"),
    ("S34 resume other sites", lambda fx, m, v: _resume_other(fx), StoreError, r"cannot resume .*valid_copy\.h5"),
    ("S35 append wrong shape", lambda fx, m, v: _append(np.zeros((1, 1, 2, 1))), ValueError, r"site 'a' q: shape \(1, 1, 2, 1\) does not match"),
    ("S36 append empty id", lambda fx, m, v: _append(np.zeros((1, 1, 2, 2)), ids=[""]), ValueError, r"non-empty"),
    ("S37 append original size 0", lambda fx, m, v: _append(np.zeros((1, 1, 2, 2)), sizes=[(0, 5)]), ValueError, r"original_sizes\[0\]"),
    ("S38 patch_tokens var x", lambda fx, m, v: _patch(fx, "blocks.0.attn", "x"), KeyError, r"no variable 'x'"),
    ("S39 patch_tokens site", lambda fx, m, v: _patch(fx, "blocks.9.attn", "q"), KeyError, r"no site 'blocks\.9\.attn'"),
    ("S40 accessor site 7", lambda fx, m, v: planted_store(n_samples=1).spectral.site(7), IndexError, r"site 7 is out of range"),
    ("S41 require_complete", lambda fx, m, v: _incomplete(), StoreError, r"holds 0 of 3 samples; resume with probe"),
    # -- decompose / decompose_dataset / site_contributions on bad stores and arguments ----
    ("D01 decompose missing", lambda fx, m, v: isp.decompose(fx / "nope.h5", progress=False), FileNotFoundError, r"nope\.h5"),
    ("D02 decompose random", lambda fx, m, v: isp.decompose(fx / "random.h5", progress=False), StoreError, r"random\.h5"),
    ("D03 decompose huge grid", lambda fx, m, v: isp.decompose(fx / "hugegrid.h5", progress=False), StoreError, r"grid_h\*grid_w"),
    ("D04 decompose huge sample", lambda fx, m, v: isp.decompose(fx / "hugesample.h5", progress=False), StoreError, r"declares"),
    ("D05 decompose a list", lambda fx, m, v: isp.decompose([1, 2, 3], progress=False), TypeError, r"list"),
    ("D06 decompose n_components 0", lambda fx, m, v: isp.decompose(fx / "valid.h5", n_components=0, progress=False), ValueError, r"n_components"),
    ("D07 decompose n_components 2.5", lambda fx, m, v: isp.decompose(fx / "valid.h5", n_components=2.5, progress=False), (TypeError, ValueError), r"n_components"),
    ("D08 decompose graph xx", lambda fx, m, v: isp.decompose(fx / "valid.h5", graph="xx", progress=False), ValueError, r"'xx'"),
    ("D09 decompose grid 0", lambda fx, m, v: isp.decompose(fx / "valid.h5", grid=0, progress=False), ValueError, r"grid"),
    ("D10 decompose layers 99", lambda fx, m, v: isp.decompose(fx / "valid.h5", layers=99, progress=False), (ValueError, IndexError, KeyError), r"99"),
    ("D11 decompose_dataset huge heads", lambda fx, m, v: isp.decompose_dataset(fx / "hugeheads.h5", progress=False), StoreError, r"num_heads"),
    ("D12 decompose_dataset grid 0", lambda fx, m, v: isp.decompose_dataset(fx / "valid.h5", grid=0, progress=False), ValueError, r"grid"),
    ("D13 contributions huge heads", lambda fx, m, v: isp.site_contributions(fx / "hugeheads.h5", v), StoreError, r"num_heads"),
    ("D14 contributions not a decomposition", lambda fx, m, v: isp.site_contributions(fx / "valid.h5", xr.Dataset()), (ValueError, TypeError), r"decomposition"),
    # -- segment ------------------------------------------------------------------------------
    ("G01 segment k 0", lambda fx, m, v: isp.segment(v, k=0), ValueError, r"k"),
    ("G02 segment k -2", lambda fx, m, v: isp.segment(v, k=-2), ValueError, r"k"),
    ("G03 segment numpy", lambda fx, m, v: isp.segment(v["vectors"].values), TypeError, r"ndarray"),
    ("G04 segment no vectors", lambda fx, m, v: isp.segment(v[["values"]]), (ValueError, KeyError), r"vectors"),
    ("G05 segment a store", lambda fx, m, v: isp.segment(planted_store(n_samples=1)), (TypeError, ValueError), r"DataTree|store|decomposition"),
    ("G06 segment NaN", lambda fx, m, v: isp.segment(_nan(v)), ValueError, r"(?i)nan|finite"),
    ("G07 segment n_init 0", lambda fx, m, v: isp.segment(v, n_init=0), ValueError, r"n_init"),
    # -- probe --------------------------------------------------------------------------------
    ("P01 probe batch_size 0", lambda fx, m, v: isp.probe(m, X, batch_size=0, progress=False), ValueError, r"batch_size"),
    ("P02 probe dtype float64", lambda fx, m, v: isp.probe(m, X, store_dtype="float64", progress=False), ValueError, r"float64"),
    ("P03 probe capture x", lambda fx, m, v: isp.probe(m, X, capture=("q", "x"), progress=False), ValueError, r"'x'"),
    ("P04 probe resume without out", lambda fx, m, v: isp.probe(m, X, resume=True, progress=False), ValueError, r"resume=True needs out="),
    ("P05 probe out exists", lambda fx, m, v: isp.probe(m, X, out=fx / "valid.h5", progress=False), FileExistsError, r"valid\.h5 exists"),
    ("P06 probe out a folder", lambda fx, m, v: isp.probe(m, X, out=fx / "empty_dir", progress=False), IsADirectoryError, r"empty_dir"),
    ("P07 probe missing image", lambda fx, m, v: isp.probe(m, [fx / "nope.png"], progress=False), FileNotFoundError, r"nope\.png"),
    ("P08 probe truncated image", lambda fx, m, v: isp.probe(m, [fx / "truncated.png"], progress=False), (ValueError, OSError), r"truncated\.png"),
    ("P09 probe text as image", lambda fx, m, v: isp.probe(m, [fx / "notimage.png"], progress=False), (ValueError, OSError), r"notimage\.png"),
    ("P10 probe zero-byte image", lambda fx, m, v: isp.probe(m, [fx / "zero.png"], progress=False), (ValueError, OSError), r"zero\.png"),
    ("P11 probe folder named png", lambda fx, m, v: isp.probe(m, [fx / "valid.png", fx / "dir_named.png"], progress=False), (ValueError, IsADirectoryError), r"dir_named\.png"),
    ("P12 probe empty folder", lambda fx, m, v: isp.probe(m, fx / "empty_dir", progress=False), (ValueError, FileNotFoundError), r"empty_dir"),
    ("P13 probe inputs None", lambda fx, m, v: isp.probe(m, None, progress=False), (TypeError, ValueError), r"None|inputs"),
    ("P14 probe duplicate ids", lambda fx, m, v: isp.probe(m, torch.zeros(2, 3, 32, 32), sample_ids=["a", "a"], progress=False), ValueError, r"'a'"),
    ("P15 probe layers 99", lambda fx, m, v: isp.probe(m, X, layers=99, progress=False), (ValueError, IndexError), r"99"),
    ("P16 probe resume other model", lambda fx, m, v: isp.probe(m, X, out=_copy(fx, "valid.h5"), resume=True, progress=False), StoreError, r"cannot resume"),
    ("P17 probe 3-D tensor", lambda fx, m, v: isp.probe(m, torch.zeros(3, 32, 32), progress=False), (TypeError, ValueError), r"\(B, C, H, W\)"),
    ("P18 probe device nonsense", lambda fx, m, v: isp.probe(m, X, device="nonsense", progress=False), ValueError, r"device='nonsense'"),
]


def _one_site():
    from interpret_spectral.store.sites import AttentionSite

    return [AttentionSite("a", "a", 0, 1, 2, 1.0, (1, 2), ("patch", "patch"))]


def _append(q, ids=("s",), sizes=None):
    writer = isp.create_store(_one_site())
    writer.append(list(ids), {"a": {"q": q, "k": np.zeros((1, 1, 2, 2)), "v": np.zeros((1, 1, 2, 2))}},
                  original_sizes=sizes)


def _copy(fx, name):
    target = fx / f"{Path(name).stem}_copy.h5"
    shutil.copy(fx / name, target)
    return target


def _resume_other(fx):
    isp.create_store(_one_site(), path=_copy(fx, "valid.h5"), resume=True)


def _patch(fx, site, var):
    from interpret_spectral.store import patch_tokens

    store = isp.open_store(fx / "valid.h5")
    try:
        return patch_tokens(store, site, var)
    finally:
        store.close()


def _incomplete():
    from interpret_spectral.store import require_complete

    writer = isp.create_store(_one_site(), samples_requested=3)
    return require_complete(writer.close())


def _nan(v):
    out = v.copy(deep=True)
    out["vectors"][0, 0, 0, 0] = np.nan
    return out


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(case, fx, model, vectors):
    name, call, errors, pattern = case
    with pytest.raises(errors) as caught:
        call(fx, model, vectors)
    message = str(caught.value)
    assert re.search(pattern, message), f"{name}: {type(caught.value).__name__}: {message}"
    assert "Traceback" not in message


# (id, argv after the program name, regex the one stderr line must match)
CLI_CASES = [
    ("K01 decompose missing store", ["decompose", "{fx}/nope.h5", "--out", "{tmp}/v.nc"], r"nope\.h5"),
    ("K02 decompose random bytes", ["decompose", "{fx}/random.h5", "--out", "{tmp}/v.nc"], r"random\.h5 is not an HDF5 file"),
    ("K03 decompose truncated", ["decompose", "{fx}/truncated.h5", "--out", "{tmp}/v.nc"], r"truncated\.h5 is truncated"),
    ("K04 decompose foreign", ["decompose", "{fx}/foreign.h5", "--out", "{tmp}/v.nc"], r"foreign\.h5 is not an interpret_spectral store"),
    ("K05 decompose future", ["decompose", "{fx}/future.h5", "--out", "{tmp}/v.nc"], r"future\.h5 has format_version 99"),
    ("K06 decompose version 'one'", ["decompose", "{fx}/strversion.h5", "--out", "{tmp}/v.nc"], r"format_version 'one'"),
    ("K07 decompose a folder", ["decompose", "{fx}/empty_dir", "--out", "{tmp}/v.nc"], r"empty_dir is a folder"),
    ("K08 decompose zero-byte", ["decompose", "{fx}/zero.h5", "--out", "{tmp}/v.nc"], r"zero\.h5 is empty"),
    ("K09 decompose grid 10^6 attr", ["decompose", "{fx}/hugegrid.h5", "--out", "{tmp}/v.nc"], r"grid_h\*grid_w"),
    ("K10 decompose 10^9 heads", ["decompose", "{fx}/hugeheads.h5", "--out", "{tmp}/v.nc"], r"num_heads=1000000000"),
    ("K11 decompose sample 10^12", ["decompose", "{fx}/hugesample.h5", "--out", "{tmp}/v.nc"], r"declares 1000000000000 rows"),
    ("K12 decompose --n-components 0", ["decompose", "{fx}/valid.h5", "--out", "{tmp}/v.nc", "--n-components", "0"], r"--n-components"),
    ("K13 decompose --out existing", ["decompose", "{fx}/valid.h5", "--out", "{fx}/vectors.nc"], r"vectors\.nc"),
    ("K14 segment a store", ["segment", "{fx}/valid.h5", "--out", "{tmp}/l.nc"], r"valid\.h5"),
    ("K15 segment missing file", ["segment", "{fx}/nope.nc", "--out", "{tmp}/l.nc"], r"nope\.nc"),
    ("K16 segment --k 0", ["segment", "{fx}/vectors.nc", "--out", "{tmp}/l.nc", "--k", "0"], r"--k"),
    ("K17 analyze unknown option", ["analyze", "{fx}/valid.png", "--bogus"], r"--bogus"),
    ("K18 probe --batch-size 0", ["probe", "{fx}/valid.png", "--out", "{tmp}/s.h5", "--batch-size", "0"], r"--batch-size"),
    ("K19 probe --dtype float64", ["probe", "{fx}/valid.png", "--out", "{tmp}/s.h5", "--dtype", "float64"], r"float64"),
    ("K20 probe --out existing", ["probe", "{fx}/valid.png", "--out", "{fx}/valid.h5"], r"valid\.h5"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(case, fx, tmp_path, capsys):
    from interpret_spectral.cli import main

    name, argv, pattern = case
    argv = [a.format(fx=fx, tmp=tmp_path) for a in argv] + ["-q"]
    before = (fx / "vectors.nc").read_bytes()
    status = main(argv)
    err = capsys.readouterr().err.strip()
    # 2: the command line itself is wrong; 1: an input it names is (the CLI's documented codes).
    assert status in (1, 2), f"{name}: exit {status}: {err}"
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, f"{name}: {err}"
    assert re.search(pattern, lines[0]), f"{name}: {lines[0]}"
    assert (fx / "vectors.nc").read_bytes() == before  # nothing existing was touched


def test_the_table_is_large_enough():
    assert len(API_CASES) + len(CLI_CASES) >= 60
