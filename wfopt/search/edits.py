"""Structural edits: small rewrites of a workflow that keep it valid.

They are the search's fallback when the policy proposes nothing usable (invalid code, or a
workflow already in the tree), so a tree always grows, even with a weak policy. Each edit
kind lists every variant it can make of a workflow; `propose_edit` tries kinds and variants in
a seeded random order (after the kinds of `mcts.edit_first`, in their order) and returns the
first valid workflow that is new to the tree.

| kind | what it does |
|---|---|
| `swap_operator` | an answering call becomes another (`generate` / `answer_generate` / `programmer`) |
| `change_instruction` | `generate`'s (or `code_generate`'s) instruction becomes another from a list |
| `ensemble_size` | a `range(k)` bound becomes another size |
| `add_ensemble` | `return await X` becomes a majority vote over `ENSEMBLE_SIZE` samples of X |
| `add_review` | the returned solution is reviewed and revised once if the reviewer objects (code: tested on the public examples, revised on failure) |
| `add_format_answer` | the returned solution goes through `format_answer` |
| `remove_step` | a statement is deleted (when every name still has a definition), or a `format_answer` wrapper is unwrapped |
"""

from __future__ import annotations

import ast
import copy
import random
from collections.abc import Callable, Iterator

from wfopt.operators import OPERATOR_NAMES
from wfopt.workflow import BUILTIN_NAMES, InvalidWorkflow, Workflow, parse_workflow

MATH_ANSWERERS = ("generate", "answer_generate", "programmer")
INSTRUCTIONS = (
    "Think step by step.",
    "Answer with just the final number.",
    "Compute each operation carefully, one at a time.",
    "Check the arithmetic before giving the final answer.",
)
CODE_INSTRUCTIONS = (
    "Handle edge cases such as empty inputs.",
    "Think about the examples in the docstring first.",
    "Keep the implementation simple and readable.",
)
ENSEMBLE_SIZES = (2, 3, 5)
ENSEMBLE_SIZE = 3
EDIT_KINDS = (
    "swap_operator",
    "change_instruction",
    "ensemble_size",
    "add_ensemble",
    "add_review",
    "add_format_answer",
    "remove_step",
)


def _solve(tree: ast.Module) -> ast.AsyncFunctionDef:
    solve = next(s for s in tree.body if isinstance(s, ast.AsyncFunctionDef))
    if solve.body and isinstance(solve.body[0], ast.Expr):  # drop the docstring
        value = solve.body[0].value
        if isinstance(value, ast.Constant) and isinstance(value.value, str) and solve.body[1:]:
            solve.body = solve.body[1:]
    return solve


def _operator_call(node: ast.AST, names: tuple[str, ...] | frozenset[str]) -> ast.Call | None:
    """The call inside `await name(...)` if `name` is in `names`."""
    if isinstance(node, ast.Await) and isinstance(node.value, ast.Call):
        func = node.value.func
        if isinstance(func, ast.Name) and func.id in names:
            return node.value
    return None


def _await(name: str, *args: ast.expr) -> ast.Await:
    return ast.Await(ast.Call(ast.Name(name, ast.Load()), list(args), []))


def _name(identifier: str) -> ast.Name:
    return ast.Name(identifier, ast.Load())


def _fresh(tree: ast.AST, base: str) -> str:
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    name, i = base, 2
    while name in used:
        name, i = f"{base}{i}", i + 1
    return name


class _Edit:
    """One workflow's edit context: its tree, parameter name and task kind."""

    def __init__(self, source: str, code_task: bool) -> None:
        self.tree = ast.parse(source)
        self.solve = _solve(self.tree)
        self.param = self.solve.args.args[0].arg
        self.code_task = code_task
        self.answerers = ("code_generate",) if code_task else MATH_ANSWERERS

    def variants(self, pick: Callable[[ast.AST], bool]) -> Iterator[tuple[ast.Module, ast.AST]]:
        """For each node matching `pick`: (a deep copy of the tree, that node in the copy)."""
        count = sum(1 for n in ast.walk(self.solve) if pick(n))
        for index in range(count):
            tree = copy.deepcopy(self.tree)
            matches = [n for n in ast.walk(_solve(tree)) if pick(n)]
            yield tree, matches[index]

    def answer_call(self, name: str, instruction: str | None = None) -> ast.Await:
        args: list[ast.expr] = [_name(self.param)]
        if name == "code_generate":
            args.append(_name("entry_point"))
        if instruction is not None:
            args.append(ast.Constant(instruction))
        return _await(name, *args)

    # -- edit kinds: each yields new sources --------------------------------------------------

    def swap_operator(self) -> Iterator[str]:
        for tree, node in self.variants(lambda n: _operator_call(n, self.answerers) is not None):
            call = _operator_call(node, self.answerers)
            for other in self.answerers:
                if other != call.func.id:  # type: ignore[union-attr]
                    node.value = self.answer_call(other).value  # type: ignore[attr-defined]
                    yield ast.unparse(tree)

    def change_instruction(self) -> Iterator[str]:
        name = "code_generate" if self.code_task else "generate"
        position = 2 if self.code_task else 1
        options = CODE_INSTRUCTIONS if self.code_task else INSTRUCTIONS
        for tree, node in self.variants(lambda n: _operator_call(n, (name,)) is not None):
            call = _operator_call(node, (name,))
            assert call is not None
            current = call.args[position] if len(call.args) > position else None
            for text in options:
                if not (isinstance(current, ast.Constant) and current.value == text):
                    call.args[position:] = [ast.Constant(text)]
                    call.keywords = [k for k in call.keywords if k.arg != "instruction"]
                    yield ast.unparse(tree)

    def ensemble_size(self) -> Iterator[str]:
        def is_range(n: ast.AST) -> bool:
            return (
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Name)
                and n.func.id == "range"
                and len(n.args) == 1
                and isinstance(n.args[0], ast.Constant)
                and type(n.args[0].value) is int
            )

        for tree, node in self.variants(is_range):
            current = node.args[0].value  # type: ignore[attr-defined]
            for size in ENSEMBLE_SIZES:
                if size != current:
                    node.args[0] = ast.Constant(size)  # type: ignore[attr-defined]
                    yield ast.unparse(tree)

    def _rewrite_returns(self, rewrite: Callable[[ast.Return, ast.AST], list[ast.stmt] | None]):
        """For each `return <value>`: the tree with that statement replaced by `rewrite`'s."""
        for tree, node in self.variants(lambda n: isinstance(n, ast.Return) and n.value):
            replacement = rewrite(node, tree)  # type: ignore[arg-type]
            if replacement is None:
                continue
            for parent in ast.walk(tree):
                for field in ("body", "orelse"):
                    stmts = getattr(parent, field, None)
                    if isinstance(stmts, list) and node in stmts:
                        i = stmts.index(node)
                        stmts[i : i + 1] = replacement
            yield ast.unparse(ast.fix_missing_locations(tree))

    def add_ensemble(self) -> Iterator[str]:
        def rewrite(ret: ast.Return, tree: ast.AST) -> list[ast.stmt] | None:
            if _operator_call(ret.value, self.answerers) is None:  # type: ignore[arg-type]
                return None
            samples = _fresh(tree, "candidates")
            comp = ast.ListComp(
                ret.value,  # type: ignore[arg-type]
                [
                    ast.comprehension(
                        ast.Name("_", ast.Store()),
                        ast.Call(_name("range"), [ast.Constant(ENSEMBLE_SIZE)], []),
                        [],
                        0,
                    )
                ],
            )
            return [
                ast.Assign([ast.Name(samples, ast.Store())], comp, lineno=0),
                ast.Return(_await("ensemble", _name(self.param), _name(samples))),
            ]

        return self._rewrite_returns(rewrite)

    def add_review(self) -> Iterator[str]:
        def rewrite(ret: ast.Return, tree: ast.AST) -> list[ast.stmt] | None:
            solution = _fresh(tree, "solution")
            feedback = _fresh(tree, "feedback")
            p, s, f = _name(self.param), _name(solution), _name(feedback)
            if self.code_task:
                check = _await("test", p, s, _name("entry_point"))
                objects = ast.Call(
                    ast.Attribute(f, "startswith", ast.Load()), [ast.Constant("FAIL")], []
                )
                revised = _await("format_answer", p, _await("revise", p, s, f))
            else:
                check = _await("review", p, s)
                upper = ast.Call(ast.Attribute(f, "upper", ast.Load()), [], [])
                accepts = ast.Call(
                    ast.Attribute(upper, "startswith", ast.Load()), [ast.Constant("CORRECT")], []
                )
                objects = ast.UnaryOp(ast.Not(), accepts)
                revised = _await("revise", p, s, f)
            store = ast.Name(solution, ast.Store())
            return [
                ast.Assign([store], ret.value, lineno=0),  # type: ignore[arg-type]
                ast.Assign([ast.Name(feedback, ast.Store())], check, lineno=0),
                ast.If(objects, [ast.Assign([store], revised, lineno=0)], []),
                ast.Return(_name(solution)),
            ]

        return self._rewrite_returns(rewrite)

    def add_format_answer(self) -> Iterator[str]:
        def rewrite(ret: ast.Return, tree: ast.AST) -> list[ast.stmt] | None:
            if _operator_call(ret.value, ("format_answer",)) is not None:  # type: ignore[arg-type]
                return None
            return [ast.Return(_await("format_answer", _name(self.param), ret.value))]  # type: ignore[arg-type]

        return self._rewrite_returns(rewrite)

    def remove_step(self) -> Iterator[str]:
        def unwrap(ret: ast.Return, tree: ast.AST) -> list[ast.stmt] | None:
            call = _operator_call(ret.value, ("format_answer",))  # type: ignore[arg-type]
            if call is None or len(call.args) < 2:
                return None
            return [ast.Return(call.args[1])]

        yield from self._rewrite_returns(unwrap)
        body = self.solve.body
        for i, stmt in enumerate(body[:-1]):
            tree = copy.deepcopy(self.tree)
            solve = _solve(tree)
            del solve.body[i]
            if self._names_defined(solve) and not isinstance(stmt, ast.Return):
                yield ast.unparse(tree)

    def _names_defined(self, solve: ast.AsyncFunctionDef) -> bool:
        known = set(OPERATOR_NAMES) | BUILTIN_NAMES | {self.param, "entry_point", "_"}
        names = [n for n in ast.walk(solve) if isinstance(n, ast.Name)]
        known |= {n.id for n in names if isinstance(n.ctx, ast.Store)}
        return all(n.id in known for n in names if isinstance(n.ctx, ast.Load))


def edit_variants(source: str, kind: str, code_task: bool = False) -> list[str]:
    """Every source the edit `kind` makes of `source` (possibly invalid or duplicate)."""
    if kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; known: {', '.join(EDIT_KINDS)}")
    return list(getattr(_Edit(source, code_task), kind)())


def propose_edit(
    source: str,
    known_hashes: set[str],
    rng: random.Random,
    code_task: bool = False,
    first: tuple[str, ...] = (),
) -> tuple[str, Workflow] | None:
    """(kind, workflow): a valid edit of `source` whose canonical hash is not in `known_hashes`.

    The kinds in `first` are tried first, in that order; the other kinds after them in an order
    drawn from `rng` (with `first` empty, the draws are as they always were). Each kind's
    variants are tried in an order drawn from `rng`. None when no edit of `source` is both
    valid and new.
    """
    unknown = set(first) - set(EDIT_KINDS)
    if unknown:
        raise ValueError(f"unknown edit kind(s) {sorted(unknown)}; known: {', '.join(EDIT_KINDS)}")
    kinds = [k for k in EDIT_KINDS if k not in first]
    rng.shuffle(kinds)
    for kind in (*first, *kinds):
        variants = edit_variants(source, kind, code_task)
        rng.shuffle(variants)
        for variant in variants:
            try:
                workflow = parse_workflow(variant)
            except InvalidWorkflow:
                continue
            if workflow.hash not in known_hashes:
                return kind, workflow
    return None
