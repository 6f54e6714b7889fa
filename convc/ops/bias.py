"""Biases of convolutional layers (section 9.5): how their parameters are shared.

    shared:  Z[n, k, i] += b[k]                one bias per channel (a convolution's usual)
    untied:  Z[n, k, i] += b[k, i]             one per output unit (locally connected layers)
    tiled:   Z[n, k, i] += b[k, i mod t]       cycled over space like tiled kernels (9.10)

``i mod t`` is not affine, so a tiled bias is written over the output positions split as
``i = t·q + r`` (`tile_split`): ``r`` is then the bias index, and the last partial tile of
an axis whose size ``t`` does not divide is a piece of its own. Every index stays affine,
with rectangular ranges, so lowering, contraction and derivation need nothing special.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import sympy

from ..ir.comprehension import Comprehension, Dim
from . import OpContext, index, is_int, per_axis

BIAS_CHOICES = ("shared", "untied", "tiled")
"""The ways a layer's bias may be shared; ``True`` means ``"shared"``, ``False`` none."""


def resolve_bias(bias, ctx: OpContext, choices=BIAS_CHOICES) -> str | bool:
    """The bias choice as ``"shared"``, ``"untied"``, ``"tiled"`` or False (none)."""
    if bias is True or bias is False or bias is None:
        return "shared" if bias else False
    if type(bias).__name__ == "bool_":  # a numpy bool
        return "shared" if bool(bias) else False
    if isinstance(bias, str) and bias in choices:
        return bias
    allowed = ", ".join(repr(c) for c in choices)
    raise ctx.error(f"bias must be True, False or one of {allowed}, found {bias!r}")


def resolve_tiles(tiles, out_sizes, what: str, ctx: OpContext) -> tuple[int, ...]:
    """Per-axis tile counts ``t`` with ``1 <= t <= output size`` (eq. 9.10)."""
    rank = len(out_sizes)
    tiles = per_axis(tiles, rank, what, ctx)
    for axis, (t, size) in enumerate(zip(tiles, out_sizes)):
        if t > size:
            raise ctx.error(f"{what} must fit the output: at most {size} along spatial axis "
                            f"{axis} (output size {tuple(out_sizes)}), found {t}")
    return tiles


def bias_tiles_of(bias, bias_tiles, out_sizes, ctx: OpContext, default=None):
    """The tiles of a tiled bias (``default`` if not given), None for the other choices;
    refuses tiles given for a bias that is not tiled."""
    if bias != "tiled":
        if bias_tiles is not None:
            raise ctx.error(f"bias_tiles is only for bias='tiled', found bias={bias!r} and "
                            f"bias_tiles={bias_tiles!r}")
        return None
    if bias_tiles is None:
        bias_tiles = default
    if bias_tiles is None:
        raise ctx.error("bias='tiled' needs bias_tiles (an int or one int per spatial axis): "
                        "how many biases are cycled along each axis")
    if not (is_int(bias_tiles) or isinstance(bias_tiles, tuple | list)):
        raise ctx.error(f"bias_tiles must be an int or a tuple of ints, found {bias_tiles!r}")
    return resolve_tiles(bias_tiles, out_sizes, "bias_tiles", ctx)


def bias_shape(bias, channels: int, out_sizes, tiles) -> tuple[int, ...]:
    """``(K,)``, ``(K, out...)`` or ``(K, tiles...)``: the bias laid out like the output."""
    if bias == "untied":
        return (channels, *out_sizes)
    if bias == "tiled":
        return (channels, *tiles)
    return (channels,)


@dataclass(frozen=True)
class Piece:
    """A box of output positions: ``free`` ranges, and per axis the output position and
    its phase (the index of the tiled kernel or bias used there)."""

    free: tuple[Dim, ...]
    positions: tuple[sympy.Expr, ...]
    phases: tuple[sympy.Expr, ...]


def tile_split(out_sizes, tiles) -> list[Piece]:
    """The output positions as boxes where ``i mod t`` is affine (eq. 9.10).

    Along an axis of ``O`` positions and ``t`` tiles: ``t = 1`` keeps ``i`` (phase 0);
    ``t = O`` keeps ``i`` (phase ``i``, locally connected); otherwise ``i = t·q + r`` with
    ``q < O // t`` and ``r < t`` (phase ``r``), and, when ``t`` does not divide ``O``, a
    second box for the last partial tile, ``i = t·(O // t) + r`` with ``r < O mod t``.
    Example: ``O = 7, t = 3`` gives ``i = 3q + r`` (q < 2, r < 3) and ``i = 6 + r`` (r < 1).
    The pieces of every axis are combined: up to ``2^rank`` boxes.
    """
    per_axis_options = []
    for a, (size, t) in enumerate(zip(out_sizes, tiles)):
        i, q, r = index(f"i{a}"), index(f"q{a}"), index(f"r{a}")
        if t == 1:
            per_axis_options.append([((Dim(i, 0, size),), i, sympy.Integer(0))])
            continue
        if t == size:
            per_axis_options.append([((Dim(i, 0, size),), i, i)])
            continue
        whole, rest = divmod(size, t)
        full = (((Dim(q, 0, whole), Dim(r, 0, t)), t * q + r, r) if whole > 1
                else ((Dim(r, 0, t),), r, r))
        options = [full]
        if rest:
            options.append(((Dim(r, 0, rest),), t * whole + r, r))
        per_axis_options.append(options)
    pieces = []
    for combo in itertools.product(*per_axis_options):
        pieces.append(Piece(free=tuple(d for dims, _, _ in combo for d in dims),
                            positions=tuple(p for _, p, _ in combo),
                            phases=tuple(ph for _, _, ph in combo)))
    return pieces


def bias_value(bias, name: str, k, piece: Piece) -> sympy.Expr | None:
    """The bias read at channel ``k`` over ``piece`` (None for no bias)."""
    if not bias:
        return None
    b = sympy.IndexedBase(name)
    if bias == "untied":
        return b[(k, *piece.positions)]
    if bias == "tiled":
        return b[(k, *piece.phases)]
    return b[k]


def tiled_bias_comprehensions(out: str, name: str, batch, channels: int, out_sizes,
                              tiles) -> list[Comprehension]:
    """``Z[n, k, i] += b[k, i mod t]`` over every output position, one comprehension per
    piece of `tile_split`: a tiled bias added after the layer's sum (section 9.5)."""
    n, k = index("n"), index("k")
    comps = []
    for piece in tile_split(out_sizes, tiles):
        z = sympy.IndexedBase(out)[(n, k, *piece.positions)]
        value = bias_value("tiled", name, k, piece)
        comps.append(Comprehension(output=z, free=((n, batch), (k, channels), *piece.free),
                                   body=z + value, inside=frozenset({z, value}),
                                   equation="tiled bias, section 9.5"))
    return comps


__all__ = ["BIAS_CHOICES", "Piece", "bias_shape", "bias_tiles_of", "bias_value",
           "resolve_bias", "resolve_tiles", "tile_split", "tiled_bias_comprehensions"]
