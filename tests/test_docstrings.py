"""Docstrings: every example in the convc package's docstrings runs as a doctest.

Each module is collected with `doctest.DocTestFinder` and run with a `doctest.DocTestRunner`;
a module whose examples print something other than what the docstring shows fails, with the
runner's report. Examples that compile code use the session's build cache (conftest.py).
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil

import pytest

import convc

MODULES = ["convc"] + sorted(
    info.name for info in pkgutil.walk_packages(convc.__path__, prefix="convc."))


def run_doctests(module_name: str) -> tuple[doctest.TestResults, str]:
    module = importlib.import_module(module_name)
    runner = doctest.DocTestRunner(verbose=False)
    report = io.StringIO()
    # Only the docstrings of objects defined in the module itself (exclude_empty: no noise).
    for test in doctest.DocTestFinder(exclude_empty=True).find(module, module_name):
        runner.run(test, out=report.write)
    return runner.summarize(verbose=False), report.getvalue()


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
    (failed, attempted), report = run_doctests(module_name)
    assert failed == 0, f"{failed} of {attempted} docstring examples failed in {module_name}:\n" \
                        f"{report}"


def test_the_package_has_docstring_examples():
    """The modules above are really searched: the public entry points carry examples."""
    finder = doctest.DocTestFinder()
    for obj in (convc.compile, convc.lower, convc.Graph):
        examples = [e for t in finder.find(obj) for e in t.examples]
        assert examples, f"{obj.__qualname__} has no docstring example"
    attempted = sum(run_doctests(name)[0].attempted for name in
                    ("convc.build", "convc.graph", "convc.pipeline"))
    assert attempted >= 10


def test_a_failing_example_is_reported():
    """The runner used above does fail on a wrong expected output."""
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(verbose=False)
    test = parser.get_doctest(">>> 1 + 1\n3\n", {}, "wrong", "wrong.py", 0)
    report = io.StringIO()
    runner.run(test, out=report.write)
    assert runner.summarize(verbose=False).failed == 1
    assert "Expected:\n    3\nGot:\n    2" in report.getvalue()
