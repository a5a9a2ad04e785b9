"""AFlow workflows in wfopt's language: `graph.py` + `prompt.py` -> one `async def solve`.

AFlow (Zhang et al., ICLR 2025) stores an optimized workflow as a Python class:

    class Workflow:
        def __init__(self, name, llm_config, dataset):
            self.llm = create_llm_instance(llm_config)
            self.custom = operator.Custom(self.llm)
        async def __call__(self, problem):
            solution = await self.custom(input=problem, instruction=prompt_custom.SOLVE_PROMPT)
            return solution["response"], self.llm.get_usage_summary()["total_cost"]

`convert_graph` rewrites such a class over the AST, never running it: operator objects bound in
`__init__` become wfopt operator calls, keyword arguments are put in wfopt's order, prompt
constants from `prompt.py` are inlined as string literals, the keys the workflow reads from
operator results (`["response"]`, `["output"]`, ...) become the matching value (see
`OPERATORS`), and `return solution, cost` returns the solution (wfopt's ledger records the
cost). A code task's `__call__(self, problem, entry_point)` reads wfopt's global
`entry_point`. The result then goes through wfopt's validator (`parse_workflow`), so what runs
is checked like any other workflow.

Anything that cannot be converted safely (other imports, other uses of `self`, result keys
wfopt's operators do not produce, non-literal prompts) raises `AFlowError` naming the file
and line. The converter only rewrites the class; the validator rejects whatever else the
workflow language does not allow (loops over unbounded input, `while`, lambdas, ...), with
lines of `graph.py` too, because converted nodes keep their original positions.
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass
from pathlib import Path

from wfopt.workflow import InvalidWorkflow, is_docstring, parse_workflow, validate


class AFlowError(ValueError):
    """An AFlow workflow that cannot be converted; the message names file and line."""


@dataclass(frozen=True)
class OperatorSpec:
    """How one AFlow operator class maps onto a wfopt operator.

    `params`: AFlow's parameter names in its positional order; `order`: which of them wfopt's
    operator takes, in its own order (trailing optional ones may be absent). `keys`: result key
    -> how the converted code reads it: "value" (the operator's text itself), "pass" (a test
    verdict: the text starts with PASS), "correct" (a review verdict: starts with CORRECT), or
    "argument:<name>" (AFlow hands back an argument unchanged).
    """

    wfopt: str
    params: tuple[str, ...]
    order: tuple[str, ...]
    keys: dict[str, str]
    required: int  # how many of `order` must be given


OPERATORS: dict[str, OperatorSpec] = {
    "Custom": OperatorSpec(
        "generate", ("input", "instruction"), ("input", "instruction"), {"response": "value"}, 1
    ),
    # wfopt's answer_generate returns the reasoning ending in `Answer: ...`, which scorers and
    # ensemble read the answer from: both keys are that text
    "AnswerGenerate": OperatorSpec(
        "answer_generate", ("input",), ("input",), {"thought": "value", "answer": "value"}, 1
    ),
    "CustomCodeGenerate": OperatorSpec(
        "code_generate",
        ("problem", "entry_point", "instruction"),
        ("problem", "entry_point", "instruction"),
        {"response": "value", "code": "value"},
        2,
    ),
    "ScEnsemble": OperatorSpec(
        "ensemble",
        ("solutions", "problem"),
        ("problem", "solutions"),
        {"response": "value", "solution": "value"},
        2,
    ),
    # wfopt's programmer returns the program's output; the code itself is not kept
    "Programmer": OperatorSpec(
        "programmer", ("problem", "analysis"), ("problem", "analysis"), {"output": "value"}, 1
    ),
    # wfopt's test only runs the public examples (AFlow's also rewrites the solution on a
    # failure): the solution comes back as it was given
    "Test": OperatorSpec(
        "test",
        ("problem", "solution", "entry_point"),
        ("problem", "solution", "entry_point"),
        {"result": "pass", "solution": "argument:solution"},
        3,
    ),
    "Format": OperatorSpec(
        "format_answer",
        ("problem", "solution"),
        ("problem", "solution"),
        {"response": "value", "solution": "value"},
        2,
    ),
    "Review": OperatorSpec(
        "review",
        ("problem", "solution"),
        ("problem", "solution"),
        {"review_result": "correct", "feedback": "value"},
        2,
    ),
    "Revise": OperatorSpec(
        "revise",
        ("problem", "solution", "feedback"),
        ("problem", "solution", "feedback"),
        {"solution": "value", "response": "value"},
        3,
    ),
}
IGNORED_KWARGS = frozenset({"mode"})  # AFlow's output-format switch; wfopt has one format
# names AFlow's scaffolding imports; they are only used to build the class, never converted
SCAFFOLD_NAMES = frozenset(
    {"create_llm_instance", "DatasetType", "CostManager", "Literal", "List", "Tuple", "Dict",
     "Optional", "Any", "Union"}
)  # fmt: skip


def is_aflow_graph(source: str) -> bool:
    """True when `source` defines AFlow's `class Workflow` (rather than `async def solve`)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return any(isinstance(s, ast.ClassDef) and s.name == "Workflow" for s in tree.body)


def read_prompts(path: Path) -> dict[str, str]:
    """String constants of an AFlow `prompt.py` (`NAME = "..."`); anything else is an error."""
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as err:
        raise AFlowError(f"{path}:{err.lineno}: syntax error: {err.msg}") from None
    prompts: dict[str, str] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # docstring
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            try:
                value = ast.literal_eval(stmt.value) if stmt.value is not None else None
            except ValueError:
                value = None
            if len(targets) == 1 and isinstance(targets[0], ast.Name) and isinstance(value, str):
                prompts[targets[0].id] = value
                continue
        raise AFlowError(
            f"{path}:{stmt.lineno}: prompt.py may only assign string constants "
            '(NAME = "..."); this statement cannot be inlined'
        )
    return prompts


def convert_file(graph: str | Path) -> str:
    """The wfopt workflow of an AFlow `graph.py` (or of a directory holding one), with the
    `prompt.py` beside it. Raises `AFlowError`."""
    graph = Path(graph).expanduser()
    if graph.is_dir():
        graph = graph / "graph.py"
    if not graph.is_file():
        raise AFlowError(f"{graph}: no such file (an AFlow workflow is graph.py + prompt.py)")
    prompt_file = graph.with_name("prompt.py")
    prompts = read_prompts(prompt_file) if prompt_file.is_file() else None
    return convert_graph(graph.read_text(), prompts, filename=str(graph))


def convert_graph(source: str, prompts: dict[str, str] | None, filename: str = "graph.py") -> str:
    """Convert AFlow `graph.py` source into a validated wfopt workflow (its source)."""
    converter = _Converter(prompts, filename)
    tree = converter.convert(source)
    try:
        validate(tree, _operator_names())  # converted nodes keep graph.py's line numbers
    except InvalidWorkflow as err:
        raise AFlowError(f"{filename}: not expressible as a wfopt workflow: {err}") from None
    code = ast.unparse(ast.fix_missing_locations(tree)) + "\n"
    parse_workflow(code)  # the same check `wfopt evaluate` applies, on the text itself
    return code


def _operator_names() -> frozenset[str]:
    from wfopt.operators import OPERATOR_NAMES

    return OPERATOR_NAMES


class _Converter:
    def __init__(self, prompts: dict[str, str] | None, filename: str) -> None:
        self.prompts = prompts
        self.filename = filename
        self.operator_modules: set[str] = set()
        self.prompt_modules: set[str] = set()
        self.bound: dict[str, OperatorSpec] = {}  # self.<attr> -> operator
        self.results: dict[str, OperatorSpec] = {}  # local name -> the operator it holds
        self.lists: dict[str, OperatorSpec] = {}  # local name -> list of that operator's results
        self.test_solutions: dict[str, str] = {}  # Test result name -> variable of its solution
        self.entry_param: str | None = None

    def error(self, node: ast.AST | None, message: str) -> AFlowError:
        line = getattr(node, "lineno", None)
        return AFlowError(
            f"{self.filename}:{line}: {message}" if line else f"{self.filename}: {message}"
        )

    # -- module and class ------------------------------------------------------------------

    def convert(self, source: str) -> ast.Module:
        try:
            tree = ast.parse(source, filename=self.filename)
        except SyntaxError as err:
            raise AFlowError(f"{self.filename}:{err.lineno}: syntax error: {err.msg}") from None
        workflow = None
        for stmt in tree.body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                self.check_import(stmt)
            elif isinstance(stmt, ast.ClassDef) and stmt.name == "Workflow":
                workflow = stmt
            elif not is_docstring(stmt):
                raise self.error(
                    stmt, "only imports and `class Workflow` are supported at the top level"
                )
        if workflow is None:
            raise self.error(None, "no `class Workflow` found (is this an AFlow graph.py?)")
        methods = {
            s.name: s
            for s in workflow.body
            if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
        for stmt in workflow.body:
            if not (is_docstring(stmt) or stmt in methods.values()):
                raise self.error(stmt, "class Workflow may only define __init__ and __call__")
        extra = set(methods) - {"__init__", "__call__"}
        if extra:
            raise self.error(
                methods[sorted(extra)[0]],
                f"method `{sorted(extra)[0]}` cannot be converted (only __init__ and __call__)",
            )
        if "__init__" in methods:
            self.read_init(methods["__init__"])
        call = methods.get("__call__")
        if not isinstance(call, ast.AsyncFunctionDef):
            raise self.error(
                call or workflow, "class Workflow needs `async def __call__(self, problem)`"
            )
        return ast.Module(body=[self.convert_call(call)], type_ignores=[])

    def check_import(self, stmt: ast.Import | ast.ImportFrom) -> None:
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                last = alias.name.rsplit(".", 1)[-1]
                name = alias.asname or alias.name
                if last == "operator" and alias.asname:
                    self.operator_modules.add(name)
                elif last == "prompt" and alias.asname:
                    self.prompt_modules.add(name)
                else:
                    raise self.error(
                        stmt,
                        f"import of `{alias.name}` is not supported: a converted "
                        "workflow may only use AFlow's operator and prompt modules",
                    )
            return
        module = stmt.module or ""
        for alias in stmt.names:
            name = alias.asname or alias.name
            if alias.name == "operator":
                self.operator_modules.add(name)
            elif alias.name == "prompt":
                self.prompt_modules.add(name)
            elif alias.name not in SCAFFOLD_NAMES:
                raise self.error(
                    stmt,
                    f"import of `{alias.name}` from `{module}` is not supported: "
                    "a converted workflow may only use AFlow's operator and prompt modules",
                )

    def read_init(self, init: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        """`self.x = operator.Custom(self.llm)` binds an operator; the rest must be scaffolding."""
        for stmt in init.body:
            if is_docstring(stmt):
                continue
            if (
                isinstance(stmt, ast.Expr)
                and isinstance(stmt.value, ast.Call)
                and _is_super_init(stmt.value)
            ):
                continue
            if not (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and _self_attr(stmt.targets[0])
            ):
                raise self.error(
                    stmt,
                    "__init__ may only assign `self.<name> = ...` (operators and AFlow's llm/name/dataset)",
                )
            attr = _self_attr(stmt.targets[0])
            value = stmt.value
            if (
                isinstance(value, ast.Call)
                and isinstance(value.func, ast.Attribute)
                and isinstance(value.func.value, ast.Name)
                and value.func.value.id in self.operator_modules
            ):
                kind = value.func.attr
                if kind not in OPERATORS:
                    raise self.error(
                        stmt,
                        f"operator `{kind}` has no wfopt counterpart (known: {', '.join(OPERATORS)})",
                    )
                self.bound[attr] = OPERATORS[kind]  # type: ignore[index]
            elif attr in ("llm", "name", "dataset", "cost_manager"):
                continue  # AFlow's scaffolding; wfopt binds its own executor
            else:
                raise self.error(
                    stmt,
                    f"`self.{attr} = {ast.unparse(value)}` cannot be converted (only operator objects and llm/name/dataset)",
                )

    # -- __call__ ----------------------------------------------------------------------------

    def convert_call(self, call: ast.AsyncFunctionDef) -> ast.AsyncFunctionDef:
        params = [a.arg for a in call.args.args]
        if (
            params[:1] != ["self"]
            or len(params) not in (2, 3)
            or call.args.vararg
            or call.args.kwarg
            or call.args.kwonlyargs
        ):
            raise self.error(
                call,
                "`__call__` must be `async def __call__(self, problem)` or `(self, problem, entry_point)`",
            )
        problem = params[1]
        if len(params) == 3:
            self.entry_param = params[2]
        self.collect(call)
        body = []
        for stmt in call.body:
            if is_docstring(stmt):
                continue
            body.extend(self.statement(stmt))
        solve = ast.AsyncFunctionDef(
            name="solve",
            args=ast.arguments(
                posonlyargs=[],
                args=[ast.arg(arg=problem)],
                kwonlyargs=[],
                kw_defaults=[],
                defaults=[],
            ),
            body=body or [ast.Pass()],
            decorator_list=[],
            returns=None,
        )
        if "type_params" in ast.AsyncFunctionDef._fields:  # Python 3.12+
            solve.type_params = []
        return ast.copy_location(solve, call)

    def collect(self, call: ast.AsyncFunctionDef) -> None:
        """Which local names hold operator results (or lists of them), flow-insensitively;
        a name that holds results of operators with different keys is an error."""

        def note(
            table: dict[str, OperatorSpec], name: str, spec: OperatorSpec, node: ast.AST
        ) -> None:
            old = table.get(name)
            if old is not None and old.keys != spec.keys:
                raise self.error(
                    node,
                    f"`{name}` holds results of different operators ({old.wfopt}, {spec.wfopt}); use separate names",
                )
            table[name] = spec

        for node in ast.walk(call):
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
            ):
                name = node.targets[0].id
                spec = self.op_of(node.value)
                if spec is not None:
                    note(self.results, name, spec, node)
                elif isinstance(node.value, ast.ListComp) and self.op_of(node.value.elt):
                    note(self.lists, name, self.op_of(node.value.elt), node)  # type: ignore[arg-type]
        for node in ast.walk(call):  # loop variables over such lists hold results too
            if (
                isinstance(node, (ast.For, ast.comprehension))
                and isinstance(node.target, ast.Name)
                and isinstance(node.iter, ast.Name)
                and node.iter.id in self.lists
            ):
                note(self.results, node.target.id, self.lists[node.iter.id], node)

    def op_of(self, node: ast.AST) -> OperatorSpec | None:
        """The operator an `await self.<op>(...)` expression calls, else None."""
        if isinstance(node, ast.Await) and isinstance(node.value, ast.Call):
            attr = _self_attr(node.value.func)
            if attr in self.bound:
                return self.bound[attr]  # type: ignore[index]
        return None

    def statement(self, stmt: ast.stmt) -> list[ast.stmt]:
        if (
            isinstance(stmt, ast.Return)
            and isinstance(stmt.value, ast.Tuple)
            and len(stmt.value.elts) == 2
            and self.is_cost(stmt.value.elts[1])
        ):
            stmt = ast.copy_location(
                ast.Return(value=stmt.value.elts[0]), stmt
            )  # cost: the ledger's job
        before: list[ast.stmt] = []
        # a Test result whose ["solution"] is read: keep the solution it was given
        if (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
        ):
            spec = self.op_of(stmt.value)
            if spec is not None and spec.wfopt == "test":
                name = stmt.targets[0].id
                solution = self.arguments(stmt.value.value, spec)["solution"]  # type: ignore[attr-defined]
                keep = f"{name}_solution"
                self.test_solutions[name] = keep
                before.append(
                    ast.copy_location(
                        ast.Assign(
                            targets=[ast.Name(keep, ast.Store())],
                            value=self.expr(copy.deepcopy(solution)),
                        ),
                        stmt,
                    )
                )
        for field_name, value in ast.iter_fields(stmt):
            if isinstance(value, list):
                new: list = []
                for item in value:
                    if isinstance(item, ast.stmt):
                        new.extend(self.statement(item))
                    elif isinstance(item, ast.AST):
                        new.append(self.expr(item))
                    else:
                        new.append(item)
                setattr(stmt, field_name, new)
            elif isinstance(value, ast.AST):
                setattr(stmt, field_name, self.expr(value))
        return [*before, stmt]

    def is_cost(self, node: ast.AST) -> bool:
        """`self.llm....` (AFlow's cost summary), the second element of the returned tuple."""
        while isinstance(node, (ast.Subscript, ast.Call, ast.Attribute)):
            node = node.value if not isinstance(node, ast.Call) else node.func
            if isinstance(node, ast.Attribute) and _self_attr(node) == "llm":
                return True
        return False

    def arguments(self, call: ast.Call, spec: OperatorSpec) -> dict[str, ast.expr]:
        given: dict[str, ast.expr] = {}
        if len(call.args) > len(spec.params):
            raise self.error(call, f"too many positional arguments for {spec.wfopt}")
        for name, arg in zip(spec.params, call.args, strict=False):
            given[name] = arg
        for kw in call.keywords:
            if kw.arg in IGNORED_KWARGS:
                continue
            if kw.arg not in spec.params:
                raise self.error(
                    call,
                    f"argument `{kw.arg}` is not one the converter knows for this operator (wfopt's {spec.wfopt} takes {', '.join(spec.order)})",
                )
            given[kw.arg] = kw.value
        missing = [p for p in spec.order[: spec.required] if p not in given]
        if missing:
            raise self.error(call, f"missing argument `{missing[0]}` for {spec.wfopt}")
        return given

    def operator_call(self, node: ast.Await, spec: OperatorSpec) -> ast.Await:
        call = node.value
        given = self.arguments(call, spec)  # type: ignore[arg-type]
        args = []
        for name in spec.order:
            if name not in given:
                break  # optional trailing arguments keep wfopt's defaults
            args.append(self.expr(given[name]))
        new = ast.Call(func=ast.Name(spec.wfopt, ast.Load()), args=args, keywords=[])
        return ast.copy_location(ast.Await(value=ast.copy_location(new, call)), node)

    def result_key(
        self, node: ast.Subscript, spec: OperatorSpec, value: ast.expr, name: str | None
    ) -> ast.expr:
        key = node.slice.value if isinstance(node.slice, ast.Constant) else None
        if key not in spec.keys:
            known = ", ".join(f'["{k}"]' for k in spec.keys)
            raise self.error(
                node,
                f"{spec.wfopt}'s result has no {ast.unparse(node.slice)!s} in wfopt (readable: {known})",
            )
        how = spec.keys[key]
        if how == "value":
            return value
        if how in ("pass", "correct"):
            word = "PASS" if how == "pass" else "CORRECT"
            upper = ast.Call(
                func=ast.Attribute(value=value, attr="upper", ctx=ast.Load()), args=[], keywords=[]
            )
            return ast.Call(
                func=ast.Attribute(value=upper, attr="startswith", ctx=ast.Load()),
                args=[ast.Constant(word)],
                keywords=[],
            )
        # argument:<name>: only a named Test result kept its solution
        if name is None or name not in self.test_solutions:
            raise self.error(
                node, f'assign the {spec.wfopt} result to a name before reading ["{key}"]'
            )
        return ast.Name(self.test_solutions[name], ast.Load())

    def rename(self, node: ast.Name) -> ast.Name:
        """AFlow's `entry_point` parameter is wfopt's global; a local named like a wfopt
        operator (`review = await self.review(...)`) gets a trailing underscore."""
        if self.entry_param and node.id == self.entry_param:
            return ast.Name("entry_point", node.ctx)
        if node.id in _operator_names() or node.id == "entry_point":
            return ast.Name(f"{node.id}_", node.ctx)
        return node

    def expr(self, node: ast.AST) -> ast.AST:
        converted = self._expr(node)
        return ast.copy_location(converted, node) if hasattr(node, "lineno") else converted

    def _expr(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.Subscript):
            spec = self.op_of(node.value)
            if spec is not None:
                return self.result_key(node, spec, self.operator_call(node.value, spec), None)  # type: ignore[arg-type]
            if (
                isinstance(node.value, ast.Name)
                and node.value.id in self.results
                and isinstance(node.slice, ast.Constant)
                and isinstance(node.slice.value, str)
            ):
                name = node.value.id
                return self.result_key(node, self.results[name], self.rename(node.value), name)
            inner = node.value
            if (
                isinstance(inner, ast.Subscript)
                and isinstance(inner.value, ast.Name)
                and inner.value.id in self.lists
            ):  # results[i]["response"]: one element of a list of results
                spec = self.lists[inner.value.id]
                return self.result_key(node, spec, self.expr(inner), None)
        if isinstance(node, ast.Await):
            spec = self.op_of(node)
            if spec is not None:
                return self.operator_call(node, spec)
            raise self.error(
                node, f"`{ast.unparse(node)}`: only the operators bound in __init__ can be awaited"
            )
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id in self.prompt_modules:
                if self.prompts is None:
                    raise self.error(
                        node,
                        f"`{ast.unparse(node)}` needs prompt.py next to graph.py, which is missing",
                    )
                if node.attr not in self.prompts:
                    raise self.error(node, f"prompt `{node.attr}` is not defined in prompt.py")
                return ast.Constant(self.prompts[node.attr])
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                raise self.error(
                    node,
                    f"`self.{node.attr}` cannot be converted: only calls of the operators bound in __init__ are",
                )
        if isinstance(node, ast.Name) and node.id != "self":
            return self.rename(node)
        if isinstance(node, ast.Name) and node.id == "self":
            raise self.error(
                node, "`self` can only be used to call the operators bound in __init__"
            )
        for field_name, value in ast.iter_fields(node):
            if isinstance(value, list):
                setattr(
                    node, field_name, [self.expr(v) if isinstance(v, ast.AST) else v for v in value]
                )
            elif isinstance(value, ast.AST):
                setattr(node, field_name, self.expr(value))
        return node


def _self_attr(node: ast.AST) -> str | None:
    """`x` of `self.x`, else None."""
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    ):
        return node.attr
    return None


def _is_super_init(call: ast.Call) -> bool:
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "__init__"
        and isinstance(func.value, ast.Call)
        and isinstance(func.value.func, ast.Name)
        and func.value.func.id == "super"
    )
