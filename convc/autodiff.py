"""Derivation layer: the adjoint of a comprehension is again a comprehension.

Reverse mode over the comprehensions of a graph. For a forward comprehension

    Z[o(F)] = final(init(F) + Σ_R body(F, R))

and one access ``A = T[a(F, R)]`` of an input tensor ``T``, the chain rule gives the
*scatter*  ``dT[a(F, R)] += dZ[o(F)] · final'(acc) · ∂body/∂A``  for every point (F, R).
`gather` turns it around into a comprehension over the indices of ``dT``, which is what a
loop nest can compute without write conflicts, by solving ``a(F, R) = τ`` axis by axis
(`_solve_axis`):

* an axis indexed by one variable, or by an affine split of several (``g·C' + c``: groups),
  keeps those variables as free variables of the adjoint;
* an axis indexed by a variable with coefficient ±1 (a stride-1 output position) has it
  eliminated, ``j = τ + p - d·m``, and summed over the others;
* an axis indexed by ``s·j + d·m - p`` is split by phase (`affine.invert_access`): within
  the phase ``φ`` of ``τ = s·u + φ - p``, ``m = m0 + s'·t`` and ``j = u + c0 - d'·t``;
* a variable that indexes no axis of ``T`` (the output channel, for the input gradient) is
  summed over.

An eliminated variable's range becomes a ``where`` constraint of the adjoint, affine in the
variables left, which lowering turns into floor/ceil loop bounds: no modulo, division or
test is left inside the loops. The kernel gradient g (9.11) needs no solving (each kernel
axis has its own variable, so the output positions become reduced variables); the input
gradient h (9.12-9.13) is the gather above, doing exactly the forward's multiply-adds.

Every gradient starts at 0 (or at the gradient given for an output) and accumulates each
contribution, so a tensor read by several accesses, comprehensions or nodes (shared
weights) gets the sum of its gradients.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import sympy

from .errors import DerivationError
from .ir.affine import (affine_terms, invert_access, is_proven, is_proven_inside,
                        never_meet)
from .ir.comprehension import ACC, Comprehension, Dim, Reduction, row_major
from .ops import estimate


class Names:
    """Names of the tensors derivation makes: ``grad:T``, ``seed:T`` (an output's given
    gradient), ``T.argmax``; one that a graph tensor already has gets a ``~1`` suffix."""

    def __init__(self, taken=()):
        self.taken = set(taken)
        self.made: dict[str, str] = {}

    def __call__(self, wanted: str) -> str:
        if wanted not in self.made:
            name, i = wanted, 1
            while name in self.taken:
                name, i = f"{wanted}~{i}", i + 1
            self.taken.add(name)
            self.made[wanted] = name
        return self.made[wanted]

    def grad(self, tensor: str) -> str:
        return self(f"grad:{tensor}")

    def seed(self, tensor: str) -> str:
        return self(f"seed:{tensor}")


def derive(comps: Sequence[Comprehension], seeds: set[str], wrt: set[str],
           shapes: dict[str, tuple], names: Names) -> tuple[list, dict, list]:
    """The comprehensions computing the gradient of every tensor in ``wrt``.

    ``comps`` is the forward pass in execution order; ``seeds`` are the tensors whose
    gradients are given (as ``names.seed(T)``), and each gradient is ``names.grad(T)``.
    Intermediate gradients are computed where a path leads from a tensor of ``wrt`` to a
    seed. Returns the starting values of every gradient (0, or the seed); what the forward
    pass must also compute, by the tensor it goes with (the argmax of a max); and
    ``(forward comprehension, target, adjoint comprehensions)`` in the order they run.
    """
    needed = _tensors_needing_grad(comps, seeds, wrt)
    steps, saved = [], {}
    for comp in reversed(comps):
        if comp.tensor not in needed or comp.stop_gradient:
            continue
        upstream, pre = _upstream(comp, names)
        if comp.reduction is Reduction.MAX:
            argmax = _argmax(comp, names)
            saved[comp.tensor] = [argmax]
            upstream *= sympy.KroneckerDelta(row_major(comp.reduced), argmax.output)
        for target in comp.inputs():
            if target == comp.tensor:
                _check_accumulates(comp)  # Z += f: Z's gradient passes through unchanged
            elif target in wrt or target in needed:
                cs, masks = _masked(comp, adjoint(comp, target, upstream, shapes, names),
                                    shapes, names)
                saved.setdefault(comp.tensor, []).extend(masks)
                steps.append((comp, target, pre + cs))
                pre = []
    fills = [_copy(names.seed(t), names.grad(t), shapes[t]) if t in seeds
             else zeros(names.grad(t), shapes[t]) for t in sorted(wrt | needed)]
    fills = _seeds_read_in_place(fills, steps, seeds - wrt, names)
    return _first_assigns(fills, steps), saved, steps


def _seeds_read_in_place(fills, steps, seeds, names) -> list[Comprehension]:
    """Drop the copy of a seed into a gradient that nothing else adds to (the output of
    the last layer): the adjoints read the seed itself instead (in ``steps``, in place)."""
    written = {c.tensor for _, _, cs in steps for c in cs}
    alias = {names.grad(t): names.seed(t) for t in seeds if names.grad(t) not in written}
    for i, (comp, target, cs) in enumerate(steps):
        steps[i] = (comp, target, [c.renamed(alias) for c in cs])
    return [f for f in fills if f.tensor not in alias]


def _first_assigns(fills, steps) -> list[Comprehension]:
    """Drop the zeros of a gradient whose first contribution covers all of it, which then
    assigns instead of adding (in ``steps``, in place): one pass over it, not two."""
    first: dict[str, tuple[int, int]] = {}
    for i, (_, _, cs) in enumerate(steps):
        for j, c in enumerate(cs):
            first.setdefault(c.tensor, (i, j))
    kept = []
    for fill in fills:
        where = first.get(fill.tensor)
        if fill.body != 0 or where is None:
            kept.append(fill)
            continue
        i, j = where
        comp, target, cs = steps[i]
        group = _covering(cs, j, [f.stop for f in fill.free])
        assigning = [_as_assignment(c) for c in group]
        if not group or None in assigning:
            kept.append(fill)
            continue
        steps[i] = (comp, target, [*cs[:j], *assigning, *cs[j + len(group):]])
    return kept


def _covering(cs: list[Comprehension], j: int, shape) -> list[Comprehension]:
    """The comprehensions from ``cs[j]`` on that write every element of a tensor of
    ``shape`` once between them (`_write_once`): ``cs[j]`` alone, or the run of them that
    write its tensor (the phases of a strided layer's input gradient); else none."""
    run = list(itertools.takewhile(lambda c: c.tensor == cs[j].tensor, cs[j:]))
    return next((group for group in (run[:1], run) if _write_once(group, shape)), [])


def _as_assignment(comp: Comprehension) -> Comprehension | None:
    """``comp``, which adds to its output, writing ``=`` instead of ``+=`` (the caller
    answers for its writing every element it covers once); None where it cannot."""
    if not all(_leaves_every_point(comp, *constraint) for constraint in comp.where):
        return None
    if (comp.reduction is Reduction.SUM and comp.init == comp.output
            and not comp.body.has(comp.output)):
        return replace(comp, init=None)
    if (comp.reduction is Reduction.NONE and isinstance(comp.body, sympy.Add)
            and comp.output in comp.body.args):
        rest = comp.body - comp.output
        return None if rest.has(comp.output) else replace(comp, body=rest)
    return None


def _leaves_every_point(comp: Comprehension, expr, low, high) -> bool:
    """Whether the constraint ``low <= expr < high`` leaves every point of the free
    variables: it bounds a sum's variables (the sum may be empty, still 0), or it holds
    wherever they are. A sum's variable of one value is that value here, as in the loops
    (a phase's ``0 <= u - t < 5`` with ``t < 1`` bounds ``u``)."""
    single = {d.var: d.start for d in comp.reduced if d.extent == 1}
    expr = sympy.expand(expr.xreplace(single))
    if expr.free_symbols & {d.var for d in comp.reduced}:
        return True
    at_zero, box = _from_zero([d for d in comp.free if d.var in expr.free_symbols])
    return is_proven_inside(sympy.expand(expr.xreplace(at_zero) - low), box, high - low)


def _write_once(comps: list[Comprehension], shape) -> bool:
    """Whether the comprehensions write every element of a tensor of ``shape`` once between
    them: each a distinct element per point of its free variables (every index a
    mixed-radix number of variables of its own, each step at least the span of those
    below it: ``v``, a window that tiles its input's ``s·a + b`` with ``b < s``, a phase's
    ``2·u + 1``), all inside the tensor; no two reach a common element
    (`affine.never_meet`); and their points add up to its size."""
    total = sympy.Integer(0)
    for comp in comps:
        if len(comp.output.indices) != len(shape):
            return False
        at_zero, box = _from_zero(comp.free)
        used = []
        for index, size in zip(comp.output.indices, shape):
            index = sympy.expand(index.xreplace(at_zero))
            coeffs, _ = affine_terms(index, list(box))
            if not _digits(coeffs, box) or not is_proven_inside(index, box, size):
                return False
            used += list(coeffs)
        if sorted(used, key=str) != sorted(box, key=str):
            return False
        total += sympy.Mul(*(d.stop for d in box.values()))
    variables = sorted({d.var for c in comps for d in c.free}, key=str)
    return (sympy.expand(total - sympy.Mul(*shape)) == 0
            and all(never_meet(a.output, b.output, variables)
                    for a, b in itertools.combinations(comps, 2)))


def _digits(coeffs: dict, box: dict) -> bool:
    """Whether an index with these coefficients is a mixed-radix number of its variables
    (from 0, in ``box``): each coefficient at least the span the smaller ones cover."""
    span = sympy.Integer(1)
    for v, c in sorted(coeffs.items(), key=lambda vc: estimate(vc[1])):
        if not is_proven(c >= span):
            return False
        span = c * box[v].stop
    return True


def _from_zero(dims) -> tuple[dict, dict]:
    """The substitution counting each of ``dims`` from 0, and the box it then spans."""
    return ({d.var: d.var + d.start for d in dims},
            {d.var: Dim(d.var, 0, d.extent) for d in dims})


def _masked(comp: Comprehension, cs: list[Comprehension], shapes, names
            ) -> tuple[list[Comprehension], list[Comprehension]]:
    """Adjoints that read an input of ``comp`` only to test it (a ReLU's ``x > 0``) read a
    mask instead: the outcome of the test, one byte per element, which the forward pass
    computes beside ``comp``. The backward pass then keeps the mask, not a copy of ``x``."""
    masks = []
    for tensor in sorted(set(comp.inputs()) - {comp.tensor}):
        if any(c.fill_of(tensor) is not None for c in cs):
            continue  # a test of the padding would need a fill of its own
        tests = [r for c in cs for r in _tests_of(c, tensor)]
        reads = {a for c in cs for a in c.accesses() if str(a.base.label) == tensor}
        if not tests or reads - {a for r in tests for a in r.atoms(sympy.Indexed)}:
            continue  # untested, or read for its value too: the tensor itself is kept
        kinds = {_canonical(r) for r in tests}
        if len(kinds) != 1:
            continue
        (kind,) = kinds
        mask = zeros(names(f"{comp.tensor}.mask"), shapes[tensor])
        value = sympy.IndexedBase(tensor)[mask.output.indices]
        masks.append(replace(mask, body=sympy.Piecewise((1, kind(value)), (0, True)),
                             inside=frozenset({value}), dtype="uint8"))
        base = mask.output.base
        cs = [_retest(c, tensor, base) for c in cs]
    return cs, masks


def _tests_of(comp: Comprehension, tensor: str) -> list:
    """The tests ``T[i] <op> constant`` of ``tensor`` in ``comp``'s conditions."""
    return [r for e in (comp.body, comp.init, comp.final) if e is not None
            for pw in e.atoms(sympy.Piecewise) for r in _tests_in(pw, tensor)]


def _canonical(relation):
    """``T[i] > 0`` as the function ``v -> v > 0``."""
    (access,) = relation.atoms(sympy.Indexed)
    v = sympy.Dummy("v")
    test = relation.xreplace({access: v})
    return sympy.Lambda(v, test)


def _retest(comp: Comprehension, tensor: str, mask) -> Comprehension:
    """``comp`` with each test of ``tensor`` read from ``mask``; ``Piecewise((1, test), (0,
    True))``, a ReLU's derivative, becomes the mask itself."""
    def flag(relation):
        (access,) = relation.atoms(sympy.Indexed)
        return mask[access.indices]

    def sub(e):
        if e is None:
            return None
        swaps = {}
        for pw in e.atoms(sympy.Piecewise):
            tests = _tests_in(pw, tensor)
            if len(tests) == 1 and pw.args == ((1, tests[0]), (0, True)):
                swaps[pw] = flag(tests[0])
            elif tests:
                swaps[pw] = pw.xreplace({r: sympy.Ne(flag(r), 0) for r in tests})
        return e.xreplace(swaps)

    body = sub(comp.body)
    flags = {a for a in body.atoms(sympy.Indexed) if a.base == mask}
    return replace(comp, body=body, init=sub(comp.init), final=sub(comp.final),
                   inside=comp.inside | flags)


def _tests_in(expr, tensor: str) -> list:
    """The relations in ``expr`` that read one element of ``tensor`` and nothing else that
    varies."""
    found = []
    for r in expr.atoms(sympy.core.relational.Relational):
        accesses = r.atoms(sympy.Indexed)
        if (len(accesses) == 1 and str(next(iter(accesses)).base.label) == tensor
                and r.free_symbols <= next(iter(accesses)).free_symbols):
            found.append(r)
    return found


def _check_accumulates(comp: Comprehension) -> None:
    """A comprehension may read its own output only as ``Z[o] = Z[o] + ...``."""
    reads = {a for a in comp.accesses() if str(a.base.label) == comp.tensor}
    accumulates = (comp.reduction is Reduction.SUM and comp.init == comp.output) or (
        comp.reduction is Reduction.NONE and comp.body.is_Add and comp.output in comp.body.args)
    if reads != {comp.output} or not accumulates:
        raise DerivationError(f"{comp.tensor}: a comprehension that reads its own output "
                              f"other than to add to it cannot be differentiated")


def _argmax(comp: Comprehension, names: Names) -> Comprehension:
    """Where the first maximum of each window is: the gradient of a max goes there only.

    Kept in one byte when the window has at most 255 cells (-1, no maximum, becomes 255,
    which no cell's position equals), else in int64."""
    index = sympy.IndexedBase(names(f"{comp.tensor}.argmax"))[comp.output.indices]
    cells = sympy.Mul(*[d.extent for d in comp.reduced])
    small = cells.is_number and cells <= 255
    return Comprehension(output=index, free=comp.free, reduced=comp.reduced,
                         reduction=Reduction.ARGMAX, body=comp.body, fill=comp.fill,
                         where=comp.where, equation=comp.equation,
                         dtype="uint8" if small else None)


def _tensors_needing_grad(comps, seeds: set[str], wrt: set[str]) -> set[str]:
    """Tensors on a path from ``wrt`` to a seed (their gradients must be computed)."""
    reaches_wrt = set(wrt)
    for c in comps:
        if not c.stop_gradient and set(c.inputs()) & reaches_wrt:
            reaches_wrt.add(c.tensor)
    reaches_seed = set(seeds)
    for c in reversed(comps):
        if c.tensor in reaches_seed and not c.stop_gradient:
            reaches_seed |= set(c.inputs())
    return reaches_wrt & reaches_seed


def adjoint(comp: Comprehension, target: str, upstream: sympy.Expr, shapes,
            names: Names) -> list[Comprehension]:
    """Comprehensions adding the gradient through ``comp`` to ``grad:target``.

    ``upstream`` is the gradient of ``comp``'s output point, from `_upstream`.
    """
    out = []
    for role, expr, domain in _terms(comp):
        for access in sorted(expr.atoms(sympy.Indexed), key=sympy.default_sort_key):
            if str(access.base.label) != target:
                continue
            local = _partial(expr, access)
            if local == 0:
                continue
            out += gather(upstream * local, access, domain, comp, shapes[target], role,
                          output=names.grad(target))
    return out


def _terms(comp: Comprehension):
    """(role, expression, domain) of each part of ``comp`` that reads inputs."""
    if comp.reduction is Reduction.NONE:
        return [("body", comp.body, comp.free)]
    terms = [("body", comp.body, comp.free + comp.reduced)]
    if comp.init is not None:
        terms.append(("init", comp.init, comp.free))
    return terms


def _partial(expr: sympy.Expr, access: sympy.Indexed) -> sympy.Expr:
    """∂expr/∂access, other accesses held fixed; ReLU's step is 0 at 0, not sympy's 1/2."""
    x = sympy.Dummy("x", real=True)
    d = sympy.diff(expr.xreplace({access: x}), x)
    d = d.replace(sympy.Heaviside, lambda a, *_: sympy.Piecewise((1, a > 0), (0, True)))
    return d.xreplace({x: access})


def _upstream(comp: Comprehension, names: Names) -> tuple[sympy.Expr, list[Comprehension]]:
    """``dZ[o(F)]·final'(acc)`` as an expression of the free variables.

    When ``final`` is not the identity its derivative is computed once per output point
    into a scratch tensor ``grad:Z.acc``, written in terms of the saved output ``Z`` (for
    ``sqrt(acc)``, ``1/(2·Z)``); a point where that is singular (a zero norm) gets 0.
    """
    dz = sympy.IndexedBase(names.grad(comp.tensor))[comp.output.indices]
    if comp.final is None:
        return dz, []
    z = comp.output
    deriv = sympy.diff(comp.final, ACC)
    deriv = deriv.subs(comp.final, z) if deriv.has(ACC) else deriv
    if deriv.has(ACC) and comp.final.is_Pow and comp.final.base == ACC:
        # Z = acc^e with acc >= 0 (an Lp norm's sum of |v|^p): acc^(e-1) = Z^((e-1)/e),
        # which subs cannot find when (e-1)/e is not an integer (p = 1.5: Z^(-1/2))
        e = comp.final.exp
        deriv = e * z ** ((e - 1) / e)
    if deriv.has(ACC):
        raise DerivationError(f"{comp.tensor}: cannot express the derivative of "
                              f"{comp.final} through the output")
    value = dz * deriv
    loop_vars = {d.var for d in comp.variables}
    if not deriv.has(sympy.Indexed) and not deriv.free_symbols & loop_vars:
        return value, []  # a constant factor such as 1/N
    if any(p.exp.is_negative for p in deriv.atoms(sympy.Pow) if p.base == z):
        value = sympy.Piecewise((value, sympy.Ne(z, 0)), (0, True))
    free = [d.var for d in comp.free] or [0]
    name = names.grad(f"{comp.tensor}.acc")
    acc_grad = sympy.IndexedBase(name)[free]
    pre = Comprehension(output=acc_grad, free=comp.free, body=value,
                        inside=frozenset(value.atoms(sympy.Indexed)))
    return acc_grad, [pre]


def _copy(source: str, name: str, shape: tuple) -> Comprehension:
    """``name[...] = source[...]``: a gradient that starts from the one given."""
    start = zeros(name, shape)
    value = sympy.IndexedBase(source)[start.output.indices]
    return replace(start, body=value, inside=frozenset({value}))


def zeros(name: str, shape: tuple) -> Comprehension:
    """``name[...] = 0`` over ``shape``: where a gradient starts accumulating."""
    ds = [sympy.Symbol(f"d{i}", integer=True, nonnegative=True) for i in range(len(shape))]
    out = sympy.IndexedBase(name)[ds] if ds else sympy.IndexedBase(name)[0]
    return Comprehension(output=out, free=tuple(zip(ds, shape)), body=sympy.Integer(0))


# -- scatter to gather ---------------------------------------------------------------------


def gather(term: sympy.Expr, access: sympy.Indexed, domain: Sequence[Dim],
           comp: Comprehension, shape: tuple, role: str, output: str) -> list[Comprehension]:
    """``output[a(v)] += term(v)`` for every ``v`` of ``domain`` (and of ``comp.where``)
    where ``a`` is ``access``'s index, as gather comprehensions."""
    single = {d.var: d.start for d in domain if d.extent == 1}  # a 1-wide range is a constant
    where = list(comp.where)
    if single:
        term, access = term.xreplace(single), access.xreplace(single)
        where = [(e.xreplace(single), lo, hi) for e, lo, hi in where]
        domain = [d for d in domain if d.var not in single]
    dims = {d.var: d for d in domain}
    owner: dict[sympy.Symbol, int] = {}
    for axis, idx in enumerate(access.indices):
        for v in affine_terms(idx, list(dims))[0]:
            if v in owner:
                raise DerivationError(f"{comp.tensor}: variable {v} indexes two axes of "
                                      f"{access}; its gradient cannot be gathered")
            owner[v] = axis
    forward_free = {d.var for d in comp.free}
    options = [_solve_axis(axis, idx, size, dims, forward_free, comp, access)
               for axis, (idx, size) in enumerate(zip(access.indices, shape))]
    summed = tuple(d for d in domain if d.var not in owner)
    equation = _equation(comp, comp.fill_of(str(access.base.label)), role)
    out = []
    for choice in itertools.product(*options):
        if any(c is None for c in choice):
            continue  # a phase no point reaches: its gradient stays 0
        subs = {k: v for c in choice for k, v in c.subs.items()}
        body = term.xreplace(subs)
        target = sympy.IndexedBase(output)[tuple(c.index for c in choice)]
        reduced = summed + tuple(d for c in choice for d in c.reduced)
        inside = {a for a in body.atoms(sympy.Indexed)
                  if comp.fill_of(str(a.base.label)) is None}
        out.append(Comprehension(
            output=target,
            free=tuple(d for c in choice for d in c.free),
            reduced=reduced,
            reduction=Reduction.SUM if reduced else Reduction.NONE,
            body=body if reduced else target + body,
            init=target if reduced else None,
            fill=comp.fill,
            equation=equation,
            where=tuple((e.xreplace(subs), lo, hi) for e, lo, hi in where)
            + tuple(w for c in choice for w in c.where),
            inside=frozenset(inside | {target}),
        ))
    return out


def _equation(comp: Comprehension, fill, role: str) -> str:
    """The chapter's name for an adjoint: 9.11 (kernel) and 9.13 (input) for convolutions."""
    if comp.equation in ("eq. 9.7", "eq. 9.8") and role == "body":
        return "eq. 9.13" if fill is not None else "eq. 9.11"
    return f"adjoint of {comp.equation}" if comp.equation else "adjoint"


@dataclass(frozen=True)
class AxisSolution:
    """One way to write ``a(v) = τ`` on one axis of the gradient tensor.

    ``index`` is the gradient's index on that axis, in the adjoint's free variables;
    ``subs`` replaces the forward variables it eliminated, and ``where`` keeps the ranges
    they had.
    """

    free: tuple[Dim, ...] = ()
    reduced: tuple[Dim, ...] = ()
    subs: dict = field(default_factory=dict)
    index: sympy.Expr = sympy.Integer(0)
    where: tuple = ()


def _solve_axis(axis, idx, size, dims, forward_free, comp, access) -> list[AxisSolution | None]:
    """The ways to write ``idx = τ`` for the adjoint's index ``τ`` on one axis.

    * no variable: a constant index;
    * one variable, or a mixed-radix split ``g·C' + c``: the variables stay free;
    * a forward output position with coefficient ±1 (stride 1): it is eliminated and the
      others (the kernel taps) are summed over;
    * ``s·j + d·m - p``: one solution per phase of ``τ + p`` modulo ``s`` (9.13), the
      polyphase form whose inner loops are dense;
    * otherwise a variable with coefficient ±1 is eliminated.
    """
    coeffs, const = affine_terms(idx, list(dims))
    if not coeffs:  # every point reads one cell: inside the tensor, or only padding
        if is_proven(const >= 0) and is_proven(const < size):
            return [AxisSolution(index=const)]
        if is_proven(const < 0) or is_proven(const >= size):
            return [None]
        raise DerivationError(f"{comp.tensor}: cannot tell whether {access} is inside "
                              f"{access.base.label}")
    inside = is_proven_inside(idx, {v: dims[v] for v in coeffs}, size)
    if len(coeffs) == 1 or _is_radix(coeffs, dims):
        order = sorted(coeffs, key=lambda v: -coeffs[v])
        where = () if inside else ((idx, sympy.Integer(0), size),)
        return [AxisSolution(free=tuple(dims[v] for v in order), index=idx, where=where)]
    units = sorted((v for v in coeffs if abs(coeffs[v]) == 1),
                   key=lambda v: (v not in forward_free, str(v)))
    if units and units[0] in forward_free:
        return [_eliminate(axis, units[0], idx, coeffs, size, dims)]
    if len(coeffs) == 2 and all(c.is_positive for c in coeffs.values()):
        return _phases(axis, coeffs, const, size, dims, forward_free, comp)
    if units:
        return [_eliminate(axis, units[0], idx, coeffs, size, dims)]
    raise DerivationError(f"{comp.tensor}: cannot invert the access {access} on axis {axis}")


def _eliminate(axis, v, idx, coeffs, size, dims) -> AxisSolution:
    """``idx = τ`` solved for ``v`` (coefficient ±1): ``τ`` free, the others summed over."""
    tau = sympy.Symbol(f"j{axis}", integer=True, nonnegative=True)
    value = (tau - (idx - coeffs[v] * v)) / coeffs[v]
    others = tuple(dims[w] for w in coeffs if w != v)
    return AxisSolution(free=(Dim(tau, 0, size),), reduced=others, subs={v: value},
                        index=tau, where=((value, dims[v].start, dims[v].stop),))


def _is_radix(coeffs, dims) -> bool:
    """Whether ``Σ c_v·v`` is a mixed-radix number: each place's extent is the next's step."""
    step = sympy.Integer(1)
    for v in sorted(coeffs, key=lambda v: coeffs[v]):
        if coeffs[v] != step or dims[v].start != 0:
            return False
        step *= dims[v].extent
    return True


def _phases(axis, coeffs, const, size, dims, forward_free, comp) -> list[AxisSolution | None]:
    """``s·j + d·m - p = τ`` with ``s, d > 1``: one solution per phase ``(τ + p) mod s``.

    Within a phase ``τ = s·u + φ - p``, ``m = m0 + s'·t`` and ``j = u + c0 - d'·t``
    (`affine.invert_access`); ``u`` is free, ``t`` summed over, and the ranges of ``j`` and
    ``m`` become the constraints that lowering turns into the bounds of ``t``.
    """
    j, m = sorted(coeffs, key=lambda v: (v not in forward_free, -coeffs[v], str(v)))
    for v in (j, m):
        if dims[v].start != 0:
            raise DerivationError(f"{comp.tensor}: {v} must start at 0 to be solved for")
    u = sympy.Symbol(f"u{axis}", integer=True, nonnegative=True)
    t = sympy.Symbol(f"t{axis}", integer=True, nonnegative=True)
    s, d = int(coeffs[j]), int(coeffs[m])
    options: list[AxisSolution | None] = []
    for ph in invert_access(s, d, -const, dims[j].stop, dims[m].stop, size):
        if ph.empty:
            options.append(None)
            continue
        rename = {ph.u: u, ph.t: t}
        m_of_t, j_of_ut = ph.m.xreplace(rename), ph.j.xreplace(rename)
        step = m_of_t.coeff(t)
        m0 = m_of_t - step * t
        t_stop = sympy.ceiling((dims[m].stop - m0) / step)
        options.append(AxisSolution(
            free=(Dim(u, ph.u_start, ph.u_stop),),
            reduced=(Dim(t, 0, t_stop),),
            subs={j: j_of_ut, m: m_of_t},
            index=ph.i.xreplace(rename),
            where=((j_of_ut, sympy.Integer(0), dims[j].stop),),
        ))
    return options
