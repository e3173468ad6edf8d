"""Row filters such as ``"lse_c >= 3 and abs(offset) <= 6"``, read without ``eval``.

The text is parsed as a Python expression and only these pieces are allowed: column names, numbers,
``+ - * /``, comparisons (chains too: ``1 < lse_c <= 9``), ``and`` / ``or`` / ``not``, parentheses
and the functions ``abs``, ``min``, ``max`` and ``round``. Anything else is refused with a message
that names the piece. A row whose value for a named column is missing (a failed video) never passes.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Collection, Mapping
from typing import Any

from common.errors import InputError

_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
_ARITHMETIC: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {"abs": abs, "min": min, "max": max, "round": round}


class _Missing(Exception):
    """A named column has no value in this row."""


def compile_filter(text: str, names: Collection[str]) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate over rows (column -> number or None); InputError for text it does not take."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise InputError(f"cannot read the filter {text!r}: {exc.msg}; write e.g. \"lse_c >= 3 and "
                         "abs(offset) <= 6\"") from None
    _check(tree.body, text, names)

    def keep(row: Mapping[str, Any]) -> bool:
        try:
            return bool(_evaluate(tree.body, row))
        except _Missing:
            return False
        except ZeroDivisionError:
            return False

    return keep


def _check(node: ast.AST, text: str, names: Collection[str]) -> None:
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise InputError(f"the filter {text!r} names {node.id!r}, which is not a column; the columns are "
                             f"{', '.join(sorted(names))}")
        return
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return
    if isinstance(node, ast.Call):
        if not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS) or node.keywords:
            raise InputError(f"the filter {text!r} calls {ast.unparse(node.func)}: only "
                             f"{', '.join(_FUNCTIONS)} are allowed")
        for arg in node.args:
            _check(arg, text, names)
        return
    allowed = (isinstance(node, ast.BoolOp)
               or (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)))
               or (isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC)
               or (isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops)))
    if not allowed:
        raise InputError(f"the filter {text!r} uses {ast.unparse(node)!r}, which filters do not allow: use "
                         "columns, numbers, + - * /, comparisons, and/or/not, abs/min/max/round")
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.expr_context, ast.boolop, ast.unaryop, ast.operator, ast.cmpop)):
            continue
        _check(child, text, names)


def _evaluate(node: ast.AST, row: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        value = row.get(node.id)
        if value is None or value != value:  # None or NaN
            raise _Missing(node.id)
        return value
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BoolOp):
        values = (_evaluate(v, row) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, row)
        return not value if isinstance(node.op, ast.Not) else (-value if isinstance(node.op, ast.USub) else +value)
    if isinstance(node, ast.BinOp):
        return _ARITHMETIC[type(node.op)](_evaluate(node.left, row), _evaluate(node.right, row))
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, row)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(right_node, row)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Call):
        return _FUNCTIONS[node.func.id](*(_evaluate(a, row) for a in node.args))  # type: ignore[union-attr]
    raise AssertionError(f"unchecked node {ast.dump(node)}")
