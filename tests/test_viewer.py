"""The HTML viewer: its data, its page, the ``view`` command, and the page in a real headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from interpret_spectral import decompose, segment
from interpret_spectral.spectral.kinds import qk_affinity, vv_affinity
from interpret_spectral.store.reader import patch_tokens
from interpret_spectral.store.results import save_netcdf
from interpret_spectral.synthetic import planted_store
from interpret_spectral.viewer import load_run, render_page, viewer_data, write_viewer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _planted(path: Path | None = None) -> xr.DataTree:
    """Two samples, an 8x8 and a 4x4 site, two heads, pixels so the page shows images."""
    store = planted_store(n_samples=2, grids=((8, 8), (4, 4)), num_heads=2, n_groups=3, seed=3)
    labels = store["planted_labels"].values
    palette = np.array([[200, 60, 50], [40, 150, 70], [50, 80, 200]], np.uint8)
    pixels = np.repeat(np.repeat(palette[labels], 8, axis=1), 8, axis=2)  # (sample, 64, 64, 3)
    store["pixels"] = xr.DataArray(pixels, dims=("sample", "py", "px", "rgb"))
    return store


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    store = _planted()
    decompositions = {g: decompose(store, graph=g, n_components=5, progress=False) for g in ("qk", "vv")}
    labels = {g: segment(d, k=3) for g, d in decompositions.items()}
    return {"store": store, "decompositions": decompositions, "labels": labels}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory, results: dict[str, Any]) -> Path:
    """A folder with the files `interpret-spectral analyze` writes (store.h5, vectors/labels .nc, summary)."""
    folder = tmp_path_factory.mktemp("run")
    stored = planted_store(n_samples=2, grids=((8, 8), (4, 4)), num_heads=2, n_groups=3, seed=3,
                           path=folder / "store.h5")
    summary = {"model": "planted", "graphs": {}}
    for graph in ("qk", "vv"):
        decomposition = decompose(stored, graph=graph, n_components=5, progress=False)
        save_netcdf(decomposition, folder / f"vectors_{graph}.nc")
        save_netcdf(segment(decomposition, k=3), folder / f"labels_{graph}.nc")
        summary["graphs"][graph] = {"meaning": {"qk": "where", "vv": "what"}[graph]}
    stored.close()
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def _decode(entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    heads, (gh, gw), k = entry["heads"], entry["grid"], entry["k"]
    index = np.frombuffer(base64.b64decode(entry["index"]), "<u2").reshape(heads, gh * gw, k)
    value = np.frombuffer(base64.b64decode(entry["value"]), "u1").reshape(heads, gh * gw, k)
    row_max = np.frombuffer(base64.b64decode(entry["row_max"]), "<f4").reshape(heads, gh * gw)
    return index, value, row_max


# -- the data --------------------------------------------------------------------------------
def test_payload_holds_every_panel(results: dict[str, Any]) -> None:
    data = viewer_data(results["store"], results["decompositions"], results["labels"], top_k=6)
    assert data["graphs"] == ["qk", "vv"]
    assert [s["id"] for s in data["samples"]] == ["planted-0", "planted-1"]
    part = data["samples"][0]["graphs"]["qk"]
    assert part["grid"] == [8, 8]
    assert len(part["rgb"]) == 5 - 2  # slider positions: components (0,1,2), (1,2,3), (2,3,4)
    assert all(uri.startswith("data:image/png;base64,") for uri in part["rgb"])
    assert part["segments"].startswith("data:image/png;base64,") and part["k"] == 3
    assert data["samples"][0]["image"].startswith("data:image/png;base64,")
    assert data["samples"][0]["size"] == [64, 64]
    assert part["contribution_sites"] == ["blocks.0.attn", "blocks.1.attn"]
    assert np.asarray(part["contributions"], dtype=float).shape == (2, 2, 5)
    values = results["decompositions"]["qk"]["values"].isel(sample=0).values
    np.testing.assert_allclose(part["values"], values, atol=1e-5)
    assert [e["site"] for e in part["affinity"]] == ["blocks.0.attn", "blocks.1.attn"]
    json.dumps(data, allow_nan=False)  # the page embeds it as strict JSON


@pytest.mark.parametrize("graph", ["qk", "vv"])
def test_hover_rows_are_the_strongest_entries_of_the_graph(results: dict[str, Any], graph: str) -> None:
    """The top-k rows shipped for the hover equal the top-k of P computed independently from the store."""
    store = results["store"]
    data = viewer_data(store, results["decompositions"][graph], results["labels"][graph], top_k=5, samples=["planted-1"])
    for entry in data["samples"][0]["graphs"][graph]["affinity"]:
        site = entry["site"]
        if graph == "qk":
            p = qk_affinity(patch_tokens(store, site, "q", samples=1), patch_tokens(store, site, "k", samples=1),
                            float(store[site].attrs["scale"]))
        else:
            p = vv_affinity(patch_tokens(store, site, "v", samples=1))
        p = np.asarray(p, dtype=np.float64)
        index, value, row_max = _decode(entry)
        np.testing.assert_allclose(row_max, p.max(-1), rtol=1e-4)
        shipped = np.take_along_axis(p, index.astype(np.int64), axis=-1)
        expected = -np.sort(-p, axis=-1)[..., : entry["k"]]
        np.testing.assert_allclose(shipped, expected, rtol=1e-4, atol=1e-7)  # the k strongest, in order
        np.testing.assert_allclose(value / 255.0 * row_max[..., None], shipped, atol=row_max.max() / 255.0)


def test_sites_and_samples_select_what_is_shipped(results: dict[str, Any]) -> None:
    data = viewer_data(results["store"], results["decompositions"]["qk"], samples=["planted-1"],
                       sites=["blocks.1.attn"])
    (sample,) = data["samples"]
    assert sample["id"] == "planted-1"
    assert [e["site"] for e in sample["graphs"]["qk"]["affinity"]] == ["blocks.1.attn"]
    assert sample["graphs"]["qk"]["segments"] is None  # no labels given


def test_bad_input_says_what_to_do(results: dict[str, Any], tmp_path: Path) -> None:
    store, decompositions = results["store"], results["decompositions"]
    with pytest.raises(KeyError, match="not in the store; its sites are"):
        viewer_data(store, decompositions["qk"], sites=["blocks.9.attn"])
    with pytest.raises(KeyError, match="are not in both the store and decomposition"):
        viewer_data(store, decompositions["qk"], samples=["nope"])
    with pytest.raises(KeyError, match="have no decomposition"):
        viewer_data(store, decompositions["qk"], {"vv": results["labels"]["vv"]})
    with pytest.raises(ValueError, match="top_k"):
        viewer_data(store, decompositions["qk"], top_k=0)
    with pytest.raises(ValueError, match="pass decompositions="):
        write_viewer(store, tmp_path / "v.html")
    with pytest.raises(FileNotFoundError, match="run `interpret-spectral analyze"):
        write_viewer(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        write_viewer(tmp_path / "missing")


def test_store_without_pixels_takes_images_or_shows_none(results: dict[str, Any]) -> None:
    store = planted_store(n_samples=1, grids=((4, 4),), num_heads=1)
    result = decompose(store, n_components=3, progress=False)
    assert viewer_data(store, result)["samples"][0]["image"] is None
    image = np.zeros((20, 10, 3), np.uint8)
    data = viewer_data(store, result, segment(result, k=2), images={"planted-0": image})
    assert data["samples"][0]["size"] == [20, 10]


def test_stores_with_timesteps_hover_the_first_timestep_used() -> None:
    store = planted_store(n_samples=1, grids=((4, 4),), num_heads=1, timesteps=[10, 20])
    result = decompose(store, n_components=3, timesteps=[20], progress=False)
    part = viewer_data(store, result, top_k=16)["samples"][0]["graphs"]["qk"]
    assert part["affinity_timestep"] == [20]
    index, value, row_max = _decode(part["affinity"][0])
    q, k = (patch_tokens(store, "blocks.0.attn", v, samples=0, timesteps=1) for v in ("q", "k"))
    p = np.asarray(qk_affinity(q, k, float(store["blocks.0.attn"].attrs["scale"])))
    np.testing.assert_allclose(row_max, p.max(-1), rtol=1e-4)


# -- the page --------------------------------------------------------------------------------
def test_page_is_self_contained(run_folder: Path) -> None:
    page = write_viewer(run_folder)
    assert page == run_folder / "viewer.html"
    html = page.read_text()
    assert "__VIEWER_DATA__" not in html
    # Nothing is fetched: no external scripts, styles, images or fonts.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "url(http" not in html and "@import" not in html
    data = json.loads(re.search(r'<script type="application/json" id="viewer-data">(.*?)</script>', html, re.S)
                      .group(1).replace("<\\/", "</"))
    assert data["meanings"] == {"qk": "where", "vv": "what"}
    assert data["title"].startswith("planted")
    assert page.stat().st_size < 1_000_000


def test_render_escapes_script_end() -> None:
    html = render_page({"title": "</script><b>", "graphs": [], "samples": []})
    payload = html.split('id="viewer-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(payload)["title"] == "</script><b>"


def test_load_run_reads_what_analyze_writes(run_folder: Path) -> None:
    run = load_run(run_folder)
    try:
        assert sorted(run.decompositions) == ["qk", "vv"] and sorted(run.labels) == ["qk", "vv"]
        assert run.summary["model"] == "planted"
    finally:
        run.store.close()


def test_view_command_writes_the_page(run_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`interpret-spectral view OUT_DIR` through the real entry point."""
    from interpret_spectral.cli import main

    out = tmp_path / "page.html"
    assert main(["view", str(run_folder), "--out", str(out), "--samples", "planted-1",
                 "--sites", "blocks.0.attn", "--top-k", "4"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    data = json.loads(out.read_text().split('id="viewer-data">', 1)[1].split("</script>", 1)[0])
    assert [s["id"] for s in data["samples"]] == ["planted-1"]
    assert data["samples"][0]["graphs"]["qk"]["affinity"][0]["k"] == 4
    assert main(["view", str(run_folder), "--out", str(tmp_path / "quiet.html"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["view", str(run_folder), "--top-k", "0"]) == 2
    assert main(["view", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["view", str(tmp_path)]) == 1  # a folder without a run
    assert "holds no analyze run" in capsys.readouterr().err


# -- a real browser ----------------------------------------------------------------------------
class Chromium:
    """Debian's headless Chromium driven through the DevTools protocol (websocket-client)."""

    def __init__(self, profile: Path, width: int = 1320, height: int = 900) -> None:
        import websocket

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port within 60 s")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            targets = json.load(response)
        page = next(t for t in targets if t["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.events: list[dict[str, Any]] = []
        self.next_id = 0
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout} s")
            self.events.append(json.loads(self.socket.recv()))

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                found.append(json.dumps(params.get("args"))[:500])
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                found.append(params["entry"].get("text", "")[:500])
        return found

    def open(self, path: Path) -> None:
        self.events.clear()
        self.send("Page.navigate", url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired")

    def hover(self, selector: str, fx: float, fy: float) -> None:
        box = self.evaluate(f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
                            " return [r.left, r.top, r.width, r.height]; })()")
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=box[0] + fx * box[2], y=box[1] + fy * box[3])

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        socket = getattr(self, "socket", None)
        if socket is not None:
            socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def exercise_page(browser: Chromium, page: Path, screenshot: Path, hover_site: str | None = None) -> dict[str, Any]:
    """Load ``page``, move the slider, hover two patches; return what the DOM showed at each step."""
    browser.open(page)
    seen: dict[str, Any] = {"ready": browser.evaluate("document.body.dataset.ready")}
    eigen = "document.getElementById('eigen-img')"
    seen["eigen_before"] = browser.evaluate(f"[{eigen}.dataset.components, {eigen}.src.length, {eigen}.src.slice(-64)]")
    browser.evaluate("(() => { const s = document.getElementById('component-slider');"
                     " s.value = String(Number(s.max)); s.dispatchEvent(new Event('input', {bubbles: true})); })()")
    seen["eigen_after"] = browser.evaluate(f"[{eigen}.dataset.components, {eigen}.src.length, {eigen}.src.slice(-64)]")
    if hover_site is not None:
        browser.evaluate(f"(() => {{ const s = document.getElementById('site'); s.value = {hover_site!r};"
                         " s.dispatchEvent(new Event('change')); })()")
    canvas = "document.getElementById('affinity-canvas')"
    state = f"[{canvas}.dataset.patch, {canvas}.dataset.site, {canvas}.toDataURL(), document.getElementById('top-list').textContent]"
    seen["affinity_before"] = browser.evaluate(state)
    browser.hover("#frame-image", 0.1, 0.1)
    seen["affinity_first"] = browser.evaluate(state)
    browser.hover("#frame-segments", 0.85, 0.9)
    seen["affinity_second"] = browser.evaluate(state)
    browser.evaluate("(() => { const s = document.getElementById('head'); s.value = '1';"
                     " s.dispatchEvent(new Event('change')); })()")
    seen["affinity_head"] = browser.evaluate(state)
    seen["bars"] = browser.evaluate("document.querySelectorAll('#site-chart rect.bar').length")
    browser.screenshot(screenshot)
    seen["errors"] = browser.errors()
    return seen


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; CI's .ci/run does)")
def test_page_in_headless_chromium(run_folder: Path, tmp_path: Path) -> None:
    page = write_viewer(run_folder, tmp_path / "viewer.html", top_k=64)  # whole rows: exact values
    browser = Chromium(tmp_path / "profile")
    try:
        seen = exercise_page(browser, page, tmp_path / "viewer.png", hover_site="blocks.0.attn")
    finally:
        browser.close()
    assert seen["errors"] == []
    assert seen["ready"] == "1"
    # The slider: components 0,1,2 -> 2,3,4 and another picture.
    assert seen["eigen_before"][0] == "0,1,2" and seen["eigen_after"][0] == "2,3,4"
    assert seen["eigen_before"][1:] != seen["eigen_after"][1:]
    # The hover: nothing before, then the hovered patch of the 8x8 site, whose heat map changes with the patch.
    before, first, second, head = seen["affinity_before"], seen["affinity_first"], seen["affinity_second"], seen["affinity_head"]
    assert before[0] == "" and before[3] == ""
    assert first[:2] == ["0,0", "blocks.0.attn"] and second[:2] == ["7,6", "blocks.0.attn"]
    assert first[2] != before[2] and second[2] != first[2] and head[2] != second[2]
    # The strongest cell listed is the strongest entry of P's row for that patch (mean of the 2 heads).
    store = planted_store(n_samples=2, grids=((8, 8), (4, 4)), num_heads=2, n_groups=3, seed=3)
    q, k = (patch_tokens(store, "blocks.0.attn", v, samples=0) for v in ("q", "k"))
    p = np.asarray(qk_affinity(q, k, float(store["blocks.0.attn"].attrs["scale"])))
    row = p[:, 7 * 8 + 6].mean(0)
    y, x, value = re.match(r"\((\d+), (\d+)\)\s+([0-9.]+)", second[3]).groups()
    tolerance = 2.0 * p[:, 7 * 8 + 6].max() / 255.0  # uint8 quantisation of the shipped rows
    assert row[int(y) * 8 + int(x)] >= row.max() - tolerance
    assert abs(float(value) - row.max()) <= tolerance
    assert seen["bars"] == 2
    png = (tmp_path / "viewer.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
