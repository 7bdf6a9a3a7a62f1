"""The adapter conformance kit: :func:`check_adapter` (as scikit-learn's ``check_estimator``).

An adapter is correct when what it records is what the model's attention used, in
the places it says.  :func:`check_adapter` runs one model on one small batch and
checks, in this order (each failure raises :class:`AdapterCheckError` naming the check):

``sites``
    the sites are valid (heads, head width, a sane softmax scale), uniquely named, in
    forward order, and the recorded q, k, v have the site's heads x tokens x channels.
``rebuild``
    ``softmax(q k^T * scale) v``, rebuilt from the recorded q, k, v, equals the input of
    each layer's output projection (:func:`~interpret_spectral.capture.rebuild.rebuild_errors`)
    to ``atol`` (relative, Frobenius).  Catches a wrong head split, a wrong scale, q/k
    read before a norm or rotary embedding.  Causal models (``describe()["attention"] ==
    "causal"``) are rebuilt with a causal mask.
``grid``
    the patch tokens are the grid in row-major order, one per cell, special tokens
    apart: one grid cell of the input is changed (a pixel block of an image batch, one
    token of a token batch) and the first site's q must change most at that cell.
    Catches transposed grids, column-major token orders, a class token counted as a patch.
``clean``
    no hook is left on any module, and no module attribute changed (attention
    processors, size modes, ``forward``), after a successful capture **and** after an
    exception raised inside the forward pass.
``backends``
    ``backend="hooks"`` and ``backend="nnsight"`` record identical arrays, where the
    adapter allows nnsight (one forward pass per batch) and nnsight is installed.

Examples
--------
>>> report = check_adapter(torch.nn.MultiheadAttention(8, 2, batch_first=True).eval(),
...                        inputs=torch.randn(2, 9, 8), backends=("hooks",))
>>> report.checks["rebuild"], report.checks["grid"]
('passed', 'passed')
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from interpret_spectral.capture.contract import Adapter, AttentionSite, check_site
from interpret_spectral.capture.placement import to_model
from interpret_spectral.capture.rebuild import rebuild_errors
from interpret_spectral.capture.registry import resolve_adapter
from interpret_spectral.capture.tapping import capture_batch, unwrap

__all__ = ["check_adapter", "AdapterCheckError", "AdapterCheckReport", "CHECKS"]

CHECKS = ("sites", "rebuild", "grid", "clean", "backends")
_SIMPLE = (bool, int, float, str, type(None), enum.Enum)
_WATCHED = ("processor", "forward", "__call__")
_HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
)


class AdapterCheckError(AssertionError):
    """A conformance check failed; ``check`` is its name (one of :data:`CHECKS`)."""

    def __init__(self, adapter: str, check: str, detail: str) -> None:
        super().__init__(f"check_adapter ({adapter!r} adapter): the {check!r} check failed: {detail}")
        self.adapter = adapter
        self.check = check


@dataclasses.dataclass
class AdapterCheckReport:
    """What :func:`check_adapter` found: every check ``"passed"`` or ``"skipped: <why>"``.

    Attributes
    ----------
    adapter : str
        The adapter's registered name.
    checks : dict
        Check name to outcome.
    rebuild : dict
        Site name to the relative rebuild error (``backend="hooks"``).
    """

    adapter: str
    checks: dict[str, str]
    rebuild: dict[str, float]


class _Interrupt(Exception):
    """Raised from inside the forward pass by the ``clean`` check."""


# -- model state ----------------------------------------------------------------------
def _state(module: torch.nn.Module) -> dict[tuple[str, str], Any]:
    """Hooks and plain attributes of every module: what an adapter must leave as it found it."""
    state: dict[tuple[str, str], Any] = {}
    for path, sub in module.named_modules():
        for name in _HOOK_DICTS:
            hooks = getattr(sub, name, None)
            if hooks:
                state[(path, name)] = tuple(hooks)
        for name, value in vars(sub).items():
            if name in _WATCHED:
                if type(value).__module__.split(".")[0] == "nnsight":
                    continue  # nnsight installs its own forward on every module it wraps, for good
                state[(path, name)] = ("object", id(value))
            elif not name.startswith("_") and isinstance(value, _SIMPLE):
                state[(path, name)] = value
    from torch.nn.modules import module as torch_module

    for name in ("_global_forward_hooks", "_global_forward_pre_hooks"):
        hooks = getattr(torch_module, name, None)
        if hooks:
            state[("<global>", name)] = tuple(hooks)
    return state


def _compare_state(before: dict, after: dict) -> list[str]:
    changes = []
    for key in sorted(set(before) | set(after)):
        if key in before and key not in after and key[1] not in _HOOK_DICTS and key[1] not in _WATCHED:
            continue  # an attribute an nnsight wrapper or a lazy cache removed: not the adapter's state
        if before.get(key) != after.get(key):
            path, name = key
            where = f"module {path!r}" if path else "the model"
            if name in _HOOK_DICTS or name.startswith("_global"):
                changes.append(f"{where} has hooks {name} {after.get(key, ())} (before: {before.get(key, ())})")
            elif name in _WATCHED:
                changes.append(f"{where}.{name} was replaced")
            else:
                changes.append(f"{where}.{name} is {after.get(key)!r} (before: {before.get(key)!r})")
    return changes


# -- inputs ---------------------------------------------------------------------------
def _default_inputs(adapter: Adapter) -> Any:
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(2)]
    try:
        return adapter.preprocess(images)
    except TypeError as error:
        raise AdapterCheckError(
            adapter.name, "sites", f"inputs= is needed: the adapter does not preprocess images ({error})"
        ) from error


def _pair_batch(batch: torch.Tensor, batch_axis: int) -> torch.Tensor:
    first = batch.narrow(batch_axis, 0, 1)
    return torch.cat([first, first.clone()], dim=batch_axis)


def _perturbed(batch: Any, site: AttentionSite, cell: tuple[int, int]) -> tuple[torch.Tensor, str] | str:
    """A two-sample batch whose second sample differs at grid ``cell``, or why none can be made."""
    if not isinstance(batch, torch.Tensor):
        return f"the batch is a {type(batch).__name__}, not a tensor"
    patch_index = [i for i, kind in enumerate(site.token_kinds) if kind == "patch"]
    token = patch_index[cell[0] * site.grid[1] + cell[1]]
    if batch.is_floating_point() and batch.ndim == 4:
        height, width = batch.shape[-2:]
        if height % site.grid[0] or width % site.grid[1]:
            return (
                f"!the first site's grid {site.grid[0]}x{site.grid[1]} does not tile the {height}x{width} input: "
                "is a special token (class, register) counted as a patch, or the grid wrong?"
            )
        step_h, step_w = height // site.grid[0], width // site.grid[1]
        pair = _pair_batch(batch, 0)
        rows = slice(cell[0] * step_h, (cell[0] + 1) * step_h)
        cols = slice(cell[1] * step_w, (cell[1] + 1) * step_w)
        pair[1, :, rows, cols] += 3.0 * (pair[1, :, rows, cols].abs().mean() + 1.0)
        return pair, "image"
    if batch.is_floating_point() and batch.ndim == 3:
        n = site.num_tokens
        if batch.shape[1] == n:
            token_axis, batch_axis = 1, 0
        elif batch.shape[0] == n:
            token_axis, batch_axis = 0, 1
        else:
            return f"a (B, N, C) batch whose token axis is not the site's {n} tokens"
        pair = _pair_batch(batch, batch_axis)
        index = [slice(None)] * 3
        index[token_axis], index[batch_axis] = token, 1
        pair[tuple(index)] += 3.0 * (pair[tuple(index)].abs().mean() + 1.0)
        return pair, "sequence"
    if not batch.is_floating_point() and batch.ndim == 2 and batch.shape[1] == site.num_tokens:
        pair = _pair_batch(batch, 0)
        top = max(int(batch.max()) + 1, 2)
        pair[1, token] = (pair[1, token] + 1) % top
        return pair, "tokens"
    return f"no grid cell to change in a {tuple(batch.shape)} {batch.dtype} batch"


# -- the checks -----------------------------------------------------------------------
def _causal(n: int) -> torch.Tensor:
    return torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)


def _check_sites(adapter: Adapter, batch: Any) -> list[AttentionSite]:
    fail = _failer(adapter, "sites")
    try:
        sites = [check_site(site, f"the {adapter.name!r} adapter") for site in adapter.sites(batch)]
    except (ValueError, TypeError) as error:
        raise fail(str(error)) from error
    if not sites:
        raise fail("sites(batch) returned no site")
    names = [site.name for site in sites]
    if len(set(names)) != len(names):
        raise fail(f"site names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    if [site.order for site in sites] != list(range(len(sites))):
        raise fail(f"site orders are {[site.order for site in sites]}, not 0..{len(sites) - 1} in forward order")
    arrays, _ = capture_batch(adapter, batch, sites)
    for site in sites:
        for var in ("q", "k", "v"):
            shape = tuple(arrays[site.name][var].shape)
            if shape[-3:] != (site.num_heads, site.num_tokens, site.head_dim):
                raise fail(
                    f"site {site.name!r}: {var} has shape {shape}, the site says {site.num_heads} heads x "
                    f"{site.num_tokens} tokens x {site.head_dim} channels"
                )
    return sites


def _failer(adapter: Adapter, check: str) -> Callable[[str], AdapterCheckError]:
    return lambda detail: AdapterCheckError(adapter.name, check, detail)


def _check_rebuild(
    adapter: Adapter, batch: Any, mask: Callable[[int], torch.Tensor] | None, atol: float
) -> dict[str, float]:
    fail = _failer(adapter, "rebuild")
    if mask is None and adapter.describe().get("attention") == "causal":
        mask = _causal
    try:
        errors = rebuild_errors(adapter, batch, mask=mask)
    except (ValueError, RuntimeError) as error:
        raise fail(str(error)) from error
    worst = max(errors, key=errors.get)
    if not errors[worst] <= atol:
        raise fail(
            f"softmax(q k^T * scale) v rebuilt from the recorded q, k, v differs from the input of the output "
            f"projection by {errors[worst]:.3g} (relative) at site {worst!r}, over atol={atol:g}; "
            f"{sum(e > atol for e in errors.values())} of {len(errors)} sites fail.  Look for a wrong head split "
            "(heads x channels order), a wrong scale, q/k read before a norm or rotary embedding, or a wrong output tap"
        )
    return errors


def _check_grid(adapter: Adapter, batch: Any, sites: Sequence[AttentionSite]) -> str:
    fail = _failer(adapter, "grid")
    site = sites[0]
    cell = (site.grid[0] // 3, (2 * site.grid[1]) // 3)
    made = _perturbed(batch, site, cell)
    if isinstance(made, str):
        if made.startswith("!"):
            raise fail(made[1:])
        return f"skipped: {made}"
    pair, _ = made
    arrays, _ = capture_batch(adapter, pair, [site], ("q",))
    q = arrays[site.name]["q"].double()  # (2, [T,] H, N, D)
    change = (q[1] - q[0]).abs()
    change = change.movedim(-2, 0).reshape(site.num_tokens, -1).amax(dim=1)
    patch = torch.tensor([kind == "patch" for kind in site.token_kinds])
    if float(change.max()) == 0.0:
        raise fail(f"changing grid cell {cell} of the input left the first site's q ({site.name!r}) unchanged")
    grid = change[patch].reshape(site.grid)
    # Where the change is centred: a ViT's first q changes at the one token only, a UNet's
    # convolutions spread it around the cell (a global norm shifts every token a little).
    weight = (grid - grid.median()).clamp_min(0) ** 2
    if float(weight.sum()) == 0.0:
        weight = grid**2
    total = weight.sum()
    centre_y = float((weight.sum(dim=1) * torch.arange(site.grid[0], dtype=weight.dtype)).sum() / total)
    centre_x = float((weight.sum(dim=0) * torch.arange(site.grid[1], dtype=weight.dtype)).sum() / total)
    if abs(centre_y - cell[0]) >= 1.0 or abs(centre_x - cell[1]) >= 1.0:
        peak = divmod(int(grid.argmax()), site.grid[1])
        raise fail(
            f"changing grid cell (row {cell[0]}, col {cell[1]}) of the input changed the first site's q "
            f"({site.name!r}) around cell (row {centre_y:.1f}, col {centre_x:.1f}), most at (row {peak[0]}, "
            f"col {peak[1]}); the adapter's patch tokens are not the {site.grid[0]}x{site.grid[1]} grid in "
            "row-major order (transposed or column-major tokens? special tokens miscounted?)"
        )
    return "passed"


def _check_clean(adapter: Adapter, batch: Any, sites: Sequence[AttentionSite], backends: Sequence[str],
                 model: Any, before: dict) -> None:
    fail = _failer(adapter, "clean")
    module = adapter.model_module()
    changes = _compare_state(before, _state(module))
    if changes:
        raise fail(f"after a successful capture: {'; '.join(changes[:4])}")
    last = sites[-1]
    taps = adapter.taps(last, ("q",))
    target = module.get_submodule(taps[0].module) if taps and taps[0].module else module

    def interrupt(_module: Any, _args: Any, _output: Any) -> None:
        raise _Interrupt("raised by check_adapter inside the forward pass")

    for backend in backends:
        handle = target.register_forward_hook(interrupt)
        try:
            capture_batch(adapter, batch, sites, backend=backend, model=model)
        except Exception as error:  # noqa: BLE001 - nnsight may wrap the exception
            if not _caused_by_interrupt(error):
                raise fail(f"backend={backend!r}: the exception inside the forward pass became {error!r}") from error
        else:
            raise fail(f"backend={backend!r}: an exception raised inside the forward pass was swallowed")
        finally:
            handle.remove()
        changes = _compare_state(before, _state(module))
        if changes:
            raise fail(f"after an exception inside the forward pass (backend={backend!r}): {'; '.join(changes[:4])}")


def _caused_by_interrupt(error: BaseException | None) -> bool:
    seen = 0
    while error is not None and seen < 20:
        if isinstance(error, _Interrupt) or "raised by check_adapter inside the forward pass" in str(error):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


def _check_backends(adapter: Adapter, batch: Any, sites: Sequence[AttentionSite], model: Any) -> None:
    fail = _failer(adapter, "backends")
    by_hooks, _ = capture_batch(adapter, batch, sites, backend="hooks", model=model)
    try:
        by_nnsight, _ = capture_batch(adapter, batch, sites, backend="nnsight", model=model)
    except Exception as error:  # noqa: BLE001 - any nnsight failure is this check's failure
        raise fail(f"backend='nnsight' failed: {error!r}; set single_forward = False if it cannot apply") from error
    for site in sites:
        for var, value in by_hooks[site.name].items():
            other = by_nnsight[site.name][var]
            if value.shape != other.shape or not torch.equal(value, other):
                diff = float((value.double() - other.double()).abs().max()) if value.shape == other.shape else None
                raise fail(
                    f"site {site.name!r}, {var}: nnsight gives "
                    + (f"values up to {diff:.3g} apart" if diff is not None else f"shape {tuple(other.shape)}")
                    + f" from the hooks' {tuple(value.shape)}"
                )


def check_adapter(
    model: Any,
    adapter: str | Adapter | type[Adapter] | None = None,
    inputs: Any = None,
    *,
    backends: Sequence[str] = ("hooks", "nnsight"),
    atol: float = 1e-5,
    mask: Callable[[int], torch.Tensor] | None = None,
    skip: Sequence[str] = (),
    **adapter_options: Any,
) -> AdapterCheckReport:
    """Check that an adapter records what ``model``'s attention used, where it says (see the module notes).

    Parameters
    ----------
    model : object
        The model (a tiny random-init instance of the real class is enough), in eval mode;
        an nnsight wrapper is traced as it is by the ``backends`` check.
    adapter : str, Adapter, Adapter subclass or None
        The adapter to check; None resolves ``adapter="auto"``.
    inputs : tensor or list of PIL images, optional
        A model-ready batch (or images the adapter preprocesses).  Default: two random
        64 x 48 images through the adapter's ``preprocess``.
    backends : sequence of {"hooks", "nnsight"}
        Backends the ``clean`` check runs and the ``backends`` check compares; nnsight is
        skipped (said in the report) when not installed or when the adapter runs several
        forward passes per batch.
    atol : float
        Largest relative rebuild error accepted (float32 round-off is about 1e-7; use
        about 1e-2 for float16 or bfloat16 models).
    mask : callable, optional
        ``mask(n)``: boolean ``(n, n)`` scores to drop (True) in the rebuild; default a
        causal mask for models whose ``describe()["attention"]`` is ``"causal"``.
    skip : sequence of str
        Checks not to run (named in :data:`CHECKS`), recorded as skipped.
    **adapter_options
        Options of the adapter (``grid=``, ``special_tokens=``, ``timesteps=``, ...).

    Returns
    -------
    AdapterCheckReport

    Raises
    ------
    AdapterCheckError
        The first check that failed, named in the message and in ``.check``.

    Examples
    --------
    >>> from timm.models.vision_transformer import VisionTransformer
    >>> vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2).eval()
    >>> check_adapter(vit, inputs=torch.randn(2, 3, 32, 32)).checks["grid"]
    'passed'
    """
    unknown = set(skip) - set(CHECKS)
    if unknown:
        raise ValueError(f"skip names unknown checks {sorted(unknown)}; the checks are {CHECKS}")
    bad_backends = set(backends) - {"hooks", "nnsight"}
    if bad_backends or not backends:
        raise ValueError(f"backends must be a non-empty subset of ('hooks', 'nnsight'), got {tuple(backends)}")
    torch_model = unwrap(model)
    bound = resolve_adapter(torch_model, "auto" if adapter is None else adapter, **adapter_options)
    module = bound.model_module()
    if inputs is None:
        batch = _default_inputs(bound)
    elif isinstance(inputs, (list, tuple)):
        batch = bound.preprocess(list(inputs))
    else:
        batch = inputs
    batch = to_model(bound, batch)
    # One plain forward pass first: models that set themselves up lazily (a
    # transformer-lens bridge adds its own hooks on its first call) do it before the snapshot.
    pristine = _state(module)
    with bound.forward_context(batch):
        bound.run(batch)
    warmed = _state(module)
    before = {key: value for key, value in pristine.items() if key[1] not in _HOOK_DICTS}
    before.update((key, value) for key, value in warmed.items() if key[1] in _HOOK_DICTS)
    checks: dict[str, str] = {}
    usable = list(backends)
    if "nnsight" in usable:
        reason = _nnsight_unusable(bound)
        if reason:
            usable.remove("nnsight")
            checks["backends"] = f"skipped: {reason}"
    if "hooks" not in usable:
        usable.insert(0, "hooks")
    sites = _check_sites(bound, batch)
    checks["sites"] = "passed"
    errors: dict[str, float] = {}
    if "rebuild" in skip:
        checks["rebuild"] = "skipped: asked"
    else:
        errors = _check_rebuild(bound, batch, mask, atol)
        checks["rebuild"] = "passed"
    checks["grid"] = "skipped: asked" if "grid" in skip else _check_grid(bound, batch, sites)
    if "clean" in skip:
        checks["clean"] = "skipped: asked"
    else:
        _check_clean(bound, batch, sites, usable, model, before)
        checks["clean"] = "passed"
    if "backends" in skip:
        checks["backends"] = "skipped: asked"
    elif "backends" not in checks:
        if "nnsight" in usable:
            _check_backends(bound, batch, sites, model)
            checks["backends"] = "passed"
        else:
            checks["backends"] = "skipped: nnsight not asked for"
    return AdapterCheckReport(adapter=bound.name, checks=checks, rebuild=errors)


def _nnsight_unusable(adapter: Adapter) -> str:
    if not adapter.single_forward:
        return "the adapter runs several forward passes per batch (single_forward = False)"
    try:
        import nnsight  # noqa: F401
    except ImportError:
        return "nnsight is not installed"
    return ""
