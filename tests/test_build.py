"""Build and cache: a C source and its declarations -> a loaded library, cached by content.

Checks the numbers a built library gives, cache hits in one process and across processes,
that every input changes the key, concurrent builds of one key, damaged cache entries, and the
errors a user can meet.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import convc
from convc import build
from convc.build import build_library, cache_dir, clear_cache, runtime_dir
from convc.errors import CompileError

ROOT = Path(convc.__file__).resolve().parent.parent

SOURCE = r"""#include "convc_runtime.h"

/* out[i] = a[i] + b[i] + floor(-i / 2) */
int convc_test_add(int64_t n, const float *a, const float *b, float *out) {
    if (n < 0) return CONVC_ERR_SIZE;
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i] + (float)convc_floordiv(-i, 2);
    return CONVC_OK;
}
"""
CDEF = "int convc_test_add(int64_t n, const float *a, const float *b, float *out);"

# A child process builds SOURCE, checks its numbers and prints the key; it logs to stderr.
CHILD = """
import logging, os, sys, time
import numpy as np
from convc.build import build_library
logging.basicConfig(level=logging.DEBUG, format="%(message)s")
barrier = os.environ.get("TEST_BARRIER")
if barrier:  # say ready, then wait for the go, so that all children build at once
    open(barrier + ".ready." + str(os.getpid()), "w").close()
    while not os.path.exists(barrier + ".go"):
        time.sleep(0.002)
library = build_library({source!r}, {cdef!r}, sanitize={sanitize!r})
ffi, lib = library.module.ffi, library.module.lib
n = int(os.environ.get("TEST_N", "1000"))
a = np.arange(1000, dtype=np.float32)
b = np.full(1000, 0.5, dtype=np.float32)
out = np.empty(1000, dtype=np.float32)
status = lib.convc_test_add(n, ffi.from_buffer("float[]", a), ffi.from_buffer("float[]", b),
                            ffi.from_buffer("float[]", out))
assert status == 0, status
np.testing.assert_array_equal(out, a + b + np.floor(-np.arange(1000) / 2))
print(library.key, flush=True)
"""


def child_code(source: str = SOURCE, sanitize: bool = False) -> str:
    return CHILD.format(source=source, cdef=CDEF, sanitize=sanitize)


def child_env(cache: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "CONVC_CACHE_DIR": str(cache), "PYTHONPATH": path, **extra}


def run_child(cache: Path, source: str = SOURCE, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", child_code(source)],
        env=child_env(cache, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_add(library: build.Library, n: int = 37) -> None:
    ffi, lib = library.module.ffi, library.module.lib
    a = np.linspace(-3, 3, n, dtype=np.float32)
    b = np.arange(n, dtype=np.float32)
    out = np.empty(n, dtype=np.float32)
    buffers = [ffi.from_buffer("float[]", x) for x in (a, b, out)]
    assert lib.convc_test_add(n, *buffers) == 0
    np.testing.assert_array_equal(out, a + b + np.floor(-np.arange(n) / 2))
    assert lib.convc_test_add(-1, *buffers) == 2  # CONVC_ERR_SIZE


def entries(cache: Path) -> list[str]:
    """What a directory holds; in the cache, less what all builds share (the runtime's
    objects, the compiler's facts)."""
    return sorted(p.name for p in cache.iterdir()
                  if not p.name.startswith(("runtime-", "compiler-")))


def test_runtime_is_compiled_once_per_compiler_and_flags(cache):
    first = build.build_library(SOURCE, CDEF)
    build.build_library(SOURCE + "/* another module */\n", CDEF)
    runtimes = [p for p in cache.iterdir() if p.name.startswith("runtime-")]
    assert len(runtimes) == 1
    objects = sorted(p.name for p in runtimes[0].iterdir())
    assert objects == sorted(["manifest.json", *(f"{c.stem}.o" for c in
                                                 runtime_dir().glob("*.c"))])
    # a damaged object is noticed and the runtime compiled again
    (runtimes[0] / "buffer.o").write_bytes(b"damaged")
    build._forget_loaded()
    build.build_library(SOURCE + "/* a third */\n", CDEF)
    assert (runtimes[0] / "buffer.o").read_bytes() != b"damaged"
    check_add(first)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, build.Library]:
    """One build of SOURCE, for tests that copy its cache entry instead of compiling again."""
    cache = tmp_path_factory.mktemp("shared") / "cache"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("CONVC_CACHE_DIR", str(cache))
        library = build_library(SOURCE, CDEF)
    return cache, library


def test_build_gives_right_numbers_and_second_call_is_a_cache_hit(cache, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG, logger="convc")
    library = build_library(SOURCE, CDEF)
    check_add(library)
    name = f"_convc_{library.key[:16]}"
    assert f"compiled {name} in " in caplog.text
    assert library.key == build._cache_key(SOURCE, CDEF)
    assert library.path.parent == cache / library.key
    assert library.source_path.read_text() == SOURCE
    assert entries(cache) == [library.key]
    assert entries(cache / library.key) == sorted([library.path.name, "kernel.c", "manifest.json"])
    manifest = json.loads((cache / library.key / "manifest.json").read_text())
    assert manifest["size"] == library.path.stat().st_size
    assert any(" -std=c99 " in command for command in manifest["commands"])

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled a cached library again")

    monkeypatch.setattr(build, "_compile", no_compile)
    caplog.clear()
    assert build_library(SOURCE, CDEF) is library  # remembered in this process
    assert caplog.text == ""
    build._forget_loaded()
    again = build_library(SOURCE, CDEF)  # read back from disk
    assert f"loaded {name} from cache" in caplog.text
    check_add(again)


def test_new_process_loads_from_cache_without_compiling(built):
    cache, library = built
    result = run_child(cache)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [library.key]
    assert f"loaded _convc_{library.key[:16]} from cache" in result.stderr
    assert "compiled" not in result.stderr


def test_every_input_changes_the_key(cache, monkeypatch):
    key = build._cache_key(SOURCE, CDEF)
    assert build._cache_key(SOURCE, CDEF) == key
    variants = [
        build._cache_key(SOURCE + "\n", CDEF),
        build._cache_key(SOURCE, CDEF + "\n"),
        build._cache_key(SOURCE, CDEF, sanitize=True),
        build._cache_key(SOURCE, CDEF, cflags=("-march=native",)),
        build._cache_key(SOURCE, CDEF, cflags=("-O2",)),
        build._cache_key(SOURCE, CDEF, cflags=("-O2", "-march=native")),
        build._cache_key(SOURCE, CDEF, cflags=("-march=native", "-O2")),
    ]
    monkeypatch.setattr(convc, "__version__", "0.0.0-other")
    variants.append(build._cache_key(SOURCE, CDEF))
    assert len({key, *variants}) == len(variants) + 1
    assert all(re.fullmatch("[0-9a-f]{64}", k) for k in variants)


def test_another_compiler_changes_the_key(cache, monkeypatch):
    key = build._cache_key(SOURCE, CDEF)
    wrapper = cache.parent / "bin" / "cc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("cc") or "cc"} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    assert build._cache_key(SOURCE, CDEF) != key


def test_processes_building_one_key_at_once_publish_one_entry(cache):
    source = SOURCE + "/* built by four processes at once */\n"
    barrier = str(cache.parent / "barrier")
    env = child_env(cache, TEST_BARRIER=barrier)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", child_code(source)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    deadline = time.monotonic() + 60
    while len(list(cache.parent.glob("barrier.ready.*"))) < 4 and time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            break
        time.sleep(0.01)
    Path(barrier + ".go").touch()
    results = [(child.wait(timeout=120), *child.communicate()) for child in children]
    for returncode, _, stderr in results:
        assert returncode == 0, stderr
    keys = {stdout.strip() for _, stdout, _ in results}
    assert len(keys) == 1
    key = keys.pop()
    assert sum("compiled" in stderr for _, _, stderr in results) >= 2  # they did race
    assert entries(cache) == [key]  # one entry; no temporary or discarded directories left
    library = build_library(source, CDEF)
    assert library.key == key
    check_add(library)


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "no manifest", "bad manifest"])
def test_damaged_entry_is_rebuilt_in_a_new_process(built, tmp_path, damage):
    shared, library = built
    cache = tmp_path / "cache"
    shutil.copytree(shared, cache)
    entry = cache / library.key
    so = entry / library.path.name
    if damage == "truncate":
        os.truncate(so, so.stat().st_size // 3)
    elif damage == "overwrite":
        with open(so, "r+b") as f:
            f.seek(so.stat().st_size // 2)
            f.write(b"\xde\xad\xbe\xef" * 64)
    elif damage == "no manifest":
        (entry / "manifest.json").unlink()
    else:
        (entry / "manifest.json").write_text("{not json")
    result = run_child(cache)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [library.key]
    assert "is damaged" in result.stderr and "compiled" in result.stderr
    assert entries(cache) == [library.key]
    assert build._check_entry(entry, library.key, library.path.name) is None


def test_syntax_error_raises_compile_error_naming_the_kept_source(cache):
    bad = SOURCE.replace("return CONVC_OK;", "return CONVC_OK")
    with pytest.raises(CompileError, match="the C compiler rejected") as info:
        build_library(bad, CDEF)
    message = str(info.value)
    assert "kernel.c:" in message and "error" in message  # the compiler's own words
    kept = Path(re.search(r"the C source is kept at (\S+)", message).group(1))
    assert kept.is_file() and kept.read_text() == bad
    assert (kept.parent / "compiler.log").is_file()
    assert entries(cache) == [kept.parent.name]  # nothing published, no temporary left


def test_declaration_that_disagrees_with_the_source_is_a_compile_error(cache):
    cdef = "float convc_test_add(int64_t n, const float *a, const float *b, float *out);"
    with pytest.raises(CompileError, match="conflicting types"):
        build_library(SOURCE, cdef)


def test_declared_function_missing_from_the_source_is_a_compile_error(cache):
    cdef = CDEF + "\nint convc_test_missing(int64_t n);"
    with pytest.raises(CompileError, match="convc_test_missing"):
        build_library(SOURCE, cdef)


def test_missing_compiler_is_a_compile_error(cache, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(CompileError, match=r"no C compiler was found: CC='/nonexistent/cc'.*CC="):
        build_library(SOURCE, CDEF)


def test_cflags_must_be_a_sequence_of_strings(cache):
    with pytest.raises(TypeError, match="cflags"):
        build_library(SOURCE, CDEF, cflags="-O2")


def test_sanitize_without_the_asan_runtime_is_refused_before_compiling(cache, monkeypatch):
    assert build._asan_loaded() is False  # this test process runs without ASan
    monkeypatch.setattr(build, "_compile", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(CompileError, match="LD_PRELOAD"):
        build_library(SOURCE, CDEF, sanitize=True)


def test_cache_dir_is_private_and_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "a" / "cache"))
    assert cache_dir() == tmp_path / "a" / "cache"
    assert stat.S_IMODE(cache_dir().stat().st_mode) == 0o700
    monkeypatch.delenv("CONVC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "convc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "convc"
    assert stat.S_IMODE(cache_dir().stat().st_mode) == 0o700


def test_clear_cache_removes_builds_and_keeps_other_files(cache, caplog):
    caplog.set_level(logging.DEBUG, logger="convc")
    library = build_library(SOURCE, CDEF)
    (cache / "notes.txt").write_text("not convc's")
    clear_cache()
    assert entries(cache) == ["notes.txt"]
    caplog.clear()
    again = build_library(SOURCE, CDEF)
    assert again.key == library.key and "compiled" in caplog.text
    check_add(again)


def test_runtime_dir_holds_the_runtime():
    names = {p.name for p in runtime_dir().iterdir()}
    assert {"convc_runtime.h", "errors.c", "buffer.c"} <= names


@pytest.mark.sanitizer
def test_sanitized_build_runs_and_catches_out_of_bounds(cache):
    cc = shutil.which(os.environ.get("CC", "cc")) or "cc"
    found = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True)
    libasan = found.stdout.strip()
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        pytest.fail(f"{cc} -print-file-name=libasan.so printed {libasan!r}: the sanitizer "
                    "tests need the compiler's AddressSanitizer runtime")
    env = child_env(cache, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0")
    code = child_code(sanitize=True)
    good = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    overflow = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "TEST_N": "1001"},
        capture_output=True,
        text=True,
    )
    assert overflow.returncode != 0
    assert "heap-buffer-overflow" in overflow.stderr


def test_compiler_facts_are_remembered_in_the_cache(cache):
    """A new process loading a cached module need not run the compiler to learn its
    version or flags: they are kept per compiler binary, and a damaged file is redone."""
    build._compiler_versions.clear()  # forget what this process learnt in other caches
    build._accepts.cache_clear()
    build_library(SOURCE, CDEF)
    (facts,) = cache.glob("compiler-*.json")
    known = json.loads(facts.read_text())
    assert known["version"].strip() and any(k.startswith("accepts ") for k in known)
    facts.write_text("{not json")
    build._forget_loaded()
    build._compiler_versions.clear()
    build._accepts.cache_clear()
    check_add(build_library(SOURCE, CDEF))
    assert "version" in json.loads(facts.read_text())
