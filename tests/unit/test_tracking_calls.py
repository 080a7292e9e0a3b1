"""Only imgclf.tracking imports mlflow, and every store call in it goes through the one retry.

A call such as ``client.set_tag(...)`` or ``mlflow.log_metrics(...)`` made directly fails on the
first "database is locked" a concurrent writer causes; ``retrying(client.set_tag, ...)`` waits it
out. Read from the source, so a new direct call fails here before it fails in a sweep.
"""

from __future__ import annotations

import ast
from pathlib import Path

import imgclf

SRC = Path(imgclf.__file__).resolve().parent
TRACKING = SRC / "tracking"
# Calls on mlflow that touch no store: configuration and the fluent run stack.
NOT_STORE_CALLS = {"set_tracking_uri", "set_registry_uri", "active_run"}
CLIENT_NAMES = {"client"}


def _root(node: ast.expr) -> ast.expr:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node


def _is_store_call(call: ast.Call) -> bool:
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr in NOT_STORE_CALLS:
        return False
    root = _root(func)
    if isinstance(root, ast.Name):
        return root.id == "mlflow" or root.id in CLIENT_NAMES
    return (
        isinstance(root, ast.Call)
        and isinstance(root.func, ast.Name)
        and root.func.id == "MlflowClient"
    )


def test_every_store_call_in_tracking_goes_through_retrying():
    direct = []
    for path in sorted(TRACKING.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and _is_store_call(node):
                direct.append(f"{path.name}:{node.lineno} {ast.unparse(node.func)}")
    assert direct == [], "call these as retrying(fn, *args): " + ", ".join(direct)


def test_the_check_sees_a_direct_call():
    calls = [n for n in ast.walk(ast.parse("client.set_tag(r, k, v)")) if isinstance(n, ast.Call)]
    assert _is_store_call(calls[0])
    wrapped = ast.parse("retrying(MlflowClient().set_tag, r, k, v)")
    assert not any(_is_store_call(n) for n in ast.walk(wrapped) if isinstance(n, ast.Call))


def test_only_tracking_imports_mlflow():
    importers = []
    for path in sorted(SRC.rglob("*.py")):
        if TRACKING in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                importers.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert importers == []
