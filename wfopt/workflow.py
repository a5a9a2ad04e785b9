"""The workflow language: parse, validate, canonicalize and run `async def solve(problem)`.

Workflow code is written by a policy LLM, so it is untrusted. It runs in-process (operators
need the executor LLM) only after two passes over its AST:

1. `validate`: an allow-list. One `async def solve(problem)`; assignments, `if`, `for`,
   comprehensions, literals, f-strings, operator calls (awaited), a few pure builtins and
   string methods. No imports, attributes other than allowed string methods, dunder or
   underscore names, lambdas, `while`, `try`, `with`, classes, nested functions, `global`.
2. `_Guard`: rewrites what could allocate or spin without bound into calls of checked
   helpers: `*`, `**`, `+` and `<<`-free arithmetic check sizes before/after, every loop body
   and comprehension element ticks a step counter that also enforces the time limit (a
   CPU-bound loop never yields to asyncio, so a watchdog alone could not stop it), every
   call result is size-checked, and string methods go through a dispatcher with pre-checks.

Identity: `canonical_source` is the unparsed normalized AST (docstrings dropped, local
variables renamed in order of first binding), so formatting-only and renaming-only variants
hash to the same workflow.

Time limit: a run gets `timeout_s` seconds of its own time, the wall clock minus what its LLM
requests spent queued in the backend behind other runs' work (`wfopt.llm.base.QueueClock`,
which the local backend runs). Decoding, sandboxed code, and an operator that hangs all count.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wfopt.errors import (  # the workflow's faults live beside wfopt's own (re-exported)
    BudgetExceeded,  # noqa: F401  (re-exported)
    InfrastructureError,
    InvalidWorkflow,
    LimitExceeded,
    WorkflowError,
    WorkflowTimeout,
)
from wfopt.llm.base import QueueClock, queue_clock

ENTRY = "solve"

# Limits that bound what a validated workflow can allocate or compute in-process.
MAX_STR_LEN = 200_000  # characters in any string value
MAX_SEQ_LEN = 2_000  # items in any list/tuple/dict/set
MAX_INT_BITS = 4_096  # magnitude of any integer
MAX_STEPS = 20_000  # loop iterations + comprehension elements per run
MAX_RANGE = 1_000  # range() length
MAX_CODE_CHARS = 20_000  # source size accepted at all


# ----------------------------------------------------------------------------- validation

SAFE_BUILTINS: dict[str, Any] = {
    name: __builtins__[name] if isinstance(__builtins__, dict) else getattr(__builtins__, name)
    for name in (
        "len", "str", "int", "float", "bool", "round", "abs", "min", "max", "sum", "sorted",
        "list", "tuple", "dict", "set", "enumerate", "zip", "reversed", "any", "all",
    )
}  # fmt: skip
# `range` is replaced by a bounded version at run time.
BUILTIN_NAMES = frozenset(SAFE_BUILTINS) | {"range"}

# String methods that cannot blow up memory by themselves (or are pre-checked in `_method`).
STR_METHODS = frozenset(
    [
        "strip",
        "lstrip",
        "rstrip",
        "lower",
        "upper",
        "title",
        "capitalize",
        "split",
        "splitlines",
        "startswith",
        "endswith",
        "find",
        "rfind",
        "count",
        "isdigit",
        "isnumeric",
        "isalpha",
        "isspace",
        "join",
        "replace",
    ]
)
# List methods that mutate in place by one element at a time.
LIST_METHODS = frozenset({"append"})

_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Module, ast.AsyncFunctionDef, ast.arguments, ast.arg, ast.Expr, ast.Assign,
    ast.AugAssign, ast.Return, ast.If, ast.For, ast.AsyncFor, ast.Pass, ast.Break,
    ast.Continue, ast.Await, ast.Call, ast.keyword, ast.Name, ast.Load, ast.Store,
    ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.BinOp, ast.UnaryOp, ast.BoolOp,
    ast.Compare, ast.IfExp, ast.Subscript, ast.Slice, ast.ListComp, ast.SetComp,
    ast.DictComp, ast.GeneratorExp, ast.comprehension, ast.JoinedStr, ast.FormattedValue,
    ast.Attribute,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow,
    ast.UAdd, ast.USub, ast.Not, ast.And, ast.Or,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is, ast.IsNot,
)  # fmt: skip


def _reject(node: ast.AST | None, reason: str) -> InvalidWorkflow:
    line = getattr(node, "lineno", None)
    return InvalidWorkflow(f"line {line}: {reason}" if line else reason)


def validate(tree: ast.Module, operator_names: frozenset[str]) -> ast.AsyncFunctionDef:
    """Check `tree` against the allow-list; return the `solve` function node."""
    body = [s for s in tree.body if not is_docstring(s)]
    if len(body) != 1 or not isinstance(body[0], ast.AsyncFunctionDef) or body[0].name != ENTRY:
        raise _reject(None, "a workflow is exactly one `async def solve(problem): ...`")
    solve = body[0]
    args = solve.args
    if (
        len(args.args) != 1
        or args.posonlyargs
        or args.kwonlyargs
        or args.vararg
        or args.kwarg
        or args.defaults
    ):
        raise _reject(solve, "solve takes exactly one parameter: solve(problem)")
    if solve.decorator_list or solve.returns:
        raise _reject(solve, "solve has no decorators or annotations")
    for node in ast.walk(solve):
        if node is not solve and isinstance(node, ast.AsyncFunctionDef):  # only solve itself
            raise _reject(node, "nested functions are not allowed in a workflow")

    callable_names = operator_names | BUILTIN_NAMES
    method_attrs = {
        id(n.func)
        for n in ast.walk(solve)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    }
    # operators are only ever called and awaited: never passed as values (key=generate) or
    # called without await, and no operator or builtin name is rebound (len = generate)
    awaited_funcs = {
        id(n.value.func)
        for n in ast.walk(solve)
        if isinstance(n, ast.Await) and isinstance(n.value, ast.Call)
    }
    reserved = operator_names | BUILTIN_NAMES | {"entry_point"}
    for node in ast.walk(solve):
        if isinstance(node, ast.Name) and node.id in reserved and isinstance(node.ctx, ast.Store):
            raise _reject(node, f"`{node.id}` is a reserved name and cannot be assigned")
        if isinstance(node, ast.arg) and node.arg in reserved:
            raise _reject(node, f"`{node.arg}` is a reserved name and cannot be a parameter")
        if (
            isinstance(node, ast.Name)
            and node.id in operator_names
            and id(node) not in awaited_funcs
        ):
            raise _reject(
                node, f"operator `{node.id}` must be called and awaited: `await {node.id}(...)`"
            )
        if not isinstance(node, _ALLOWED_NODES):
            raise _reject(node, f"{type(node).__name__} is not allowed in a workflow")
        if isinstance(node, ast.Name) and node.id.startswith("_") and node.id != "_":
            raise _reject(node, f"names starting with '_' are not allowed: {node.id}")
        if isinstance(node, ast.arg) and node.annotation is not None:
            raise _reject(node, "annotations are not allowed")
        if isinstance(node, ast.keyword) and (node.arg is None or node.arg.startswith("_")):
            raise _reject(node, "keyword arguments must be plain names (no **kwargs)")
        if isinstance(node, ast.Constant):
            _check_constant(node)
        if isinstance(node, ast.Attribute) and id(node) not in method_attrs:
            raise _reject(node, f"attribute access `.{node.attr}` outside a method call")
        if isinstance(node, ast.Call):
            _check_call(node, callable_names, operator_names)
        if isinstance(node, ast.Await):
            call = node.value
            if not (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Name)
                and call.func.id in operator_names
            ):
                raise _reject(node, "only operator calls can be awaited")
        if isinstance(node, (ast.For, ast.AsyncFor)) and node.orelse:
            raise _reject(node, "for/else is not allowed")
        if isinstance(node, ast.AsyncFor):
            raise _reject(node, "async for is not allowed")
        if isinstance(node, ast.FormattedValue) and node.format_spec is not None:
            raise _reject(node, "format specs in f-strings are not allowed")
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.For, ast.comprehension)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                _check_target(target)
    _check_names_defined(solve, callable_names | {"entry_point"})
    return solve


def _check_names_defined(solve: ast.AsyncFunctionDef, known: frozenset[str]) -> None:
    """Every name read is the parameter, an operator or builtin, or assigned somewhere in
    `solve` (flow-insensitive): `generate(problem, instruction)` with no `instruction = ...`
    fails at run time, and a workflow that can only crash is invalid, not a scored failure."""
    assigned = {solve.args.args[0].arg} | {
        n.id for n in ast.walk(solve) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }
    for node in ast.walk(solve):
        if (
            isinstance(node, ast.Name)
            and isinstance(node.ctx, ast.Load)
            and node.id not in known | assigned
        ):
            raise _reject(node, f"name `{node.id}` is used but never assigned")


def is_docstring(stmt: ast.stmt) -> bool:
    """Whether a statement is a bare string literal (a docstring; the AFlow importer too)."""
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _check_constant(node: ast.Constant) -> None:
    value = node.value
    if value is ... or isinstance(value, (bytes, complex)):
        raise _reject(node, f"constant {value!r} is not allowed")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        raise _reject(node, "integer literal too large")


def _check_target(target: ast.expr) -> None:
    """Assignment targets: names, tuples of names, or `x[i]` subscripts of a name."""
    if isinstance(target, ast.Name):
        return
    if isinstance(target, ast.Tuple):
        for element in target.elts:
            _check_target(element)
        return
    if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
        return
    raise _reject(target, "only names, tuples of names and name[index] can be assigned")


def _check_call(node: ast.Call, callable_names: frozenset[str], operators: frozenset[str]) -> None:
    func = node.func
    if isinstance(func, ast.Name):
        if func.id not in callable_names:
            raise _reject(node, f"unknown function `{func.id}`")
        return
    if isinstance(func, ast.Attribute):
        if func.attr not in STR_METHODS | LIST_METHODS:
            raise _reject(node, f"method `.{func.attr}` is not allowed")
        return
    raise _reject(node, "only named functions and string methods can be called")


# ------------------------------------------------------------------------ canonical identity


class _Normalizer(ast.NodeTransformer):
    """Drop docstrings and rename locals to v0, v1, ... in order of first binding."""

    def __init__(self, reserved: frozenset[str]) -> None:
        self.reserved = reserved
        self.names: dict[str, str] = {}

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        node.body = [s for s in node.body if not is_docstring(s)] or [ast.Pass()]
        node.args.args[0].arg = "problem"
        self.names[self._param] = "problem"
        self.generic_visit(node)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in self.names:
            node.id = self.names[node.id]
        elif isinstance(node.ctx, ast.Store) and node.id not in self.reserved:
            self.names[node.id] = node.id = f"v{len(self.names)}"
        return node

    def _visit_comprehension(self, node: ast.AST, element_fields: tuple[str, ...]) -> ast.AST:
        # Bindings happen in the generators, which the source writes after the element.
        for generator in node.generators:  # type: ignore[attr-defined]
            self.visit(generator)
        for name in element_fields:
            setattr(node, name, self.visit(getattr(node, name)))
        return node

    def visit_ListComp(self, node: ast.ListComp) -> ast.AST:
        return self._visit_comprehension(node, ("elt",))

    visit_SetComp = visit_GeneratorExp = visit_ListComp  # type: ignore[assignment]

    def visit_DictComp(self, node: ast.DictComp) -> ast.AST:
        return self._visit_comprehension(node, ("key", "value"))

    def normalize(self, tree: ast.Module, param: str) -> ast.Module:
        self._param = param
        tree.body = [s for s in tree.body if not is_docstring(s)]
        return self.visit(tree)


# ------------------------------------------------------------------------------ guarding


class _Guard(ast.NodeTransformer):
    """Rewrite the validated AST so sizes, steps and time are checked at run time."""

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        helper = {ast.Mult: "_mul", ast.Pow: "_pow", ast.Add: "_add"}.get(type(node.op))
        if helper is None:
            return node
        return ast.copy_location(_call(helper, node.left, node.right), node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        self.generic_visit(node)
        helper = {ast.Mult: "_mul", ast.Pow: "_pow", ast.Add: "_add"}.get(type(node.op))
        if helper is None:
            return node
        load = _as_load(node.target)
        value = _call(helper, load, node.value)
        return ast.copy_location(ast.Assign(targets=[node.target], value=value), node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Attribute):
            obj, name = node.func.value, node.func.attr
            node = ast.Call(
                func=ast.Name("_method", ast.Load()),
                args=[obj, ast.Constant(name), *node.args],
                keywords=node.keywords,
            )
        elif isinstance(node.func, ast.Name) and node.func.id == "range":
            node.func = ast.Name("_range", ast.Load())
        return _call("_check", node)

    def visit_Await(self, node: ast.Await) -> ast.AST:
        self.generic_visit(node)
        return _call("_check", node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        self.generic_visit(node)
        return _call("_check", node)

    def visit_For(self, node: ast.For) -> ast.AST:
        self.generic_visit(node)
        node.body.insert(0, ast.Expr(_call("_tick")))
        return node

    def _guard_elements(self, node: ast.AST, attrs: tuple[str, ...]) -> ast.AST:
        self.generic_visit(node)
        for attr in attrs:
            setattr(node, attr, _call("_tick_value", getattr(node, attr)))
        return _call("_check", node)

    def visit_ListComp(self, node: ast.ListComp) -> ast.AST:
        return self._guard_elements(node, ("elt",))

    def visit_SetComp(self, node: ast.SetComp) -> ast.AST:
        return self._guard_elements(node, ("elt",))

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> ast.AST:
        self.generic_visit(node)
        node.elt = _call("_tick_value", node.elt)
        return node

    def visit_DictComp(self, node: ast.DictComp) -> ast.AST:
        return self._guard_elements(node, ("value",))

    def visit_List(self, node: ast.List) -> ast.AST:
        self.generic_visit(node)
        return node if isinstance(node.ctx, ast.Store) else _call("_check", node)


def _call(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=ast.Name(name, ast.Load()), args=list(args), keywords=[])


def _as_load(target: ast.expr) -> ast.expr:
    clone = ast.parse(ast.unparse(target), mode="eval").body
    return clone


class _Limits:
    """Run-time checks called by guarded workflow code; one instance per run."""

    def __init__(self, deadline: float, clock: QueueClock | None = None) -> None:
        self.deadline = deadline  # time.monotonic() at which the run is out of time...
        self.clock = clock  # ...pushed back by the time its requests spent queued
        self.steps = 0

    def tick(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise LimitExceeded(f"more than {MAX_STEPS} loop steps")
        if self.steps % 64 == 0:
            queued = self.clock.seconds() if self.clock is not None else 0.0
            if time.monotonic() - queued > self.deadline:
                raise WorkflowTimeout("workflow exceeded its time limit inside a loop")

    def tick_value(self, value: Any) -> Any:
        self.tick()
        return value


def check(value: Any) -> Any:
    """Reject values whose size is out of bounds (called on every call/f-string result)."""
    if isinstance(value, str):
        if len(value) > MAX_STR_LEN:
            raise LimitExceeded(f"string longer than {MAX_STR_LEN} characters")
    elif isinstance(value, (list, tuple, dict, set)):
        if len(value) > MAX_SEQ_LEN:
            raise LimitExceeded(f"collection longer than {MAX_SEQ_LEN} items")
    elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise LimitExceeded("integer too large")
    return value


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple)) else 0


def guarded_mul(a: Any, b: Any) -> Any:
    seq, count = (a, b) if isinstance(b, int) and _size(a) else (b, a)
    if _size(seq) and isinstance(count, int):
        limit = MAX_STR_LEN if isinstance(seq, str) else MAX_SEQ_LEN
        if _size(seq) * max(count, 0) > limit:
            raise LimitExceeded("sequence repetition too large")
    elif (
        isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_INT_BITS
    ):
        raise LimitExceeded("integer product too large")
    return a * b


def guarded_pow(base: Any, exponent: Any) -> Any:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if max(base.bit_length(), 1) * exponent > MAX_INT_BITS:
            raise LimitExceeded("power too large")
    elif isinstance(exponent, (int, float)) and abs(exponent) > 10_000:
        raise LimitExceeded("exponent too large")
    return base**exponent


def guarded_add(a: Any, b: Any) -> Any:
    return check(a + b)


def guarded_range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise LimitExceeded(f"range longer than {MAX_RANGE}")
    return r


def guarded_method(obj: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    allowed = STR_METHODS if isinstance(obj, str) else LIST_METHODS if isinstance(obj, list) else ()
    if name not in allowed:
        raise WorkflowError(f"method .{name} is not available on {type(obj).__name__}")
    if isinstance(obj, str) and name == "join":
        items = list(args[0]) if args else []
        total = sum(len(x) for x in items if isinstance(x, str)) + len(obj) * len(items)
        if total > MAX_STR_LEN:
            raise LimitExceeded("joined string too large")
        args = (items,)
    if isinstance(obj, str) and name == "replace" and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        if (
            len(obj) + (len(obj) + 1) * len(new) > MAX_STR_LEN
            and (obj.count(old) + 1) * len(new) + len(obj) > MAX_STR_LEN
        ):
            raise LimitExceeded("replacement result too large")
    if isinstance(obj, list) and name == "append" and len(obj) >= MAX_SEQ_LEN:
        raise LimitExceeded(f"list longer than {MAX_SEQ_LEN} items")
    return getattr(obj, name)(*args, **kwargs)


# ---------------------------------------------------------------------------- the Workflow


@dataclass(frozen=True)
class Workflow:
    """A validated workflow: its source, canonical form and the guarded code object."""

    source: str
    canonical_source: str
    hash: str
    code: Any = field(repr=False, compare=False)


def parse_workflow(source: str, operator_names: frozenset[str] | None = None) -> Workflow:
    """Parse + validate + guard `source`. Raises `InvalidWorkflow` with a clear reason."""
    from wfopt.operators import OPERATOR_NAMES, operator_call_error

    if operator_names is None:
        operator_names = OPERATOR_NAMES
    if not isinstance(source, str) or not source.strip():
        raise InvalidWorkflow("empty workflow")
    if len(source) > MAX_CODE_CHARS:
        raise InvalidWorkflow(f"workflow longer than {MAX_CODE_CHARS} characters")
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise InvalidWorkflow(f"line {err.lineno}: syntax error: {err.msg}") from None
    except (ValueError, RecursionError, MemoryError) as err:
        raise InvalidWorkflow(f"unparseable workflow: {type(err).__name__}") from None
    solve = validate(tree, operator_names)
    for node in ast.walk(solve):  # an operator call that can never bind only crashes: invalid
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in operator_names
        ):
            keywords = [k.arg for k in node.keywords if k.arg]
            error = operator_call_error(node.func.id, len(node.args), keywords)
            if error:
                raise _reject(node, error)

    reserved = operator_names | BUILTIN_NAMES
    normalized = _Normalizer(reserved).normalize(ast.parse(source), solve.args.args[0].arg)
    canonical = ast.unparse(normalized)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]

    guarded = ast.fix_missing_locations(_Guard().visit(tree))
    code = compile(guarded, filename=f"<workflow {digest}>", mode="exec")
    return Workflow(source=source, canonical_source=canonical, hash=digest, code=code)


def parse_policy_workflow(source: str) -> Workflow:
    """`parse_workflow` plus what a *policy-written* workflow must do to count as one: await
    at least one operator and return a value computed from an operator's result (or ""). The
    language itself allows operator-free code
    (tests, constants in hand-written workflows), but a policy that answers with `answer = 0`
    or `return 11` writes no workflow: scored as a mere failure (0) instead of invalid (-1),
    such code is a reward hack (measured: `make run`'s trained policy wrote almost only
    `answer = 0`), and so is `await generate(problem)` followed by `return 11`. Nor may it
    write numbers where they can enter the answer (`number_written_in`). Raises
    `InvalidWorkflow` with the reason."""
    workflow = parse_workflow(source)
    tree = ast.parse(source)
    if not any(isinstance(n, ast.Return) and n.value is not None for n in ast.walk(tree)):
        raise InvalidWorkflow("a workflow returns its answer: `return ...` is missing")
    if not any(isinstance(n, ast.Await) for n in ast.walk(tree)):
        raise InvalidWorkflow(
            "a workflow calls at least one operator (e.g. `await generate(problem)`); an "
            "answer written into the code is not a workflow"
        )
    derived = operator_derived_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Return) and node.value is not None:
            empty = isinstance(node.value, ast.Constant) and node.value.value in ("", None)
            if not empty and not _is_derived(node.value, derived):
                raise InvalidWorkflow(
                    f"line {node.lineno}: `return {ast.unparse(node.value)[:60]}` returns no "
                    "operator's result; an answer written into the code is not a workflow"
                )
    number = number_written_in(tree)
    if number is not None:
        raise InvalidWorkflow(
            f"line {number.lineno}: the number {number.value!r} is written into the workflow; "
            "its operators get the problem and compute the answer (numbers only as range() "
            "sizes, indices or in comparisons)"
        )
    return workflow


def number_written_in(tree: ast.AST) -> ast.Constant | None:
    """The first number literal (or string that is only a number) the code writes where it
    can enter the answer: anywhere but a `range()` bound, a subscript index or a comparison
    operand. A trained policy wrote `result = 29 - 28` and passed it to `format_answer`:
    Python did the arithmetic, so such a workflow scored 1 without the executor solving
    anything (in one `make run`, every valid workflow of episode 1 did this)."""
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "range"
        ):
            allowed.update(id(n) for arg in node.args for n in ast.walk(arg))
        elif isinstance(node, ast.Subscript):
            allowed.update(id(n) for n in ast.walk(node.slice))
        elif isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                if isinstance(operand, ast.UnaryOp):
                    operand = operand.operand
                allowed.add(id(operand))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or id(node) in allowed:
            continue
        value = node.value
        if (type(value) in (int, float)) or (
            isinstance(value, str) and _NUMBER.fullmatch(value.strip())
        ):
            return node
    return None


def _is_derived(expr: ast.AST, derived: set[str]) -> bool:
    return any(
        isinstance(n, ast.Await) or (isinstance(n, ast.Name) and n.id in derived)
        for n in ast.walk(expr)
    )


def operator_derived_names(tree: ast.AST) -> set[str]:
    """Variables that may hold a value computed from an operator's result (flow-insensitive,
    to a fixpoint): assigned, loop-bound or appended from an expression containing an `await`
    (only operators can be awaited) or another such variable."""
    derived: set[str] = set()
    changed = True
    while changed:
        changed = False
        for node in ast.walk(tree):
            flows: list[tuple[ast.AST, ast.AST]] = []
            if isinstance(node, ast.Assign):
                flows = [(target, node.value) for target in node.targets]
            elif isinstance(node, ast.AugAssign | ast.AnnAssign | ast.NamedExpr) and node.value:
                flows = [(node.target, node.value)]
            elif isinstance(node, ast.For | ast.comprehension):
                flows = [(node.target, node.iter)]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.attr == "append"
            ):  # list.append(x) makes the list hold x
                flows = [(node.func.value, arg) for arg in node.args]
            for target, value in flows:
                if not _is_derived(value, derived):
                    continue
                for name in ast.walk(target):
                    if isinstance(name, ast.Name) and name.id not in derived:
                        derived.add(name.id)
                        changed = True
    return derived


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\.?\d|\w)")


def answer_written_in(source: str, answer: str, question: str) -> bool:
    """Whether a workflow's code spells the problem's answer as a number that the question
    does not contain: the policy solving the problem itself instead of composing operators
    (reported per policy-written workflow; a gain from this is not workflow learning)."""
    try:
        gold = float(answer)
    except ValueError:
        return False
    in_question = {float(n) for n in _NUMBER.findall(question)}
    return gold not in in_question and gold in {float(n) for n in _NUMBER.findall(source)}


def operators_used(source: str) -> set[str]:
    """Operator names a workflow's source calls (static; empty if it does not parse)."""
    from wfopt.operators import OPERATOR_NAMES

    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return set()
    return {
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in OPERATOR_NAMES
    }


def canonical_hash(source: str) -> str:
    return parse_workflow(source).hash


def build_solve(
    workflow: Workflow,
    operators: Mapping[str, Callable[..., Awaitable[Any]]],
    deadline: float,
    extra_globals: Mapping[str, Any] | None = None,
    clock: QueueClock | None = None,
) -> Callable[[str], Awaitable[Any]]:
    """Execute the guarded module in a fresh namespace and return its `solve`. Its loops
    stop at `deadline` (`time.monotonic()`), later by what `clock` counts as queued."""
    limits = _Limits(deadline, clock)
    namespace: dict[str, Any] = {
        "__builtins__": dict(SAFE_BUILTINS),
        **dict(extra_globals or {}),
        **operators,
        "_check": check,
        "_mul": guarded_mul,
        "_pow": guarded_pow,
        "_add": guarded_add,
        "_range": guarded_range,
        "_method": guarded_method,
        "_tick": limits.tick,
        "_tick_value": limits.tick_value,
    }
    exec(workflow.code, namespace)  # the module only defines `solve`; validated above
    return namespace[ENTRY]


async def call_solve(
    solve: Callable[[str], Awaitable[Any]],
    problem: str,
    timeout_s: float,
    clock: QueueClock | None = None,
) -> Any:
    """Await `solve(problem)` for at most `timeout_s` seconds of its own time; map the
    workflow's failures to WorkflowError.

    Its own time is the wall clock minus the seconds its LLM requests waited in a backend's
    queue, as `clock` (a fresh one if None; the same one `build_solve` got) counts them: the
    workflow runs as a task that carries the clock in `queue_clock`, and a watchdog cancels
    it once its own time is up. A run stuck behind others' work is not cut off for it; one
    whose operator hangs is.

    `InfrastructureError` (the executor down after its retries, a cache or sandbox-runner
    fault, a bug inside an operator: see `wfopt.operators`) propagates: scoring wfopt's own
    fault as the workflow's failure would poison results and trajectories with zeros.
    """
    clock = QueueClock() if clock is None else clock
    token = queue_clock.set(clock)
    try:
        task = asyncio.ensure_future(solve(problem))  # the task copies the context: the clock
    finally:
        queue_clock.reset(token)
    start = time.monotonic()
    try:
        while not task.done():
            remaining = timeout_s - (time.monotonic() - start - clock.seconds())
            if remaining <= 0:
                task.cancel()
                await asyncio.wait({task})  # let it unwind (its requests leave the backend)
                raise WorkflowTimeout(f"workflow exceeded {timeout_s:.0f}s")
            await asyncio.wait({task}, timeout=remaining)  # queue time may have pushed it on
        return task.result()
    except asyncio.TimeoutError:  # as `wait_for` reported it before the watchdog
        raise WorkflowTimeout(f"workflow exceeded {timeout_s:.0f}s") from None
    except (WorkflowError, InfrastructureError):
        raise
    except RecursionError:
        raise LimitExceeded("recursion limit") from None
    except MemoryError:
        raise LimitExceeded("out of memory") from None
    except Exception as err:  # raised by the workflow's own code: a scored failure, not a crash
        raise WorkflowError(f"{type(err).__name__}: {err}"[:500]) from None
    finally:  # the caller gave up on us (cancelled): the workflow must not run on unwatched
        if not task.done():
            task.cancel()
