"""A guard on the test suite itself: tests wait on states and count events, never on the clock.

It fails when a test asserts on elapsed time (a call to a clock, or a comparison of a duration,
inside an `assert`), or sleeps outside a polling loop to order events. A line that must measure
over wall time (a CPU-usage window, say) says why with a `# clock-ok: <reason>` comment.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
CLOCKS = {"monotonic", "monotonic_ns", "time", "perf_counter", "perf_counter_ns"}
# A value that is a duration by its name: elapsed, took, seconds, recovered_s, fell_back_s, ...
DURATION = re.compile(r"^(elapsed|took|seconds|duration)$|_(elapsed|took|seconds)$|^[a-z_]+_(at|back)_s$")
ORDERING = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _is_clock_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr in CLOCKS and isinstance(func.value, ast.Name) and func.value.id == "time"
    return isinstance(func, ast.Name) and func.id in CLOCKS - {"time"}


def _names_a_duration(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return bool(DURATION.search(node.id))
    if isinstance(node, ast.Attribute):
        return bool(DURATION.search(node.attr))
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return isinstance(node.slice.value, str) and bool(DURATION.search(node.slice.value))
    return False


def _is_hang_guard(test: ast.AST) -> bool:
    """`clock() < deadline`: the bound of a loop that polls for a state, not a claim about time."""
    return (
        isinstance(test, ast.Compare)
        and _is_clock_call(test.left)
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Name)
        and "deadline" in test.comparators[0].id
    )


def _clock_problems(tree: ast.AST) -> list[tuple[int, str]]:
    problems = []
    loops: set[int] = set()  # ids of the nodes inside a loop (polling for a state)
    for node in ast.walk(tree):
        if isinstance(node, (ast.While, ast.For)):
            loops.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            if id(node) in loops and _is_hang_guard(node.test):
                continue
            for inner in ast.walk(node.test):
                if _is_clock_call(inner):
                    problems.append((node.lineno, "asserts on a clock reading"))
                    break
                if isinstance(inner, ast.Compare) and any(isinstance(op, ORDERING) for op in inner.ops):
                    if any(_names_a_duration(side) for side in (inner.left, *inner.comparators)):
                        problems.append((node.lineno, "asserts a bound on a duration"))
                        break
        elif isinstance(node, ast.Call) and id(node) not in loops:
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "sleep" and getattr(func.value, "id", "") == "time":
                problems.append((node.lineno, "sleeps outside a polling loop (orders events by time)"))
    return problems


def test_no_test_asserts_on_the_clock_or_orders_events_by_sleeping():
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        lines = path.read_text().splitlines()
        for lineno, what in _clock_problems(ast.parse(path.read_text(), str(path))):
            if "# clock-ok:" not in lines[lineno - 1]:
                found.append(f"{path.relative_to(TESTS)}:{lineno}: {what}: {lines[lineno - 1].strip()}")
    assert not found, "wait on a state or count events instead:\n" + "\n".join(found)


def test_the_guard_catches_what_it_is_for():
    bad = """
import time
def test():
    started = time.monotonic()
    assert time.monotonic() - started < 5
    took = 1.0
    assert took <= 2
    assert result["seconds"] < 5
    time.sleep(0.5)
    while True:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert time.monotonic() < deadline
    assert settings.timeout_s > 0
"""
    assert sorted(line for line, _ in _clock_problems(ast.parse(bad))) == [5, 7, 8, 9, 13]
