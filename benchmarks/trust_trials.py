"""Trust trials: bad inputs, corrupted stores, SIGKILLs during --overwrite, absurd attributes.

Re-runs, against the current checkout, the kinds of trials that judge whether the
package loses nothing and says nothing false (see docs on store integrity). Every case
runs in its own child process (forked from this one for the Python API, a fresh
``interpret-spectral`` process for the command line) in its own scratch folder, with a
timeout; the outcome is classed as one of:

- ``clear error``: the package refused with a message naming the problem;
- ``handled``: it ran, and the result checks out;
- ``unclear error``: it refused, but the message does not say what is wrong;
- ``silent wrong``: it ran and the result is wrong (or it accepted what it must refuse);
- ``hang``: past the timeout;
- ``data lost``: a file that existed before the case was damaged or removed;
- ``raw exception``: an exception raised inside a library or by accident in the
  package's own code (not a deliberate ``raise``), or a crash of the interpreter.

Prints markdown tables.  ``--quick`` runs a subset in under three minutes.

Usage::

    .venv/bin/python benchmarks/trust_trials.py            # the full trials
    .venv/bin/python benchmarks/trust_trials.py --quick    # a subset
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the children are forked: no thread pools before fork
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import collections
import hashlib
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
import xarray as xr
from PIL import Image

import interpret_spectral as isp
from interpret_spectral.store import StoreError, StoreIntegrityError, verify_store

torch.set_num_threads(1)
PACKAGE = Path(isp.__file__).resolve().parent
import interpret_spectral.adapters as _adapters  # noqa: E402  (installed as interpret_spectral.adapters)

ROOTS = (str(PACKAGE), str(Path(_adapters.__file__).resolve().parent))  # the package's own code
CLI = [sys.executable, "-m", "interpret_spectral.cli"]
OUTCOMES = ("clear error", "handled", "unclear error", "silent wrong", "hang", "data lost", "raw exception")
TIMEOUT = 300.0


# ---------------------------------------------------------------------------------------- children
def _digest(path: Path) -> str | None:
    """SHA-256 of a file or of a folder's files (names and bytes); None when absent."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _classify_exception(error: BaseException) -> dict:
    """Deliberate (a ``raise`` line of the package) or raw (raised in a library / by accident)."""
    frames = traceback.extract_tb(error.__traceback__)
    inner = frames[-1] if frames else None
    ours = lambda filename: any(filename.startswith(root) for root in ROOTS)  # noqa: E731
    in_package = [f for f in frames if ours(f.filename)]
    deliberate = bool(inner and ours(inner.filename) and re.match(r"\s*raise\b", inner.line or ""))
    return {
        "type": type(error).__name__,
        "message": str(error)[:600],
        "deliberate": deliberate,
        "through_package": bool(in_package),
        "where": f"{Path(inner.filename).name}:{inner.lineno}" if inner else "",
        "harness": bool(inner and inner.filename == "<case>"),
    }


def _child_run(code: str, check: str | None, env: dict, result_path: Path) -> None:
    """In the forked child: run the case, then its check; write what happened as JSON."""
    record: dict = {}
    scope = dict(env)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exec(compile(code, "<case>", "exec"), scope)
        scope["W"] = [str(w.message) for w in caught]
        record["warnings"] = [m[:200] for m in scope["W"]]
        if check is not None:
            exec(compile(check, "<check>", "exec"), scope)
            record["ok"] = bool(scope.get("ok"))
            record["note"] = str(scope.get("note", ""))[:300]
        record["returned"] = True
    except BaseException as error:  # noqa: BLE001 - the child reports everything
        record["error"] = _classify_exception(error)
    result_path.write_text(json.dumps(record, default=str))


def run_forked(code: str, check: str | None, env: dict, cwd: Path, timeout: float) -> dict:
    """Fork, run ``code`` in ``cwd``; wait with a timeout; the child's peak RSS and wall time."""
    cwd.mkdir(parents=True, exist_ok=True)
    result_path = cwd / "_result.json"
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.chdir(cwd)
            out = os.open(cwd / "_output.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(out, 2)
            _child_run(code, check, env, result_path)
        finally:
            os._exit(0)
    return _wait(pid, started, timeout) | _read_result(result_path)


def run_exec(argv: list[str], cwd: Path, timeout: float) -> dict:
    """Run a command line in ``cwd`` with a timeout; its exit status, stderr and peak RSS."""
    cwd.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(cwd / "_stdout.txt", "wb") as so, open(cwd / "_stderr.txt", "wb") as se:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=so, stderr=se, env=_cli_env())
        outcome = _wait(proc.pid, started, timeout)
        proc.returncode = outcome.get("status", -9)
    outcome["stderr"] = (cwd / "_stderr.txt").read_text(errors="replace")
    return outcome


def _cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _wait(pid: int, started: float, timeout: float) -> dict:
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() - started > timeout:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            return {"hang": True, "seconds": time.perf_counter() - started, "rss_mb": usage.ru_maxrss / 1024}
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    out = {"seconds": seconds, "rss_mb": usage.ru_maxrss / 1024}
    if os.WIFSIGNALED(status):
        out["signal"] = os.WTERMSIG(status)
    else:
        out["status"] = os.WEXITSTATUS(status)
    return out


def _read_result(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"crashed": True}


# ---------------------------------------------------------------------------------------- fixtures
def tiny_vit(depth: int = 2):
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=depth,
                             embed_dim=32, num_heads=2, num_classes=0).eval()


def _image(path: Path, array: np.ndarray, mode: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    img.save(path, **kw)
    return path


def _edit(src: Path, dst: Path, edit) -> None:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)


def _per_sample(f: h5py.File) -> list:
    found: list = []
    f.visititems(lambda n, o: found.append(o) if isinstance(o, h5py.Dataset) and o.maxshape and o.maxshape[0] is None else None)
    return found


def make_fixtures(fx: Path, quick: bool) -> None:
    """Images, stores (valid, damaged, foreign, absurd), vectors, segmentation folders, CLI weights."""
    rng = np.random.default_rng(0)
    fx.mkdir(parents=True)
    rand = lambda h, w, c=3: rng.integers(0, 256, (h, w, c) if c else (h, w), dtype=np.uint8)  # noqa: E731
    _image(fx / "valid.png", rand(40, 48))
    _image(fx / "gray.png", rand(40, 48, 0))
    _image(fx / "rgba.png", rng.integers(0, 256, (40, 48, 4), dtype=np.uint8))
    Image.fromarray(np.linspace(0, 65535, 48)[None, :].repeat(40, 0).astype(np.uint16)).save(fx / "gray16.png")
    _image(fx / "one.png", np.full((1, 1, 3), 128, np.uint8))
    _image(fx / "tiny4.png", rand(4, 4))
    _image(fx / "palette.png", rand(40, 48), mode="P")
    _image(fx / "cmyk.jpg", rand(40, 48), mode="CMYK")
    if not quick:
        huge = np.zeros((6000, 6000, 3), np.uint8)
        huge[..., 0] = (np.arange(6000) % 256)[None, :]
        _image(fx / "huge.png", huge)
        del huge
    png = (fx / "valid.png").read_bytes()
    (fx / "truncated.png").write_bytes(png[: len(png) // 2])
    (fx / "notimage.png").write_text("this is not an image\n")
    (fx / "zero.png").write_bytes(b"")
    (fx / "text.txt").write_text("hello\n")
    for d in ("dir_named.png", "empty_dir", "only_text", "vdir"):
        (fx / d).mkdir()
    (fx / "only_text" / "a.txt").write_text("x")
    uni = fx / "dossier avec espaces é 漢字"
    uni.mkdir()
    shutil.copy(fx / "valid.png", uni / "image é 1.png")
    shutil.copy(fx / "gray.png", uni / "画像 2.png")
    for name in ("truncated.png", "notimage.png", "zero.png", "gray16.png", "one.png"):
        d = fx / ("dir_" + name.split(".")[0])
        d.mkdir()
        shutil.copy(fx / name, d / name)
    imgs = [_image(fx / "imgs4" / f"img{i}.png", rand(40, 48)) for i in range(4)]
    for i in range(5):
        _image(fx / "imgs5" / f"new{i}.png", rand(40, 48))
    # stores
    model = tiny_vit()
    isp.probe(model, imgs, out=fx / "valid.h5", progress=False, batch_size=2).close()
    valid = fx / "valid.h5"
    data = valid.read_bytes()
    (fx / "truncated.h5").write_bytes(data[: int(len(data) * 0.6)])
    (fx / "random.h5").write_bytes(rng.integers(0, 256, 50000, dtype=np.uint8).tobytes())
    (fx / "zero.h5").write_bytes(b"")
    with h5py.File(fx / "foreign.h5", "w") as f:
        f["data"] = np.arange(10)
        f.attrs["hello"] = "world"
    site0, site1 = "blocks.0.attn", "blocks.1.attn"
    edits = {
        "future.h5": lambda f: f.attrs.__setitem__("format_version", 99),
        "strversion.h5": lambda f: f.attrs.__setitem__("format_version", "one"),
        "noorder.h5": lambda f: f[site0].attrs.__delitem__("order"),
        "hugegrid.h5": lambda f: (f[site0].attrs.__setitem__("grid_h", 10**6), f[site0].attrs.__setitem__("grid_w", 10**6)),
        "hugeheads.h5": lambda f: f[site1].attrs.__setitem__("num_heads", 10**9),
        "heads5m.h5": lambda f: f[site1].attrs.__setitem__("num_heads", 5 * 10**6),
        "hugescale.h5": lambda f: f[site1].attrs.__setitem__("scale", 1e30),
        "hugesample.h5": lambda f: [d.resize(10**12, axis=0) for d in _per_sample(f)],
        "incomplete.h5": lambda f: f.attrs.__setitem__("samples_requested", 6),
    }
    for name, edit in edits.items():
        _edit(valid, fx / name, edit)
    nan_model = tiny_vit()
    with torch.no_grad():
        nan_model.blocks[0].attn.qkv.weight[0, 0] = float("nan")
    isp.probe(nan_model, imgs, out=fx / "nan.h5", progress=False, allow_nonfinite=True).close()
    from interpret_spectral.capture.registry import resolve_adapter

    sites = resolve_adapter(model).sites(torch.zeros(1, 3, 32, 32))
    isp.create_store(sites, path=fx / "empty.h5").close()
    store = isp.open_store(valid)
    vec = isp.decompose(store, n_components=4, progress=False)
    store.close()
    vec.to_netcdf(fx / "vectors.nc", engine="h5netcdf")
    (fx / "vectors_trunc.nc").write_bytes((fx / "vectors.nc").read_bytes()[:9000])
    # segmentation folders
    def segfolder(name, mask, classes="a\nb\nc\n", n=2):
        root = fx / name
        for i in range(n):
            _image(root / "images" / f"s{i}.png", rand(40, 48))
            m = mask(i)
            if m is not None:
                (root / "masks").mkdir(parents=True, exist_ok=True)
                m.save(root / "masks" / f"s{i}.png")
        (root / "classes.txt").write_text(classes)
    gradient = (np.arange(48)[None, :].repeat(40, 0) // 16).astype(np.uint8)
    segfolder("seg_ok", lambda i: Image.fromarray(gradient, mode="L"))
    segfolder("seg_wrongsize", lambda i: Image.fromarray(np.zeros((10, 10), np.uint8), mode="L"))
    segfolder("seg_badvalues", lambda i: Image.fromarray(np.full((40, 48), 77, np.uint8), mode="L"))
    segfolder("seg_rgbmask", lambda i: Image.fromarray(np.zeros((40, 48, 3), np.uint8)))
    segfolder("seg_emptyclasses", lambda i: Image.fromarray(np.zeros((40, 48), np.uint8), mode="L"), classes="\n\n")
    segfolder("seg_nomask", lambda i: None)
    segfolder("seg_allignore", lambda i: Image.fromarray(np.full((40, 48), 255, np.uint8), mode="L"))
    segfolder("seg_16bit", lambda i: Image.fromarray(np.zeros((40, 48), np.uint16)))
    # the CLI's model: timm's vit_tiny_patch16_224 with random weights in a local file
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cli_model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    save_file({k: v.contiguous() for k, v in cli_model.state_dict().items()}, str(fx / "tiny.safetensors"))


# ---------------------------------------------------------------------------------------- cases
# API: (id, area, what, code run with cwd = a fresh folder, regex a refusal must match (None: must not
# refuse), check run after a return that sets ``ok`` (None: returning is wrong), {copy: fixture} made
# before the case and checked after it: a refusal must leave them as they were).
_PROBE = "progress=False"
_FINITE = "ok = bool(np.isfinite(res['vectors'].values).all())"
API_CASES = [
    # -- probe: inputs --------------------------------------------------------------------------
    ("P01", "probe", "empty folder", f"res = probe(M, FX+'/empty_dir', {_PROBE})", r"empty_dir", None, {}),
    ("P02", "probe", "folder with only a .txt file", f"res = probe(M, FX+'/only_text', {_PROBE})", r"only_text", None, {}),
    ("P03", "probe", "text file named .png", f"res = probe(M, [FX+'/notimage.png'], {_PROBE})", r"notimage\.png", None, {}),
    ("P04", "probe", "truncated PNG", f"res = probe(M, [FX+'/truncated.png'], {_PROBE})", r"truncated\.png", None, {}),
    ("P05", "probe", "zero-byte .png", f"res = probe(M, [FX+'/zero.png'], {_PROBE})", r"zero\.png", None, {}),
    ("P06", "probe", "missing file", f"res = probe(M, [FX+'/nope.png'], {_PROBE})", r"nope\.png", None, {}),
    ("P07", "probe", "grayscale PNG is grey in RGB", f"res = probe(M, [FX+'/gray.png'], {_PROBE}); p = res['pixels'].values",
     None, "ok = bool((p[..., 0] == p[..., 1]).all() and (p[..., 1] == p[..., 2]).all())", {}),
    ("P08", "probe", "RGBA PNG", f"res = probe(M, [FX+'/rgba.png'], {_PROBE})", None, "ok = res.sizes['sample'] == 1", {}),
    ("P09", "probe", "16-bit gradient is rescaled, not clipped", f"res = probe(M, [FX+'/gray16.png'], {_PROBE}); p = res['pixels'].values[0, :, :, 0].astype(int)",
     None, "ok = (p == 255).mean() < 0.2 and p[0, -1] > p[0, 0]; note = p[0].tolist()", {}),
    ("P10", "probe", "1x1 image", f"res = probe(M, [FX+'/one.png'], {_PROBE})", r"one\.png", "ok = bool(np.isfinite(res['blocks.0.attn']['q'].values).all())", {}),
    ("P11", "probe", "4x4 image (smaller than a patch)", f"res = probe(M, [FX+'/tiny4.png'], {_PROBE})", r"tiny4\.png", "ok = bool(np.isfinite(res['blocks.0.attn']['q'].values).all())", {}),
    ("P12", "probe", "palette PNG and CMYK JPEG", f"res = probe(M, [FX+'/palette.png', FX+'/cmyk.jpg'], {_PROBE})", None, "ok = res.sizes['sample'] == 2", {}),
    ("P13", "probe", "a folder named x.png among the inputs", f"res = probe(M, [FX+'/valid.png', FX+'/dir_named.png'], {_PROBE})", r"dir_named\.png", None, {}),
    ("P14", "probe", "inputs and out with spaces and unicode",
     f"import glob; res = probe(M, sorted(glob.glob(FX+'/dossier avec espaces é 漢字/*')), out='sortie é/store é 漢字.h5', {_PROBE}); res.close(); t = isp.open_store('sortie é/store é 漢字.h5')",
     None, "ok = t.sizes['sample'] == 2 and t.attrs['complete'] == 1", {}),
    ("P15", "probe", "3-D tensor (no batch axis)", f"res = probe(M, torch.zeros(3, 32, 32), {_PROBE})", r"\(B, C, H, W\)|batch", None, {}),
    ("P16", "probe", "empty list", f"res = probe(M, [], {_PROBE})", r"(?i)no (input|image)|empty|inputs", None, {}),
    ("P17", "probe", "inputs=None", f"res = probe(M, None, {_PROBE})", r"None|inputs", None, {}),
    ("P18", "probe", "4-D tensor with 1 channel", f"res = probe(M, torch.zeros(2, 1, 32, 32), {_PROBE})", r"(?i)channel|\b1\b", None, {}),
    ("P19", "probe", "tensor holding NaN", f"x = torch.zeros(1, 3, 32, 32); x[0, 0, 0, 0] = float('nan'); res = probe(M, x, {_PROBE})", r"(?i)nan|finite", None, {}),
    ("P20", "probe", "tensor of 0..255 values", f"res = probe(M, torch.full((1, 3, 32, 32), 200.0), {_PROBE})", r"(?i)range|scale|255", "ok = any(re.search(r'(?i)range|scale|255', w) for w in W)", {}),
    # -- probe: model and options ------------------------------------------------------------
    ("P21", "probe", "model without attention", f"res = probe(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)), torch.zeros(1, 3, 32, 32), {_PROBE})", r"(?i)attention|adapter|Sequential", None, {}),
    ("P22", "probe", "model producing NaN", f"m = tiny_vit(); m.blocks[0].attn.qkv.weight.data[0, 0] = float('nan'); res = probe(m, torch.zeros(1, 3, 32, 32), {_PROBE})", r"(?i)(nan|non-?finite).*blocks\.0|blocks\.0.*(nan|non-?finite)", None, {}),
    ("P23", "probe", "NaN model, allow_nonfinite=True records it", f"m = tiny_vit(); m.blocks[0].attn.qkv.weight.data[0, 0] = float('nan'); res = probe(m, torch.zeros(1, 3, 32, 32), allow_nonfinite=True, {_PROBE})",
     None, "ok = bool(np.isnan(res['blocks.0.attn']['q'].values).any())", {}),
    ("P24", "probe", "batch_size=0", f"res = probe(M, torch.zeros(1, 3, 32, 32), batch_size=0, {_PROBE})", r"batch_size", None, {}),
    ("P25", "probe", "batch_size=-3", f"res = probe(M, torch.zeros(1, 3, 32, 32), batch_size=-3, {_PROBE})", r"batch_size", None, {}),
    ("P26", "probe", "layers=99 (2 sites)", f"res = probe(M, torch.zeros(1, 3, 32, 32), layers=99, {_PROBE})", r"99", None, {}),
    ("P27", "probe", "layers='nomatch*'", f"res = probe(M, torch.zeros(1, 3, 32, 32), layers='nomatch*', {_PROBE})", r"nomatch", None, {}),
    ("P28", "probe", "capture=('q', 'x')", f"res = probe(M, torch.zeros(1, 3, 32, 32), capture=('q', 'x'), {_PROBE})", r"'x'", None, {}),
    ("P29", "probe", "store_dtype='float64'", f"res = probe(M, torch.zeros(1, 3, 32, 32), store_dtype='float64', {_PROBE})", r"float64", None, {}),
    ("P30", "probe", "duplicate sample_ids", f"res = probe(M, torch.zeros(2, 3, 32, 32), sample_ids=['a', 'a'], {_PROBE})", r"'a'", None, {}),
    ("P31", "probe", "image_size=7 (not a multiple of 8)", f"res = probe(M, [FX+'/valid.png'], image_size=7, {_PROBE})", r"\b7\b", None, {}),
    ("P32", "probe", "resume=True without out", f"res = probe(M, torch.zeros(1, 3, 32, 32), resume=True, {_PROBE})", r"resume", None, {}),
    ("P33", "probe", "device='nonsense'", f"res = probe(M, torch.zeros(1, 3, 32, 32), device='nonsense', {_PROBE})", r"nonsense", None, {}),
    ("P34", "probe", "unknown adapter option", f"res = probe(M, torch.zeros(1, 3, 32, 32), bogus_option=3, {_PROBE})", r"bogus_option", None, {}),
    # -- probe: existing outputs -------------------------------------------------------------
    ("P35", "probe", "out= an existing store", f"res = probe(M, [FX+'/valid.png'], out='x.h5', {_PROBE})", r"x\.h5", None, {"x.h5": "valid.h5"}),
    ("P36", "probe", "overwrite=True, new run fails (truncated PNG)", f"res = probe(M, [FX+'/valid.png', FX+'/truncated.png'], out='x.h5', overwrite=True, batch_size=1, {_PROBE})", r"truncated\.png", None, {"x.h5": "valid.h5"}),
    ("P37", "probe", "resume=True on a store of another model", f"res = probe(tiny_vit(depth=3), [FX+'/valid.png'], out='x.h5', resume=True, {_PROBE})", r"cannot resume|x\.h5", None, {"x.h5": "valid.h5"}),
    ("P38", "probe", "resume and overwrite together", f"res = probe(M, [FX+'/valid.png'], out='x.h5', resume=True, overwrite=True, {_PROBE})", r"resume.*overwrite|overwrite.*resume", None, {"x.h5": "valid.h5"}),
    ("P39", "probe", "out= a folder", f"res = probe(M, [FX+'/valid.png'], out=FX+'/empty_dir', {_PROBE})", r"empty_dir", None, {}),
    ("P40", "probe", "overwrite=True succeeds: the new store replaces the old", f"res = probe(M, [FX+'/valid.png'], out='x.h5', overwrite=True, {_PROBE}); res.close(); t = isp.open_store('x.h5')",
     None, "import glob; ok = t.sizes['sample'] == 1 and not glob.glob('x.h5.partial*')", {}),
    # -- stores ------------------------------------------------------------------------------
    ("S01", "store", "foreign HDF5 file", "res = isp.open_store(FX+'/foreign.h5')", r"foreign\.h5 is not an interpret_spectral store", None, {}),
    ("S02", "store", "truncated store (60%)", "res = isp.open_store(FX+'/truncated.h5')", r"truncated\.h5.*truncated", None, {}),
    ("S03", "store", "format_version 99", "res = isp.open_store(FX+'/future.h5')", r"future\.h5.*format_version 99", None, {}),
    ("S04", "store", "random bytes named .h5", "res = isp.open_store(FX+'/random.h5')", r"random\.h5 is not an HDF5 file", None, {}),
    ("S05", "store", "zero-byte .h5", "res = isp.open_store(FX+'/zero.h5')", r"zero\.h5 is empty", None, {}),
    ("S06", "store", "path does not exist", "res = isp.open_store(FX+'/nope.h5')", r"nope\.h5", None, {}),
    ("S07", "store", "a folder", "res = isp.open_store(FX+'/empty_dir')", r"empty_dir", None, {}),
    ("S08", "store", "a vectors .nc file", "res = isp.open_store(FX+'/vectors.nc')", r"vectors\.nc is not an interpret_spectral store", None, {}),
    ("S09", "store", "format_version='one'", "res = isp.open_store(FX+'/strversion.h5')", r"format_version 'one'", None, {}),
    ("S10", "store", "site without 'order'", "res = isp.open_store(FX+'/noorder.h5')", r"blocks\.0\.attn.*order", None, {}),
    ("S11", "store", "grid 10^6 x 10^6 attribute", "res = isp.open_store(FX+'/hugegrid.h5')", r"blocks\.0\.attn.*grid", None, {}),
    ("S12", "store", "num_heads 10^9 attribute", "res = isp.open_store(FX+'/hugeheads.h5')", r"num_heads=1000000000", None, {}),
    ("S13", "store", "num_heads 5*10^6 attribute", "res = isp.open_store(FX+'/heads5m.h5')", r"num_heads=5000000", None, {}),
    ("S14", "store", "sample dimension 10^12", "res = isp.open_store(FX+'/hugesample.h5')", r"1000000000000", None, {}),
    ("S15", "store", "scale 1e30 attribute", "res = isp.open_store(FX+'/hugescale.h5')", r"scale=1e\+30", None, {}),
    ("S16", "store", "a store cut short says so", "res = isp.open_store(FX+'/incomplete.h5')", None, "ok = int(res.attrs['complete']) == 0 and int(res.attrs['samples_written']) == 4", {}),
    ("S17", "store", "require_complete on a store cut short", "from interpret_spectral.store import require_complete; res = require_complete(isp.open_store(FX+'/incomplete.h5'))", r"4 of 6", None, {}),
    ("S18", "store", "verify_store on a valid store", "res = verify_store(FX+'/valid.h5')", None, "ok = res == 4", {}),
    ("S19", "store", "patch_tokens var='x'", "from interpret_spectral.store import patch_tokens; res = patch_tokens(isp.open_store(FX+'/valid.h5'), 'blocks.0.attn', 'x')", r"'x'", None, {}),
    ("S20", "store", "create_store with no sites", "res = isp.create_store([])", r"(?i)site", None, {}),
    ("S21", "store", "validate_store on an empty DataTree", "res = isp.validate_store(xr.DataTree())", r"not an interpret_spectral store", None, {}),
    ("S22", "store", "a store with zero samples opens", "res = isp.open_store(FX+'/empty.h5')", None, "ok = res.sizes.get('sample', 0) == 0", {}),
    # -- decompose ---------------------------------------------------------------------------
    ("D01", "decompose", "n_components=50 > 16 tokens", "res = decompose(FX+'/valid.h5', n_components=50, progress=False)", r"n_components|50", None, {}),
    ("D02", "decompose", "n_components=16 == tokens", "res = decompose(FX+'/valid.h5', n_components=16, progress=False)", r"n_components", _FINITE, {}),
    ("D03", "decompose", "n_components=0", "res = decompose(FX+'/valid.h5', n_components=0, progress=False)", r"n_components", None, {}),
    ("D04", "decompose", "n_components=-1", "res = decompose(FX+'/valid.h5', n_components=-1, progress=False)", r"n_components", None, {}),
    ("D05", "decompose", "n_components=2.5", "res = decompose(FX+'/valid.h5', n_components=2.5, progress=False)", r"n_components", None, {}),
    ("D06", "decompose", "graph='xx'", "res = decompose(FX+'/valid.h5', graph='xx', progress=False)", r"'xx'", None, {}),
    ("D07", "decompose", "layers=[]", "res = decompose(FX+'/valid.h5', layers=[], progress=False)", r"layers|site", None, {}),
    ("D08", "decompose", "grid=0", "res = decompose(FX+'/valid.h5', grid=0, progress=False)", r"grid", None, {}),
    ("D09", "decompose", "grid=1000 on 4x4 sites", "res = decompose(FX+'/valid.h5', grid=1000, n_components=2, progress=False)", r"grid", None, {}),
    ("D10", "decompose", "grid=10^6", "res = decompose(FX+'/valid.h5', grid=10**6, n_components=2, progress=False)", r"grid", None, {}),
    ("D11", "decompose", "NaN store, exact", "res = decompose(FX+'/nan.h5', n_components=4, progress=False)", r"(?i)(nan|finite).*blocks\.0|blocks\.0.*(nan|finite)", None, {}),
    ("D12", "decompose", "NaN store, adam", "res = decompose(FX+'/nan.h5', n_components=4, solver='adam', steps=20, progress=False)", r"(?i)(nan|finite).*blocks\.0|blocks\.0.*(nan|finite)", None, {}),
    ("D13", "decompose", "adam steps=0", "res = decompose(FX+'/valid.h5', n_components=4, solver='adam', steps=0, progress=False)", r"steps", None, {}),
    ("D14", "decompose", "adam lr=-1", "res = decompose(FX+'/valid.h5', n_components=4, solver='adam', steps=5, lr=-1.0, progress=False)", r"\blr\b", None, {}),
    ("D15", "decompose", "samples='missing'", "res = decompose(FX+'/valid.h5', samples='missing', progress=False)", r"missing", None, {}),
    ("D16", "decompose", "store with zero samples", "res = decompose(FX+'/empty.h5', progress=False)", r"(?i)no samples|0 samples|holds 0|empty", None, {}),
    ("D17", "decompose", "unknown solver option", "res = decompose(FX+'/valid.h5', solver='adam', stesp=5, progress=False)", r"stesp", None, {}),
    ("D18", "decompose", "solver='nope'", "res = decompose(FX+'/valid.h5', solver='nope', progress=False)", r"nope", None, {}),
    ("D19", "decompose", "not a store: a list", "res = decompose([1, 2, 3], progress=False)", r"list", None, {}),
    ("D20", "decompose", "store cut short (4 of 6 samples)", "res = decompose(FX+'/incomplete.h5', n_components=3, progress=False)", r"4 of 6", None, {}),
    ("D21", "decompose", "num_heads 10^9 attribute", "res = decompose(FX+'/hugeheads.h5', progress=False)", r"num_heads", None, {}),
    ("D22", "decompose", "scale 1e30 attribute", "res = decompose(FX+'/hugescale.h5', progress=False)", r"scale", None, {}),
    ("D23", "decompose", "site_contributions on a num_heads 10^9 store", "res = isp.site_contributions(FX+'/hugeheads.h5', VEC)", r"num_heads", None, {}),
    ("D24", "decompose", "site_contributions with a Dataset that is no decomposition", "res = isp.site_contributions(FX+'/valid.h5', xr.Dataset())", r"(?i)decomposition|vectors", None, {}),
    # -- decompose_dataset -------------------------------------------------------------------
    ("DD01", "decompose_dataset", "n_components=100 > 64 tokens, exact", "res = isp.decompose_dataset(FX+'/valid.h5', n_components=100, solver='exact', grid=4, progress=False)", r"n_components|100", None, {}),
    ("DD02", "decompose_dataset", "intra=0 and inter=0", "res = isp.decompose_dataset(FX+'/valid.h5', intra=0, inter=0, grid=4, progress=False)", r"intra|inter", None, {}),
    ("DD03", "decompose_dataset", "epochs=0", "res = isp.decompose_dataset(FX+'/valid.h5', epochs=0, grid=4, n_components=4, progress=False)", r"epochs", None, {}),
    ("DD04", "decompose_dataset", "grid=0", "res = isp.decompose_dataset(FX+'/valid.h5', grid=0, progress=False)", r"grid", None, {}),
    ("DD05", "decompose_dataset", "NaN store", "res = isp.decompose_dataset(FX+'/nan.h5', grid=4, n_components=4, solver='exact', progress=False)", r"(?i)nan|finite", None, {}),
    ("DD06", "decompose_dataset", "checkpoint is random bytes", "open('ck.npz', 'wb').write(b'garbage' * 10); res = isp.decompose_dataset(FX+'/valid.h5', grid=4, n_components=4, epochs=1, checkpoint='ck.npz', progress=False)", r"ck\.npz", None, {}),
    ("DD07", "decompose_dataset", "threshold=2", "res = isp.decompose_dataset(FX+'/valid.h5', grid=4, threshold=2.0, progress=False)", r"threshold", None, {}),
    ("DD08", "decompose_dataset", "grid=10^5", "res = isp.decompose_dataset(FX+'/valid.h5', grid=10**5, n_components=4, progress=False)", r"grid", None, {}),
    ("DD09", "decompose_dataset", "store cut short", "res = isp.decompose_dataset(FX+'/incomplete.h5', grid=4, n_components=4, solver='exact', progress=False)", r"4 of 6", None, {}),
    # -- segment -----------------------------------------------------------------------------
    ("G01", "segment", "k=1000 > 16 tokens", "res = isp.segment(VEC, k=1000)", r"\bk\b|1000", None, {}),
    ("G02", "segment", "k=0", "res = isp.segment(VEC, k=0)", r"\bk\b", None, {}),
    ("G03", "segment", "k=-2", "res = isp.segment(VEC, k=-2)", r"\bk\b", None, {}),
    ("G04", "segment", "vectors with NaN", "v = VEC.copy(deep=True); v['vectors'][0, 0, 0, 0] = np.nan; res = isp.segment(v)", r"(?i)nan|finite", None, {}),
    ("G05", "segment", "Dataset without 'vectors'", "res = isp.segment(VEC[['values']])", r"vectors", None, {}),
    ("G06", "segment", "components=0", "res = isp.segment(VEC, components=0)", r"components", None, {}),
    ("G07", "segment", "k_range=[1]", "res = isp.segment(VEC, k_range=[1])", r"k_range", None, {}),
    ("G08", "segment", "constant vectors", "v = VEC.copy(deep=True); v['vectors'][:] = 1.0; res = isp.segment(v)", r"(?i)constant|identical|distinct", "ok = all(len(np.unique(res.values[i])) == 1 for i in range(res.shape[0]))", {}),
    ("G09", "segment", "k=1", "res = isp.segment(VEC, k=1)", None, "ok = bool((res.values == 0).all())", {}),
    ("G10", "segment", "numpy array instead of xarray", "res = isp.segment(VEC['vectors'].values)", r"ndarray", None, {}),
    ("G11", "segment", "n_init=0", "res = isp.segment(VEC, n_init=0)", r"n_init", None, {}),
    ("G12", "segment", "a store instead of vectors", "res = isp.segment(isp.open_store(FX+'/valid.h5'))", r"DataTree|store|decomposition", None, {}),
    # -- metrics -----------------------------------------------------------------------------
    ("M01", "metrics", "oracle_miou shape mismatch", "res = isp.oracle_miou(np.zeros((4, 4), int), np.zeros((5, 5), int))", r"shape|\(4, 4\)", None, {}),
    ("M02", "metrics", "matched_miou gt id >= n_classes", "res = isp.matched_miou(np.zeros((4, 4), int), np.full((4, 4), 7), n_classes=3)", r"\b7\b|n_classes", None, {}),
    ("M03", "metrics", "float predictions", "res = isp.oracle_miou(np.zeros((4, 4)), np.zeros((4, 4), int))", r"(?i)integer|float", None, {}),
    ("M04", "metrics", "negative gt ids", "res = isp.oracle_miou(np.zeros((4, 4), int), -np.ones((4, 4), int))", r"(?i)negative|-1", None, {}),
    ("M05", "metrics", "0x0 maps", "res = isp.oracle_miou(np.zeros((0, 0), int), np.zeros((0, 0), int))", r"(?i)empty|no pixels|no image|nothing", None, {}),
    ("M06", "metrics", "all-ignore gt", "res = isp.oracle_miou(np.zeros((4, 4), int), np.full((4, 4), 255))", r"(?i)ignore|no labelled|no valid", "ok = np.isnan(res)", {}),
    ("M07", "metrics", "matched_miou n_classes=0", "res = isp.matched_miou(np.zeros((4, 4), int), np.zeros((4, 4), int), n_classes=0)", r"n_classes", None, {}),
    ("M08", "metrics", "matched_miou negative cluster ids", "res = isp.matched_miou(-np.ones((4, 4), int), np.zeros((4, 4), int), n_classes=2)", r"(?i)negative|-1", None, {}),
    ("M09", "metrics", "matching='foo'", "res = isp.matched_miou(np.zeros((4, 4), int), np.zeros((4, 4), int), n_classes=2, matching='foo')", r"foo", None, {}),
    ("M10", "metrics", "sequences of different length", "res = isp.oracle_miou([np.zeros((2, 2), int)] * 2, [np.zeros((2, 2), int)] * 3)", r"different lengths|\b2\b.*\b3\b", None, {}),
    ("M11", "metrics", "cluster id >= n_clusters", "res = isp.matched_miou(np.full((4, 4), 9), np.zeros((4, 4), int), n_classes=2, n_clusters=3)", r"\b9\b|n_clusters", None, {}),
    # -- coordinate regression, spatial-semantic labels ------------------------------------------
    ("C01", "regression", "grid=1", "from interpret_spectral.evaluation.regression import coordinate_regression as cr; res = cr(np.random.rand(2, 4, 4, 3), grid=1)", r"grid", None, {}),
    ("C02", "regression", "train_fraction=1.0", "from interpret_spectral.evaluation.regression import coordinate_regression as cr; res = cr(np.random.rand(2, 4, 4, 3), grid=4, train_fraction=1.0)", r"train_fraction", None, {}),
    ("C03", "regression", "3-D input", "from interpret_spectral.evaluation.regression import coordinate_regression as cr; res = cr(np.random.rand(4, 4, 3))", r"(?i)4-D|dimension|shape|\(sample", None, {}),
    ("C04", "regression", "NaN in features", "from interpret_spectral.evaluation.regression import coordinate_regression as cr; a = np.random.rand(2, 4, 4, 3); a[0, 0, 0, 0] = np.nan; res = cr(a, grid=4)", r"(?i)nan|finite", None, {}),
    ("C05", "regression", "grid=-5", "from interpret_spectral.evaluation.regression import coordinate_regression as cr; res = cr(np.random.rand(2, 4, 4, 3), grid=-5)", r"grid", None, {}),
    ("L01", "labels", "mask id 9 with 3 class names", "from interpret_spectral.evaluation.spatial_semantic import spatial_semantic as ss; res = ss(np.full((8, 8), 9), ['a', 'b', 'c'])", r"\b9\b", None, {}),
    ("L02", "labels", "3-D mask", "from interpret_spectral.evaluation.spatial_semantic import spatial_semantic as ss; res = ss(np.zeros((2, 8, 8), int), ['a'])", r"(?i)2-D|dimension|shape", None, {}),
    ("L03", "labels", "min_area=-1", "from interpret_spectral.evaluation.spatial_semantic import spatial_semantic as ss; res = ss(np.zeros((8, 8), int), ['a'], min_area=-1)", r"min_area", None, {}),
    ("L04", "labels", "center_margin=0.7", "from interpret_spectral.evaluation.spatial_semantic import spatial_semantic as ss; res = ss(np.zeros((8, 8), int), ['a'], center_margin=0.7)", r"center_margin", None, {}),
    ("L05", "labels", "float mask", "from interpret_spectral.evaluation.spatial_semantic import spatial_semantic as ss; res = ss(np.zeros((8, 8)), ['a'])", r"(?i)integer|float", None, {}),
    # -- segmentation folders ------------------------------------------------------------------
    ("F01", "folders", "root does not exist", "from interpret_spectral.evaluation.folders import SegmentationFolder as SF; res = SF(FX+'/nope')", r"nope", None, {}),
    ("F02", "folders", "masks of the wrong size", "from interpret_spectral.evaluation.folders import SegmentationFolder as SF; res = SF(FX+'/seg_wrongsize')[0]", r"s0\.png|size", None, {}),
    ("F03", "folders", "mask value 77 with 3 classes", "from interpret_spectral.evaluation.folders import SegmentationFolder as SF; res = SF(FX+'/seg_badvalues')[0]", r"77", None, {}),
    ("F04", "folders", "RGB mask", "from interpret_spectral.evaluation.folders import SegmentationFolder as SF; res = SF(FX+'/seg_rgbmask')[0]", r"(?i)s0\.png|rgb|channel", None, {}),
    ("F05", "folders", "empty classes.txt", "from interpret_spectral.evaluation.folders import SegmentationFolder as SF; res = SF(FX+'/seg_emptyclasses')", r"classes\.txt", None, {}),
    ("F06", "folders", "images without masks", "from interpret_spectral.evaluation.folders import SegmentationFolder as SF; res = SF(FX+'/seg_nomask')", r"(?i)mask", None, {}),
    ("F07", "folders", "size=0", "from interpret_spectral.evaluation.folders import SegmentationFolder as SF; res = SF(FX+'/seg_ok', protocol='short_side', size=0)", r"size", None, {}),
    ("F08", "folders", "index out of range", "from interpret_spectral.evaluation.folders import SegmentationFolder as SF; res = SF(FX+'/seg_ok')[10]", r"10", None, {}),
    ("F09", "folders", "16-bit mask", "from interpret_spectral.evaluation.folders import SegmentationFolder as SF; res = SF(FX+'/seg_16bit')[0]", r"(?i)16|mode|s0\.png", "ok = True", {}),
]
HUGE_API = [
    ("P41", "probe", "6000x6000 PNG", f"res = probe(M, [FX+'/huge.png'], {_PROBE})", None, "ok = res.sizes['sample'] == 1 and bool(np.isfinite(res['blocks.0.attn']['q'].values).all())", {}),
]
QUICK_API = {"P04", "P09", "P19", "P22", "P36", "S02", "S11", "S12", "S14", "D09", "D11", "D20", "G04", "M01", "F03"}

# CLI: (id, command, what, argv after the program name, regex of the one stderr line (None: must succeed),
# shell check that must exit 0 after a success, {copy: fixture})
_M = ["--model", "timm:vit_tiny_patch16_224", "--weights", "{fx}/tiny.safetensors", "--image-size", "64", "-q"]
CLI_CASES = [
    ("K01", "analyze", "empty folder", ["analyze", "{fx}/empty_dir", "--out", "out", *_M], r"empty_dir", None, {}),
    ("K02", "analyze", "folder with a text file named .png", ["analyze", "{fx}/dir_notimage", "--out", "out", *_M], r"notimage\.png", None, {}),
    ("K03", "analyze", "folder with a truncated PNG", ["analyze", "{fx}/dir_truncated", "--out", "out", *_M], r"truncated\.png", None, {}),
    ("K04", "probe", "folder with a zero-byte PNG", ["probe", "{fx}/dir_zero", "--out", "s.h5", *_M], r"zero\.png", None, {}),
    ("K05", "probe", "16-bit gradient PNG", ["probe", "{fx}/dir_gray16", "--out", "s.h5", *_M], None,
     "from interpret_spectral import open_store; p = open_store('s.h5')['pixels'].values[0, :, :, 0]; assert (p == 255).mean() < 0.2, p[0]", {}),
    ("K06", "probe", "1x1 PNG", ["probe", "{fx}/dir_one", "--out", "s.h5", *_M], r"one\.png", "from interpret_spectral import open_store; assert open_store('s.h5').sizes['sample'] == 1", {}),
    ("K07", "probe", "--out an existing store", ["probe", "{fx}/valid.png", "--out", "x.h5", *_M], r"x\.h5", None, {"x.h5": "valid.h5"}),
    ("K08", "probe", "--overwrite, new run fails (truncated PNG)", ["probe", "{fx}/valid.png", "{fx}/truncated.png", "--out", "x.h5", "--overwrite", "--batch-size", "1", *_M], r"truncated\.png", None, {"x.h5": "valid.h5"}),
    ("K09", "analyze", "unicode and spaces in inputs and --out", ["analyze", "{fx}/dossier avec espaces é 漢字", "--out", "sortie é/run 1", "--no-figures", "--graph", "qk", *_M], None,
     "import json; assert json.load(open('sortie é/run 1/summary.json'))['samples'] in (2, ['image é 1', '画像 2'])", {}),
    ("K10", "decompose", "random bytes", ["decompose", "{fx}/random.h5", "--out", "v.nc", "-q"], r"random\.h5", None, {}),
    ("K11", "decompose", "truncated store", ["decompose", "{fx}/truncated.h5", "--out", "v.nc", "-q"], r"truncated\.h5", None, {}),
    ("K12", "decompose", "foreign HDF5", ["decompose", "{fx}/foreign.h5", "--out", "v.nc", "-q"], r"foreign\.h5", None, {}),
    ("K13", "decompose", "future format_version", ["decompose", "{fx}/future.h5", "--out", "v.nc", "-q"], r"format_version 99", None, {}),
    ("K14", "decompose", "--n-components 0", ["decompose", "{fx}/valid.h5", "--out", "v.nc", "--n-components", "0", "-q"], r"--n-components|n_components", None, {}),
    ("K15", "decompose", "--n-components 500", ["decompose", "{fx}/valid.h5", "--out", "v.nc", "--n-components", "500", "-q"], r"n.components|500", None, {}),
    ("K16", "decompose", "--grid 1000 on 4x4 sites", ["decompose", "{fx}/valid.h5", "--out", "v.nc", "--grid", "1000", "--n-components", "2", "-q"], r"grid", None, {}),
    ("K17", "decompose", "NaN store", ["decompose", "{fx}/nan.h5", "--out", "v.nc", "-q"], r"(?i)nan|finite", None, {}),
    ("K18", "decompose", "store with zero samples", ["decompose", "{fx}/empty.h5", "--out", "v.nc", "-q"], r"(?i)no samples|0 samples|holds 0|empty", None, {}),
    ("K19", "decompose", "store cut short", ["decompose", "{fx}/incomplete.h5", "--out", "v.nc", "-q"], r"4 of 6", None, {}),
    ("K20", "decompose", "--out an existing file", ["decompose", "{fx}/valid.h5", "--out", "v.nc", "-q"], r"v\.nc", None, {"v.nc": "vectors.nc"}),
    ("K21", "decompose", "--out an existing folder", ["decompose", "{fx}/valid.h5", "--out", "{fx}/vdir", "-q"], r"vdir", None, {}),
    ("K22", "decompose", "num_heads 10^9 attribute", ["decompose", "{fx}/hugeheads.h5", "--out", "v.nc", "-q"], r"num_heads", None, {}),
    ("K23", "decompose", "--timesteps on a store without timesteps", ["decompose", "{fx}/valid.h5", "--out", "v.nc", "--timesteps", "1", "-q"], r"timestep", None, {}),
    ("K24", "segment", "a store as the vectors file", ["segment", "{fx}/valid.h5", "--out", "l.nc", "-q"], r"valid\.h5", None, {}),
    ("K25", "segment", "--k 1000", ["segment", "{fx}/vectors.nc", "--out", "l.nc", "--k", "1000", "-q"], r"--k|\bk\b|1000", None, {}),
    ("K26", "segment", "truncated vectors file", ["segment", "{fx}/vectors_trunc.nc", "--out", "l.nc", "-q"], r"vectors_trunc\.nc", None, {}),
    ("K27", "evaluate", "folder does not exist", ["evaluate", "{fx}/nope", *_M], r"nope", None, {}),
    ("K28", "evaluate", "masks of the wrong size", ["evaluate", "{fx}/seg_wrongsize", *_M], r"s0\.png|size", None, {}),
    ("K29", "evaluate", "mask values outside the classes", ["evaluate", "{fx}/seg_badvalues", *_M], r"77", None, {}),
    ("K30", "probe", "--layers 99", ["probe", "{fx}/valid.png", "--out", "s.h5", "--layers", "99", *_M], r"99", None, {}),
    ("K31", "probe", "--capture q,x", ["probe", "{fx}/valid.png", "--out", "s.h5", "--capture", "q,x", *_M], r"'?x'?", None, {}),
    ("K32", "probe", "--image-size 7", ["probe", "{fx}/valid.png", "--out", "s.h5", "--model", "timm:vit_tiny_patch16_224", "--weights", "{fx}/tiny.safetensors", "--image-size", "7", "-q"], r"\b7\b|image.size", None, {}),
    ("K33", "probe", "--model timm:no_such_model", ["probe", "{fx}/valid.png", "--out", "s.h5", "--model", "timm:no_such_model", "-q"], r"no_such_model", None, {}),
    ("K34", "probe", "--weights missing", ["probe", "{fx}/valid.png", "--out", "s.h5", "--weights", "/nonexistent.onnx", "-q"], r"nonexistent\.onnx", None, {}),
    ("K35", "probe", "--batch-size 0", ["probe", "{fx}/valid.png", "--out", "s.h5", "--batch-size", "0", "-q"], r"--batch-size", None, {}),
    ("K36", "analyze", "--overwrite --resume together", ["analyze", "{fx}/valid.png", "--out", "out", "--overwrite", "--resume", *_M], r"overwrite|resume", None, {}),
    ("K37", "analyze", "--out an existing file", ["analyze", "{fx}/valid.png", "--out", "afile", *_M], r"afile", None, {"afile": "text.txt"}),
    ("K38", "analyze", "a non-image file as input", ["analyze", "{fx}/text.txt", "--out", "out", *_M], r"text\.txt", None, {}),
    ("K39", "analyze", "unknown option", ["analyze", "{fx}/valid.png", "--bogus"], r"--bogus", None, {}),
    ("K40", "probe", "--weights of another model", ["probe", "{fx}/valid.png", "--out", "s.h5", "--model", "timm:vit_small_patch16_224", "--weights", "{fx}/tiny.safetensors", "-q"], r"tiny\.safetensors", None, {}),
]
QUICK_CLI = {"K03", "K08", "K16", "K19"}
ABSURD = ["S11", "S12", "S13", "S14", "D09", "D10", "D21", "D23", "DD08", "K16", "K22"]


# ---------------------------------------------------------------------------------------- classing
def _class_error(error: dict, expect: str | None) -> str:
    if error.get("harness"):
        return "harness error"
    raw = not error["deliberate"] and error["through_package"]
    os_error = error["type"] in {"FileNotFoundError", "IsADirectoryError", "NotADirectoryError", "PermissionError", "FileExistsError"}
    if raw and not os_error:
        return "raw exception"
    return "clear error" if expect and re.search(expect, error["message"]) else "unclear error"


def class_api(case: tuple, result: dict, intact: bool) -> str:
    expect, check = case[4], case[5]
    if result.get("hang"):
        return "hang"
    if not intact:
        return "data lost"
    if result.get("crashed") or "signal" in result:
        return "raw exception"
    if "error" in result:
        return _class_error(result["error"], expect)
    if check is None:
        return "silent wrong"
    return "handled" if result.get("ok") else "silent wrong"


def class_cli(case: tuple, result: dict, intact: bool, cwd: Path) -> tuple[str, str]:
    expect, check = case[4], case[5]
    err = result.get("stderr", "")
    if result.get("hang"):
        return "hang", ""
    if not intact:
        return "data lost", err.strip()[-200:]
    if "signal" in result or "Traceback" in err:
        return "raw exception", err.strip()[-300:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if result.get("status") != 0:
        line = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "")
        ok = expect is not None and re.search(expect, line) and len(lines) <= 2
        return ("clear error" if ok else "unclear error"), line[:300]
    if check is None:
        return ("silent wrong" if expect else "handled"), "exit 0"
    run = subprocess.run([sys.executable, "-c", check], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    return ("handled" if run.returncode == 0 else "silent wrong"), run.stderr.strip()[-200:]


# ---------------------------------------------------------------------------------------- trials
def _copies(cwd: Path, fx: Path, copies: dict) -> dict:
    cwd.mkdir(parents=True, exist_ok=True)
    for dst, src in copies.items():
        shutil.copy(fx / src, cwd / dst)
    return {dst: _digest(cwd / dst) for dst in copies}


def bad_inputs_api(cases: list, fx: Path, scratch: Path, env: dict) -> list[dict]:
    rows = []
    for case in cases:
        cwd = scratch / "api" / case[0]
        before = _copies(cwd, fx, case[6])
        result = run_forked(case[3], case[5], env, cwd, TIMEOUT)
        intact = all(_digest(cwd / dst) == digest for dst, digest in before.items())
        outcome = class_api(case, result, intact)
        e = result.get("error", {})
        detail = f"{e['type']}: {e['message']}" if e else (result.get("note") or ("returned" if result.get("returned") else ""))
        rows.append({"id": case[0], "area": case[1], "what": case[2], "outcome": outcome, "detail": detail[:300],
                     "where": e.get("where", ""), "seconds": result.get("seconds", 0.0), "rss_mb": result.get("rss_mb", 0.0)})
        print(f"  {case[0]:5s} {outcome:14s} {detail[:110]}", file=sys.stderr, flush=True)
    return rows


def bad_inputs_cli(cases: list, fx: Path, scratch: Path) -> list[dict]:
    rows = []
    for case in cases:
        cwd = scratch / "cli" / case[0]
        before = _copies(cwd, fx, case[6])
        argv = CLI + [a.format(fx=fx) for a in case[3]]
        result = run_exec(argv, cwd, TIMEOUT)
        intact = all(_digest(cwd / dst) == digest for dst, digest in before.items())
        outcome, detail = class_cli(case, result, intact, cwd)
        rows.append({"id": case[0], "area": "cli " + case[1], "what": case[2], "outcome": outcome, "detail": detail,
                     "where": "", "seconds": result.get("seconds", 0.0), "rss_mb": result.get("rss_mb", 0.0)})
        print(f"  {case[0]:5s} {outcome:14s} {detail[:110]}", file=sys.stderr, flush=True)
    return rows


_READ_ALL = """
import hashlib
def digests(path):
    tree = isp.open_store(path)
    out = {}
    for node in tree.subtree:
        for name, var in node.to_dataset(inherit=False).variables.items():
            values = np.asarray(var.values)
            data = values.astype(str).tobytes() if values.dtype.kind in 'OSU' else values.tobytes()
            out[node.path.strip('/') + '/' + str(name)] = hashlib.sha256(data).hexdigest()
    tree.close()
    return out
"""


def _array_ranges(path: Path) -> list[tuple[int, int, str]]:
    """(start, end, array path) of every stored chunk of every dataset in an HDF5 file."""
    ranges: list[tuple[int, int, str]] = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.chunks is None:
            offset = obj.id.get_offset()
            if offset is not None:
                ranges.append((offset, offset + obj.id.get_storage_size(), name))
            return
        for i in range(obj.id.get_num_chunks()):
            info = obj.id.get_chunk_info(i)
            size = info.size
            if not obj.fletcher32 and obj.ndim == 1:  # an unchecked chunk: only the rows inside the extent count
                size = max(0, min(obj.chunks[0], obj.shape[0] - info.chunk_offset[0])) * (info.size // obj.chunks[0])
            if size:
                ranges.append((info.byte_offset, info.byte_offset + size, name))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return ranges


def corrupted_stores(n: int, fx: Path, scratch: Path, env: dict, seed: int = 0) -> tuple[list[dict], dict]:
    """Flip bytes of ``n`` copies of a store; read each back fully and with verify_store."""
    source = fx / "valid.h5"
    data = bytearray(source.read_bytes())
    ranges = _array_ranges(source)
    array_bytes = sum(e - s for s, e, _ in ranges)
    pristine_dir = scratch / "corrupt" / "pristine"
    r = run_forked(_READ_ALL + f"res = digests({str(source)!r})\nimport json; open('d.json', 'w').write(json.dumps(res))", None, env, pristine_dir, TIMEOUT)
    pristine = json.loads((pristine_dir / "d.json").read_text())
    rng = random.Random(seed)
    rows = []
    for t in range(n):
        copy = bytearray(data)
        flips = rng.choice((1, 1, 2, 4, 8))
        offsets, hit = [], set()
        for _ in range(flips):
            if rng.random() < 0.5:  # inside an array's stored bytes
                start, end, name = rng.choice(ranges)
                offset = rng.randrange(start, end)
            else:
                offset = rng.randrange(len(copy))
            copy[offset] ^= rng.randrange(1, 256)
            offsets.append(offset)
            hit.update(name for s, e, name in ranges if s <= offset < e)
        cwd = scratch / "corrupt" / f"c{t:03d}"
        cwd.mkdir(parents=True)
        (cwd / "s.h5").write_bytes(bytes(copy))
        code = _READ_ALL + (
            "import json\nPRISTINE = json.loads(open(" + repr(str(pristine_dir / "d.json")) + ").read())\n"
            "res = {}\n"
            "try:\n"
            "    d = digests('s.h5')\n"
            "    res['read'] = 'changed ' + ','.join(k for k in d if d[k] != PRISTINE.get(k)) if d != PRISTINE else 'identical'\n"
            "except (StoreError, FileNotFoundError) as e:\n"
            "    res['read'] = 'detected ' + type(e).__name__ + ': ' + str(e)\n"
            "except Exception as e:\n"
            "    res['read'] = 'raw ' + type(e).__name__ + ': ' + str(e)\n"
            "try:\n"
            "    verify_store('s.h5'); res['verify'] = 'passed'\n"
            "except StoreError as e:\n"
            "    res['verify'] = 'detected ' + type(e).__name__ + ': ' + str(e)\n"
            "except Exception as e:\n"
            "    res['verify'] = 'raw ' + type(e).__name__ + ': ' + str(e)\n"
            "open('r.json', 'w').write(json.dumps(res))\n"
        )
        result = run_forked(code, None, env, cwd, TIMEOUT)
        try:
            got = json.loads((cwd / "r.json").read_text())
        except (OSError, ValueError):
            got = {"read": "hang" if result.get("hang") else "crash", "verify": ""}
        rows.append({"trial": t, "offsets": offsets, "arrays_hit": sorted(hit), **got})
        shutil.rmtree(cwd)
    return rows, {"file_bytes": len(data), "array_bytes": array_bytes, "arrays": len({r[2] for r in ranges})}


def class_corruption(row: dict) -> str:
    read, verify = row["read"], row.get("verify", "")
    if read in ("hang", "crash"):
        return read
    if read.startswith("raw") or verify.startswith("raw"):
        return "raw exception"
    detected = read.startswith("detected") or verify.startswith("detected")
    if read.startswith("changed") and not read.startswith("detected"):
        return "SILENT CHANGE"
    if row["arrays_hit"]:
        if not detected:
            return "array bytes changed, undetected"
        message = read if read.startswith("detected") else verify
        named = any(repr(name.split("/")[-1]) in message or name.split("/")[-1] in message for name in row["arrays_hit"])
        return "detected, array named" if named else "detected, array not named"
    return "detected (metadata)" if detected else "no effect (unused bytes)"


def _cli_model_args(fx: Path) -> list[str]:
    return [a.format(fx=fx) for a in _M]


def sigkills(n: int, fx: Path, scratch: Path, env: dict, seed: int = 0) -> list[dict]:
    """SIGKILL ``probe --overwrite`` and ``analyze --overwrite`` at random times; what is left."""
    rng = random.Random(seed)
    base = scratch / "kills"
    base.mkdir()
    model = _cli_model_args(fx)
    old = base / "old"
    kinds = ["probe", "analyze"] if n > 1 else ["probe"]
    made = {}
    for kind in kinds:  # the old result: 4 images
        target = old / ("store.h5" if kind == "probe" else "run")
        extra = ["--no-figures"] if kind == "analyze" else []
        r = run_exec(CLI + [kind, str(fx / "imgs4"), "--out", str(target), *extra, *model], old, TIMEOUT)
        if r.get("status") != 0:
            raise RuntimeError(f"could not make the old {kind} result: {r.get('stderr')}")
        t = base / f"time-{kind}"
        shutil.copytree(old, t, dirs_exist_ok=True)
        started = time.perf_counter()
        r = run_exec(CLI + [kind, str(fx / "imgs5"), "--out", str(t / target.name), "--overwrite", *extra, *model], t, TIMEOUT)
        made[kind] = (target.name, extra, time.perf_counter() - started)
        shutil.rmtree(t)
    rows = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        name, extra, duration = made[kind]
        cwd = base / f"k{i:02d}"
        shutil.copytree(old, cwd)
        delay = rng.uniform(0.2, duration * 1.05)
        proc = subprocess.Popen(CLI + [kind, str(fx / "imgs5"), "--out", name, "--overwrite", *extra, *model], cwd=cwd,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_cli_env(), start_new_session=True)
        try:
            proc.wait(timeout=delay)
            finished = True
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            finished = False
        store = name if kind == "probe" else f"{name}/store.h5"
        check = (
            "import glob, json\n"
            f"t = isp.open_store({store!r}); n = int(t.sizes['sample']); complete = int(t.attrs['complete']); t.close()\n"
            "summary = None\n"
            + (f"summary = json.load(open({name + '/summary.json'!r}))\n" if kind == "analyze" else "")
            + "partial = []\n"
            f"for p in glob.glob({name + '.partial*'!r}) + glob.glob({store + '.partial*'!r}):\n"
            "    try:\n"
            "        s = isp.open_store(p if p.endswith('.h5') or '.h5.' in p else p + '/store.h5'); partial.append((p, int(s.sizes['sample']), int(s.attrs['complete']))); s.close()\n"
            "    except Exception as e:\n"
            "        partial.append((p, type(e).__name__, 0))\n"
            "res = (n, complete, summary is None or len(summary['samples']) == n, partial)\n"
            "open('k.json', 'w').write(json.dumps(res, default=str))\n"
        )
        result = run_forked(check, None, env, cwd, TIMEOUT)
        try:
            n_samples, complete, summary_ok, partial = json.loads((cwd / "k.json").read_text())
            state = {4: "old", 5: "new"}.get(n_samples, f"{n_samples} samples") + (" complete" if complete else " INCOMPLETE")
            if not summary_ok:
                state += ", summary does not match"
        except (OSError, ValueError):
            e = result.get("error", {})
            state, partial = f"DATA LOST ({e.get('type', '?')}: {e.get('message', '')[:120]})", []
        looks_complete = [p for p in partial if p[2] == 1]
        rows.append({"trial": i, "command": f"{kind} --overwrite", "killed_at_s": round(delay, 1), "finished_first": finished,
                     "result": state, "partials_left": len(partial), "partials_looking_complete": len(looks_complete)})
        print(f"  kill {i:2d} {kind:8s} at {delay:5.1f}s -> {state}; partials {len(partial)}", file=sys.stderr, flush=True)
        shutil.rmtree(cwd)
    return rows


# ---------------------------------------------------------------------------------------- tables
def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(api: list[dict], cli: list[dict], corrupt: list[dict], facts: dict, kills: list[dict], baselines: dict) -> str:
    out = []
    rows = api + cli
    counts = collections.Counter(r["outcome"] for r in rows)
    keys = list(OUTCOMES) + sorted(set(counts) - set(OUTCOMES))
    out.append(f"## 1. Bad inputs ({len(api)} API, {len(cli)} CLI)\n")
    out.append(_table(["outcome", "API", "CLI", "total"],
                      [[k, sum(r["outcome"] == k for r in api), sum(r["outcome"] == k for r in cli), counts.get(k, 0)] for k in keys]))
    bad = [r for r in rows if r["outcome"] not in ("clear error", "handled")]
    if bad:
        out.append("\nCases not clear or handled:\n")
        out.append(_table(["id", "area", "input", "outcome", "what happened"],
                          [[r["id"], r["area"], r["what"], r["outcome"], (r["detail"] + (f" ({r['where']})" if r["where"] else ""))[:220]] for r in bad]))
    if corrupt:
        classes = collections.Counter(class_corruption(r) for r in corrupt)
        out.append(f"\n## 2. Corrupted store copies ({len(corrupt)}; store of {facts['file_bytes']} bytes, "
                   f"{facts['array_bytes']} of them array data in {facts['arrays']} arrays)\n")
        out.append(_table(["outcome", "copies"], [[k, v] for k, v in classes.most_common()]))
        hit = [r for r in corrupt if r["arrays_hit"]]
        out.append(f"\nCopies with a flipped byte inside an array: {len(hit)}; detected: "
                   f"{sum(class_corruption(r).startswith('detected') for r in hit)}.")
        silent = [r for r in corrupt if class_corruption(r) in ("SILENT CHANGE", "array bytes changed, undetected")]
        if silent:
            out.append("\nSilent changes:\n")
            out.append(_table(["trial", "offsets", "arrays hit", "read back"], [[r["trial"], r["offsets"], r["arrays_hit"], r["read"][:120]] for r in silent]))
    if kills:
        out.append(f"\n## 3. SIGKILL during --overwrite ({len(kills)})\n")
        summary = collections.Counter((r["command"], r["result"]) for r in kills)
        out.append(_table(["command", "afterwards", "trials"], [[c, s, n] for (c, s), n in sorted(summary.items())]))
        out.append(f"\n`.partial*` left behind: {sum(r['partials_left'] for r in kills)} in "
                   f"{sum(r['partials_left'] > 0 for r in kills)} trials; of them opening as a complete store: "
                   f"{sum(r['partials_looking_complete'] for r in kills)}.")
    by_id = {r["id"]: r for r in rows}
    absurd = [by_id[i] for i in ABSURD if i in by_id]
    if absurd:
        out.append("\n## 4. Absurd attributes and arguments: refused before allocating?\n")
        out.append(f"Peak RSS of a child that does nothing: {baselines['api']:.0f} MB (forked, API), "
                   f"{baselines['cli']:.0f} MB (`decompose` of a missing file through the CLI: the imports).\n")
        out.append(_table(["id", "input", "outcome", "seconds", "peak RSS MB"],
                          [[r["id"], r["what"], r["outcome"], f"{r['seconds']:.1f}", f"{r['rss_mb']:.0f}"] for r in absurd]))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset, in under three minutes")
    parser.add_argument("--scratch", default=None, help="scratch folder (default: a new temporary folder, removed)")
    parser.add_argument("--json", default=None, help="also write every row as JSON to this file")
    parser.add_argument("--corrupt", type=int, default=None, help="corrupted copies (default 200; 20 with --quick)")
    parser.add_argument("--kills", type=int, default=None, help="SIGKILLs (default 20; 1 with --quick)")
    parser.add_argument("--parts", default="1,2,3", help="which trials: 1 bad inputs (and 4), 2 corruption, 3 SIGKILLs")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",")}
    quick = args.quick
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="trust-trials-")).resolve()
    fx = scratch / "fx"
    started = time.perf_counter()
    print(f"fixtures in {fx} ...", file=sys.stderr, flush=True)
    make_fixtures(fx, quick)
    fx_digest = _digest(fx)
    env = {"isp": isp, "np": np, "torch": torch, "xr": xr, "re": re, "FX": str(fx), "M": tiny_vit(), "tiny_vit": tiny_vit,
           "probe": isp.probe, "decompose": isp.decompose, "verify_store": verify_store, "StoreError": StoreError,
           "StoreIntegrityError": StoreIntegrityError,
           "VEC": xr.open_dataset(fx / "vectors.nc", engine="h5netcdf").load()}
    api_cases = [c for c in API_CASES if not quick or c[0] in QUICK_API] + ([] if quick else HUGE_API)
    cli_cases = [c for c in CLI_CASES if not quick or c[0] in QUICK_CLI]
    print("1. bad inputs", file=sys.stderr, flush=True)
    api = bad_inputs_api(api_cases, fx, scratch, env) if "1" in parts else []
    cli = bad_inputs_cli(cli_cases, fx, scratch) if "1" in parts else []
    print("2. corrupted stores", file=sys.stderr, flush=True)
    n_corrupt = args.corrupt if args.corrupt is not None else (20 if quick else 200)
    corrupt, facts = corrupted_stores(n_corrupt if "2" in parts else 0, fx, scratch, env)
    print("3. SIGKILLs", file=sys.stderr, flush=True)
    n_kills = args.kills if args.kills is not None else (1 if quick else 20)
    kills = sigkills(n_kills, fx, scratch, env) if "3" in parts and n_kills else []
    baselines = {"api": run_forked("res = None", None, env, scratch / "base-api", TIMEOUT)["rss_mb"],
                 "cli": run_exec(CLI + ["decompose", "nope.h5", "--out", "v.nc", "-q"], scratch / "base-cli", TIMEOUT)["rss_mb"]}
    if _digest(fx) != fx_digest:
        api.append({"id": "FX", "area": "all", "what": "the shared fixtures", "outcome": "data lost",
                    "detail": "a case changed the fixtures folder", "where": "", "seconds": 0.0, "rss_mb": 0.0})
    print(report(api, cli, corrupt, facts, kills, baselines))
    print(f"\n({time.perf_counter() - started:.0f} s; checkout {PACKAGE.parent})")
    if args.json:
        Path(args.json).write_text(json.dumps({"api": api, "cli": cli, "corrupt": corrupt, "kills": kills, "baselines": baselines}, indent=1, default=str))
    if args.scratch is None:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
