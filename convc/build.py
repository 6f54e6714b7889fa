"""Build: generated C text -> a loaded cffi extension module, cached by content.

The last stage of the pipeline. It takes one C99 translation unit from `codegen` and the
declarations of its entry points, compiles them together with the C runtime (`runtime/`) into
one shared library, imports it, and returns a `Library`.

The cache
---------
Each library lives in a directory named by its key, a sha256 over everything that can change
the binary (the tuple in `_Job.of`)::

    <cache_dir()>/
        <key>/                       a published build; never changed once published
            _convc_<key[:16]><EXT_SUFFIX>    the shared library, imported as _convc_<key[:16]>
            kernel.c                 the generated C, kept for the reader
            manifest.json            key, size and sha256 of the library, compile commands
        failed-<key[:16]>/           the last build of that key the compiler rejected:
            kernel.c, compiler.log   its sources and the compiler's full diagnostics
        runtime-<hash>/              the runtime's object files for one compiler and its
                                     flags, linked into every library built with them
        lowered-<hash>.pickle        a graph lowered to C, for a compile from the cache to
                                     skip the lowering (`convc.memo`)
        tmp-*/                       builds in progress

A build runs in a fresh temporary directory inside the cache and is published by renaming
that directory to its key, so other processes see either nothing or a complete build. When
several processes build the same key at once, the first rename wins and the others discard
their copy and load the winner's. Before loading, the library is checked against its manifest;
an entry that fails the check (truncated, overwritten, manifest lost) is moved aside and built
again.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import importlib.util
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cffi

import convc
from convc.errors import CompileError

log = logging.getLogger("convc")

_BASE_FLAGS = ("-O3", "-fPIC")
_SANITIZE_FLAGS = (
    "-fsanitize=address,undefined",
    "-fno-omit-frame-pointer",
    "-fno-sanitize-recover=undefined",
    "-O1",
    "-g",
)
# The generated C and the runtime are strict C99; ISO mode would also forbid fusing a*b + c
# into one FMA instruction, which is both faster and more accurate, and have sqrt and the
# other math functions set errno, which nothing reads and which keeps their loops from
# vectorising.
_KERNEL_FLAGS = ("-std=c99", "-Wall", "-ffp-contract=fast", "-fno-math-errno")
_TARGETS = {
    "native": ("-march=native",),  # this machine's vector width (AVX-512 where it has it)
    "portable": (),  # the compiler's baseline: still vectorised (SSE2 on x86-64)
    "scalar": ("-fno-tree-vectorize", "-DCONVC_SCALAR"),  # no vectors at all
}
_KERNEL_C = "kernel.c"
_API_H = "api.h"
_WRAPPER_C = "_cffi_wrapper.c"
_MANIFEST = "manifest.json"
_DIAGNOSTIC_LINES = 20
_ENTRY_NAME = re.compile(
    r"[0-9a-f]{64}|failed-[0-9a-f]{16}|runtime-[0-9a-f]{16}|compiler-[0-9a-f]{16}\.json"
    r"|lowered-[0-9a-f]{32}\.pickle"
    r"|tmp-.*|\.trash-.*")

_lock = threading.Lock()
_loaded: dict[tuple[Path, str], Library] = {}
_compiler_versions: dict[tuple[str, ...], str] = {}


@dataclass(frozen=True)
class Library:
    """A compiled and imported module of generated code.

    Attributes
    ----------
    key : str
        The full sha256 hex digest the build is cached under.
    path : Path
        The loaded shared library.
    source_path : Path
        The generated C, kept beside the library.
    module : types.ModuleType
        The cffi extension module: ``module.ffi`` and ``module.lib``.
    """

    key: str
    path: Path
    source_path: Path
    module: types.ModuleType


def build_library(
    source: str, cdef: str, *, sanitize: bool = False, cflags: Sequence[str] = ()
) -> Library:
    r"""Compile generated C with the runtime into a shared library and import it, with caching.

    Parameters
    ----------
    source : str
        One C99 translation unit, starting with ``#include "convc_runtime.h"``.
    cdef : str
        C prototypes of the functions to expose to Python. They are also included ahead of
        `source` when it is compiled, so a prototype that disagrees with its definition is a
        compile error rather than a wrong call.
    sanitize : bool
        Build with AddressSanitizer and UBSan. Loading such a library needs the ASan runtime
        preloaded into Python (``LD_PRELOAD=$(cc -print-file-name=libasan.so)``).
    cflags : sequence of str
        Extra compiler flags for the generated C and the link, such as ``("-fopenmp",)``.

    Returns
    -------
    Library
        The same object for the same inputs within one process.

    Raises
    ------
    CompileError
        No C compiler was found, or it rejected the source; the message gives the first
        diagnostics and where the C was kept.

    Examples
    --------
    >>> source = '#include "convc_runtime.h"\nint64_t half_down(int64_t a) '
    >>> source += '{ return convc_floordiv(a, 2); }\n'
    >>> library = build_library(source, "int64_t half_down(int64_t a);")
    >>> library.module.lib.half_down(-3)
    -2
    """
    if isinstance(cflags, str) or not all(isinstance(flag, str) for flag in cflags):
        raise TypeError(f"cflags must be a sequence of strings, like ('-fopenmp',); got {cflags!r}")
    job = _Job.of(source, cdef, sanitize, tuple(cflags))
    with _lock:
        root = _cache_root()
        library = _loaded.get((root, job.key))
        if library is None:
            if sanitize:
                _require_sanitizer_runtime()
            library = _load_or_build(cache_dir(), job)
            _loaded[(root, job.key)] = library
        return library


def cache_dir() -> Path:
    """The cache directory, created (private to the user, mode 0o700) if missing.

    ``$CONVC_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/convc``, else ``~/.cache/convc``.

    Examples
    --------
    >>> cache_dir().is_dir()
    True
    """
    root = _cache_root()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def clear_cache() -> None:
    """Remove every build from the cache directory, and forget the ones loaded in this process.

    Only entries that convc made are removed, so a cache directory pointed at by mistake keeps
    its other files. Libraries already loaded keep working.

    Examples
    --------
    >>> clear_cache()  # doctest: +SKIP
    """
    root = _cache_root()
    with _lock:
        _loaded.clear()
        if not root.is_dir():
            return
        for entry in list(root.iterdir()):
            if not _ENTRY_NAME.fullmatch(entry.name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                _discard(entry)
            else:
                entry.unlink(missing_ok=True)


def runtime_dir() -> Path:
    """The directory that holds ``convc_runtime.h`` and the runtime's C sources.

    Examples
    --------
    >>> (runtime_dir() / "convc_runtime.h").is_file()
    True
    """
    return _find_runtime_dir()


# --- the key -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """One build's inputs and the key they hash to."""

    key: str
    source: str
    cdef: str
    cc: tuple[str, ...]
    flags: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, source: str, cdef: str, sanitize: bool, cflags: tuple[str, ...]) -> _Job:
        cc = _find_compiler()
        flags = _flags(sanitize, target_flags(cc) + cflags)
        # Everything that can change the library, listed in one tuple.
        parts = (
            ("convc", convc.__version__),
            ("source", source),
            ("cdef", cdef),
            ("runtime", _runtime_fingerprint(runtime_dir())),
            ("compiler", cc, _compiler_version(cc)),
            ("cpu", _cpu_signature() if "-march=native" in flags["kernel"] else ""),
            ("flags", tuple(flags.items())),
            ("cffi", cffi.__version__),
            ("ext_suffix", sysconfig.get_config_var("EXT_SUFFIX")),
            ("sanitize", bool(sanitize)),
        )
        key = hashlib.sha256(repr(parts).encode()).hexdigest()
        return cls(key, source, cdef, cc, flags)

    @property
    def name(self) -> str:
        """The module's import name, which the library's init function carries."""
        return f"_convc_{self.key[:16]}"

    @property
    def library_name(self) -> str:
        return self.name + sysconfig.get_config_var("EXT_SUFFIX")


def _cache_key(
    source: str, cdef: str, *, sanitize: bool = False, cflags: Sequence[str] = ()
) -> str:
    """The key `build_library` would use, without building."""
    return _Job.of(source, cdef, sanitize, tuple(cflags)).key


def _flags(sanitize: bool, cflags: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Flags per step; later flags win, so sanitizing lowers -O3 and user flags come last."""
    common = _BASE_FLAGS + (_SANITIZE_FLAGS if sanitize else ())
    return {
        "kernel": (*common, *_KERNEL_FLAGS, *cflags),
        "wrapper": common,
        "link": ("-shared", *common, *cflags),
    }


@functools.cache
def _runtime_fingerprint(directory: Path) -> tuple[tuple[str, str], ...]:
    files = sorted(p for p in directory.iterdir() if p.suffix in (".c", ".h"))
    return tuple((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files)


@functools.cache
def _find_runtime_dir() -> Path:
    package = Path(__file__).resolve().parent
    # Installed, the runtime is the package data convc/runtime; in a source tree it sits
    # beside the package.
    for candidate in (package / "runtime", package.parent / "runtime"):
        if (candidate / "convc_runtime.h").is_file():
            return candidate
    raise CompileError(
        f"convc's C runtime (convc_runtime.h) was not found in {package / 'runtime'}; "
        "the installation is incomplete, reinstall convc"
    )


def target() -> str:
    """The code target: ``$CONVC_TARGET`` (``native``, ``portable`` or ``scalar``), by default
    ``native`` where the compiler can tune for this machine, else ``portable``.

    Examples
    --------
    >>> target() in ("native", "portable", "scalar")
    True
    """
    chosen = os.environ.get("CONVC_TARGET", "").strip()
    if chosen:
        if chosen not in _TARGETS:
            raise CompileError(f"CONVC_TARGET must be one of {tuple(_TARGETS)}, found {chosen!r}")
        return chosen
    return "native" if _accepts(_find_compiler(), _TARGETS["native"]) else "portable"


def target_flags(cc: tuple[str, ...]) -> tuple[str, ...]:
    """The flags of `target`, and two of GCC's where the compiler takes them:
    ``-fno-tree-loop-distribute-patterns`` (a copy of a few elements stays an inline loop
    instead of becoming a call to memcpy: the rows of a packed 8x8 image are 8 floats) and
    ``--param=vect-partial-vector-usage=2`` (with AVX-512, the iterations a vectorised loop
    leaves over run as one masked vector, not an epilogue of narrower vectors and scalars:
    a depthwise 3x3 layer's 54-column interior rows, 1.30 -> 1.14 ms forward)."""
    gcc = [f for f in (("-fno-tree-loop-distribute-patterns",),
                       ("--param=vect-partial-vector-usage=2",)) if _accepts(cc, f)]
    return _TARGETS[target()] + tuple(f for flags in gcc for f in flags) + openmp_flags(cc)


def openmp_flags(cc: tuple[str, ...]) -> tuple[str, ...]:
    """``-fopenmp`` where the compiler has OpenMP, else what silences its pragmas: then
    every module runs on one thread."""
    return ("-fopenmp",) if _accepts(cc, ("-fopenmp",)) else ("-Wno-unknown-pragmas",)


@functools.cache
def _accepts(cc: tuple[str, ...], flags: tuple[str, ...]) -> bool:
    """Whether ``cc`` compiles an empty file with ``flags`` (remembered, see `_remembered`)."""
    return _remembered(cc, f"accepts {shlex.join(flags)}", lambda: _probe(cc, flags))


def _remembered(cc: tuple[str, ...], fact: str, compute):
    """A fact about the compiler (its version, whether it takes some flags), found once per
    compiler binary and kept in the cache directory, so that a new process loading a cached
    module runs no compiler at all."""
    path = _facts_path(cc)
    try:
        facts = json.loads(path.read_text())
    except (OSError, ValueError):
        facts = {}
    if fact not in facts:
        facts[fact] = compute()
        write_atomically(path, json.dumps(facts, indent=1).encode())
    return facts[fact]


def write_atomically(path: Path, data: bytes) -> None:
    """Write a file of the cache so that a reader sees the old contents or the new, never a
    part: written beside it under a temporary name, then renamed over it."""
    temporary = path.with_name(f"tmp-{uuid.uuid4().hex}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _facts_path(cc: tuple[str, ...]) -> Path:
    """``compiler-<hash>.json``, the hash over the command and its binary's path, size and
    modification time: another or an updated compiler is probed again."""
    binary = Path(shutil.which(cc[0]) or cc[0]).resolve()
    stat = binary.stat()
    identity = repr((cc, str(binary), stat.st_size, stat.st_mtime_ns))
    return cache_dir() / f"compiler-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.json"


def _probe(cc: tuple[str, ...], flags: tuple[str, ...]) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp, "probe.c")
        probe.write_text("int convc_probe;\n")
        try:
            proc = subprocess.run([*cc, *flags, "-c", str(probe), "-o", str(Path(tmp, "p.o"))],
                                  capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0


def machine_signature() -> str:
    """This machine as far as timings go: its CPU and the build target (for tuning)."""
    return f"{_cpu_signature()}-{target()}"


@functools.cache
def _cpu_signature() -> str:
    """What ``-march=native`` tunes for: the CPU's model and feature flags, hashed. A cache
    directory shared by machines then never hands one a library built for another."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [line for line in info.splitlines() if line.startswith(("model name", "flags"))]
        text = "\n".join(sorted(set(lines)))
    except OSError:
        text = platform.machine() + platform.processor()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _find_compiler() -> tuple[str, ...]:
    """The compiler command: ``$CC`` (which may carry arguments) or ``cc``, found on PATH."""
    spec = os.environ.get("CC", "").strip()
    origin = f"CC={spec!r}" if spec else "the default 'cc'"
    try:
        words = shlex.split(spec or "cc")
    except ValueError as exc:
        raise CompileError(f"cannot parse {origin}: {exc}") from None
    path = shutil.which(words[0]) if words else None
    if path is None:
        raise CompileError(
            f"no C compiler was found: {origin} is not an executable file or a command on PATH. "
            "Install a C compiler (gcc or clang), or set the CC environment variable to one, "
            "for example CC=gcc."
        )
    return (path, *words[1:])


def _compiler_version(cc: tuple[str, ...]) -> str:
    """``cc --version``, run once per compiler binary (see `_remembered`)."""
    version = _compiler_versions.get(cc)
    if version is None:
        version = _compiler_versions[cc] = _remembered(cc, "version", lambda: _version(cc))
    return version


def _version(cc: tuple[str, ...]) -> str:
    """``cc --version``: part of every cache key."""
    try:
        proc = subprocess.run(
            [*cc, "--version"], capture_output=True, text=True, errors="replace", timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CompileError(f"the C compiler {cc[0]} could not be run: {exc}") from None
    if proc.returncode != 0:
        raise CompileError(
            f"the C compiler {cc[0]} failed on --version (exit status {proc.returncode})"
            f"{': ' + proc.stderr.strip()[:500] if proc.stderr.strip() else ''}; "
            "set CC to a working C compiler"
        )
    return proc.stdout


def _require_sanitizer_runtime() -> None:
    """Refuse, with advice, where loading an ASan library would abort the whole process."""
    if not _asan_loaded():
        raise CompileError(
            "sanitize=True builds with AddressSanitizer, whose runtime must be loaded before "
            "Python starts: run Python with LD_PRELOAD=$(gcc -print-file-name=libasan.so) and "
            "ASAN_OPTIONS=detect_leaks=0 (with clang, the library is libclang_rt.asan)"
        )


def _asan_loaded() -> bool:
    """Whether this process already runs with the ASan runtime (True where the platform
    cannot tell: then the loader decides)."""
    try:
        ctypes.CDLL(None)["__asan_init"]
    except AttributeError:
        return False
    except OSError:  # no dlopen(NULL) on this platform
        return True
    return True


# --- loading and publishing --------------------------------------------------------------------


def _cache_root() -> Path:
    explicit = os.environ.get("CONVC_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "convc"


def _load_or_build(root: Path, job: _Job) -> Library:
    entry = root / job.key
    path = entry / job.library_name
    for _attempt in range(3):
        compiled = not _is_intact(entry, job)
        if compiled:
            start = time.perf_counter()
            _build(root, entry, job)
            elapsed = time.perf_counter() - start
        try:
            module = _import(job.name, path)
        except ImportError as exc:
            if path.is_file():
                raise CompileError(
                    f"the compiled library {path} could not be loaded: {exc}. "
                    "Is every function declared in cdef defined in the source?"
                ) from None
            continue  # another process moved the entry aside meanwhile: build it again
        if compiled:
            log.info("compiled %s in %.2f s", job.name, elapsed)
        else:
            log.debug("loaded %s from cache", job.name)
        return Library(key=job.key, path=path, source_path=entry / _KERNEL_C, module=module)
    raise CompileError(f"{job.name} kept disappearing from the cache {root} while being loaded")


def _is_intact(entry: Path, job: _Job) -> bool:
    """Whether a published entry exists and matches its manifest; a damaged one is discarded."""
    if not entry.is_dir():
        return False
    problem = _check_entry(entry, job.key, job.library_name)
    if problem is None:
        return True
    log.warning("cache entry %s is damaged (%s); building it again", entry, problem)
    _discard(entry)
    return False


def _check_entry(entry: Path, key: str, library_name: str) -> str | None:
    """What is wrong with a published entry, or None if its library matches the manifest."""
    try:
        manifest = json.loads((entry / _MANIFEST).read_text())
        data = (entry / library_name).read_bytes()
        size, sha256 = manifest["size"], manifest["sha256"]
        if manifest["key"] != key:
            return "the manifest is for another key"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable: {exc}"
    if len(data) != size:
        return f"the library is {len(data)} bytes, the manifest says {size}"
    if hashlib.sha256(data).hexdigest() != sha256:
        return "the library's sha256 differs from the manifest's"
    return None


def _discard(directory: Path) -> None:
    """Move a directory aside under a unique name, then delete it, ignoring errors.

    The rename is atomic, so no process ever sees a half-deleted entry under its real name.
    """
    trash = directory.parent / f".trash-{uuid.uuid4().hex}"
    try:
        os.rename(directory, trash)
    except OSError:
        return  # already moved by another process
    shutil.rmtree(trash, ignore_errors=True)


def _import(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not an extension module for this Python")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(root: Path, entry: Path, job: _Job) -> None:
    """Compile in a fresh temporary directory of the cache, then publish it as `entry`."""
    work = Path(tempfile.mkdtemp(prefix="tmp-", dir=root))
    try:
        try:
            commands = _compile(work, job)
        except _CompilerFailed as failure:
            kept = _keep_failed(root, work, job.key, failure.diagnostics)
            raise CompileError(failure.describe(job.name, kept)) from None
        _finish_entry(work, job, commands)
        try:
            os.rename(work, entry)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # Another process published the same key first; its build is as good as ours.
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone already if it was renamed


class _CompilerFailed(Exception):
    def __init__(self, command: list[str], returncode: int, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.command = command
        self.returncode = returncode
        self.diagnostics = diagnostics

    def describe(self, name: str, kept: Path) -> str:
        lines = self.diagnostics.rstrip().splitlines() or ["(no diagnostics)"]
        shown = lines[:_DIAGNOSTIC_LINES]
        if len(lines) > _DIAGNOSTIC_LINES:
            more = len(lines) - _DIAGNOSTIC_LINES
            shown.append(f"... {more} more line(s) in {kept.parent / 'compiler.log'}")
        return "\n".join(
            [f"the C compiler rejected module {name} (exit status {self.returncode}):"]
            + [f"  {line}" for line in shown]
            + [f"command: {shlex.join(self.command)}", f"the C source is kept at {kept}"]
        )


def _compile(work: Path, job: _Job) -> list[list[str]]:
    """Write the sources into `work` and compile them into the library; returns the commands.

    The generated C and the runtime are compiled as strict C99, the cffi wrapper with the
    compiler's default dialect, side by side; then one link makes the library.
    """
    ffi = cffi.FFI()
    try:
        ffi.cdef(job.cdef)
    except cffi.CDefError as exc:
        raise CompileError(f"cffi cannot parse the declarations of {job.name}: {exc}") from None
    (work / _KERNEL_C).write_text(job.source)
    (work / _API_H).write_text(
        "/* The entry points as declared to cffi; included first in kernel.c's compilation. */\n"
        f'#include "convc_runtime.h"\n{job.cdef}\n'
    )
    ffi.set_source(job.name, f'#include "{_API_H}"\n', compiler_verbose=False)
    ffi.emit_c_code(str(work / _WRAPPER_C))

    cc, flags = job.cc, job.flags
    runtime = _runtime_objects(work.parent, job)
    paths = sysconfig.get_paths()
    python = [f"-I{p}" for p in dict.fromkeys([paths["include"], paths["platinclude"]])]
    include = f"-I{runtime_dir()}"
    steps = [
        [*cc, "-c", *flags["kernel"], include, "-include", _API_H, _KERNEL_C, "-o", "kernel.o"],
        [*cc, "-c", *flags["wrapper"], *python, include, _WRAPPER_C, "-o", "wrapper.o"],
    ]
    warnings = _run_all(steps, work)
    if warnings[0].strip():  # the generated C should compile clean
        log.warning("C compiler warnings for %s:\n%s", job.name, warnings[0].rstrip())
    objects = ["kernel.o", *map(str, runtime), "wrapper.o"]
    link = [*cc, *flags["link"], *objects, "-o", job.library_name, "-lm"]
    _run_all([link], work)
    return [*steps, link]


def _runtime_objects(root: Path, job: _Job) -> list[Path]:
    """The runtime's object files for this compiler and these flags, compiled once (a
    process per source, side by side) and kept in the cache as ``runtime-<key>/``
    (published like a library), then linked into every module: a module's build compiles
    only its own C."""
    sources = sorted(runtime_dir().glob("*.c"))
    parts = (_runtime_fingerprint(runtime_dir()), job.cc, _compiler_version(job.cc),
             job.flags["kernel"])
    entry = root / f"runtime-{hashlib.sha256(repr(parts).encode()).hexdigest()[:16]}"
    objects = [entry / f"{p.stem}.o" for p in sources]
    if _objects_intact(entry, objects):
        return objects
    _discard(entry)
    work = Path(tempfile.mkdtemp(prefix="tmp-", dir=root))
    try:
        commands = [[*job.cc, "-c", *job.flags["kernel"], f"-I{runtime_dir()}", str(source)]
                    for source in sources]
        diagnostics = "".join(_run_all(commands, work))
        if diagnostics.strip():  # the runtime should compile clean
            log.warning("C compiler warnings for the runtime:\n%s", diagnostics.rstrip())
        hashes = {o.name: hashlib.sha256((work / o.name).read_bytes()).hexdigest()
                  for o in objects}
        (work / _MANIFEST).write_text(json.dumps(hashes, indent=2) + "\n")
        try:
            os.rename(work, entry)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise  # else another process published the same objects first
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return objects


def _objects_intact(entry: Path, objects: list[Path]) -> bool:
    try:
        hashes = json.loads((entry / _MANIFEST).read_text())
        return all(hashlib.sha256(o.read_bytes()).hexdigest() == hashes[o.name]
                   for o in objects)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _run_all(commands: list[list[str]], cwd: Path) -> list[str]:
    """Run the commands side by side; returns their output, or raises for the first failure."""
    try:
        procs = [
            subprocess.Popen(
                command,
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
            for command in commands
        ]
    except OSError as exc:
        raise CompileError(f"the C compiler {commands[0][0]} could not be run: {exc}") from None
    outputs = [proc.communicate()[0] for proc in procs]
    for command, proc, output in zip(commands, procs, outputs, strict=True):
        if proc.returncode != 0:
            raise _CompilerFailed(command, proc.returncode, output)
    return outputs


def _finish_entry(work: Path, job: _Job, commands: list[list[str]]) -> None:
    """Leave only the library, the kernel C and a manifest that describes the library."""
    for path in work.iterdir():
        if path.name not in (_KERNEL_C, job.library_name):
            path.unlink()
    data = (work / job.library_name).read_bytes()
    manifest = {
        "key": job.key,
        "module": job.name,
        "library": job.library_name,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "convc": convc.__version__,
        "commands": [shlex.join(command) for command in commands],
    }
    (work / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _keep_failed(root: Path, work: Path, key: str, diagnostics: str) -> Path:
    """Keep a rejected build's sources under ``failed-<key16>``; returns its kernel.c."""
    for path in work.glob("*.o"):
        path.unlink()
    (work / "compiler.log").write_text(diagnostics)
    failed = root / f"failed-{key[:16]}"
    _discard(failed)
    try:
        os.rename(work, failed)
    except OSError:
        pass  # another process kept the same failure a moment ago: its source is the same
    return failed / _KERNEL_C


def _forget_loaded() -> None:
    """Forget the libraries loaded in this process (for tests); the disk cache is untouched."""
    with _lock:
        _loaded.clear()
