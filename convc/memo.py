"""Lowered graphs kept on disk, so that a compile from the cache skips the lowering.

A library is cached under a hash of its C text (`convc.build`), and the C text is what
lowering makes: without this module a compile found in the cache still lowered the graph
(derivation, schedules, C) only to learn the key. Here the whole `Lowered` is pickled into
the cache directory as ``lowered-<hash>.pickle``, under a hash of everything lowering reads:

- the graph: its name, its outputs and every node (op and its fields, a constant's values,
  shapes, and the ``file:line`` that made it, which errors quote);
- the options of `convc.lower`, with the thread count resolved (the default is the cores
  this process may use);
- convc's own Python sources, so that another convc never reads an entry of this one, and
  the versions of Python and of the libraries whose objects the pickle holds.

An entry that cannot be read is lowered again and written over; a graph whose lowering
raises is not kept. A lowering read back has one stage in its ``timings``, the lookup
(``CONVC_DEBUG=1`` prints it).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import pickle
import platform
from dataclasses import replace
from pathlib import Path

import networkx
import numpy
import sympy

from .build import cache_dir, write_atomically
from .graph import Graph
from .pipeline import Lowered, lower, resolve_threads, stage

log = logging.getLogger("convc")


def lowered(graph: Graph, dtype: str = "float32", *, grad=False, algorithm: str = "auto",
            num_threads: int | None = None, profile: bool = False, tuned=None,
            sizes: dict[str, int] | None = None) -> Lowered:
    """`convc.lower` with the same arguments, read from the cache when it was done before.

    Examples
    --------
    >>> import convc
    >>> g = convc.Graph("doc")
    >>> g.output(g.relu(g.input("x", (None, 3))))
    >>> lowered(g).source == lowered(g).source == convc.lower(g).source
    True
    """
    options = dict(grad=grad, algorithm=algorithm, num_threads=num_threads, profile=profile,
                   tuned=tuned, sizes=sizes)
    if not isinstance(graph, Graph):
        return lower(graph, dtype, **options)  # which says what is wrong
    path = cache_dir() / f"lowered-{_key(graph, dtype, options)[:32]}.pickle"
    timings: dict[str, float] = {}
    with stage("cache lookup", timings):
        found = _read(path)
    if found is not None:
        return replace(found, timings=timings)  # not the stages of the first lowering
    result = lower(graph, dtype, **options)
    try:
        data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        log.debug("the lowering of %s is not kept: %s", graph.name, exc)
        return result
    write_atomically(path, data)
    return result


def _key(graph: Graph, dtype: str, options: dict) -> str:
    options = dict(options, num_threads=resolve_threads(options["num_threads"]))
    text = repr((graph.name, graph.outputs, graph.nodes(), dtype, sorted(options.items()),
                 _sources()))
    return hashlib.sha256(text.encode()).hexdigest()


def _read(path: Path) -> Lowered | None:
    """The lowering kept at ``path``, or None when there is none or it cannot be read."""
    try:
        with open(path, "rb") as f:
            found = pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged entry of any kind is lowered again
        log.warning("cached lowering %s is damaged (%s: %s); lowering again",
                    path.name, type(exc).__name__, exc)
        return None
    if not isinstance(found, Lowered):
        log.warning("cached lowering %s holds a %s; lowering again", path.name,
                    type(found).__name__)
        return None
    log.debug("read the lowering of %s from %s", found.graph.name, path.name)
    return found


@functools.cache
def _sources() -> str:
    """The fingerprint of this convc, read once per process."""
    return _fingerprint(Path(__file__).parent)


def _fingerprint(package: Path) -> str:
    """A hash of the Python sources under ``package`` and of the versions of Python and of
    the libraries whose objects a pickled lowering holds."""
    digest = hashlib.sha256(repr((platform.python_version(), sympy.__version__,
                                  numpy.__version__, networkx.__version__)).encode())
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
