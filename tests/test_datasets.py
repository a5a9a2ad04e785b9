"""Datasets and scorers on real data: the arithmetic generator, GSM8K, MATH, HumanEval, MBPP."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import os
import re
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from wfopt.config import DatasetConfig
from wfopt.datasets import (
    ERROR_CATEGORIES,
    Dataset,
    DatasetError,
    Problem,
    Score,
    SplitDataset,
    arithmetic,
    load_dataset,
)
from wfopt.datasets.mathverify import MathVerifier, score_math
from wfopt.datasets.scoring import (
    exact_match,
    extract_number,
    format_number,
    last_boxed,
    numbers_equal,
)
from wfopt.errors import ScorerError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GSM8K_DIR = SHARED_DATA / "gsm8k"
HUMANEVAL_FILE = SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz"


def score(dataset: Dataset, problem: Problem, prediction: str) -> Score:
    return asyncio.run(dataset.score(problem, prediction))


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def gsm8k_dir() -> Path:
    if not (GSM8K_DIR / "test.jsonl").is_file():
        pytest.skip(f"shared GSM8K data not found at {GSM8K_DIR}")
    return GSM8K_DIR


# --- arithmetic -------------------------------------------------------------------------------


def _evaluate(expression: str) -> Fraction:
    """An independent exact evaluator for the generator's plain expressions."""

    def value(node: ast.expr) -> Fraction:
        if isinstance(node, ast.Constant):
            return Fraction(node.value)
        assert isinstance(node, ast.BinOp), ast.dump(node)
        a, b = value(node.left), value(node.right)
        ops = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}
        return ops[type(node.op)] if type(node.op) in ops else a / b

    return value(ast.parse(expression, mode="eval").body)


_STORY_STEPS = [
    (r"(?:finds|buys) (\d+) more", "+"),
    (r"A friend gives \w+ (\d+)", "+"),
    (r"(?:gives away|loses|sells) (\d+)", "-"),
    (r"with (\d+) times as many", "*"),
    (r"into (\d+) equal piles", "/"),
]


def recompute(question: str) -> Fraction:
    """The answer worked out from the question text alone."""
    if question.startswith("What is "):
        return _evaluate(question.removeprefix("What is ").rstrip("?"))
    if question.startswith("Start with "):
        value = Fraction(re.match(r"Start with (\d+)\.", question).group(1))
        verbs = {"add": "+", "subtract": "-", "multiply by": "*", "divide by": "/"}
        for verb, n in re.findall(r"(add|subtract|multiply by|divide by) (\d+)", question.lower()):
            value = _evaluate(f"{value.numerator} / {value.denominator} {verbs[verb]} {n}")
        return value
    sentences = question.split(". ")
    value = Fraction(re.search(r"has (\d+) \w+$", sentences[0]).group(1))
    for sentence in [*sentences[1:-1], sentences[-1].split("?")[0].rsplit(".", 1)[0]]:
        if sentence.startswith("How many"):
            continue
        matches = [(op, m) for pattern, op in _STORY_STEPS if (m := re.search(pattern, sentence))]
        assert len(matches) == 1, sentence
        op, match = matches[0]
        value = _evaluate(f"({value.numerator} / {value.denominator}) {op} {match.group(1)}")
    return value


# wfopt 0.1's generator settings: every template, up to 3 operands in [1, 20]
ALL_TEMPLATES = dict(
    templates=["story", "instructions", "expression"], max_operands=3, max_value=20
)


def test_arithmetic_answers_are_correct_recomputed_from_the_question():
    dataset = load_dataset(
        DatasetConfig(name="arithmetic", num_problems=600, seed=3, **ALL_TEMPLATES)
    )
    problems = [p for split in ("train", "validation", "test") for p in dataset.problems(split)]
    assert len(problems) == 600
    templates = {p.meta["template"] for p in problems}
    assert templates == {"story", "instructions", "expression"}
    for p in problems:
        expected = recompute(p.question)
        assert Fraction(p.answer) == expected, (p.question, p.answer)
        assert _evaluate(p.meta["expression"]) == expected
        assert expected >= 0 and expected.denominator == 1  # natural answers with + - * /
        assert score(dataset, p, f"The answer is {p.answer}.").value == 1.0
        assert p.kind == "math"


def test_arithmetic_is_deterministic_by_seed_and_distinct():
    def questions(seed: int) -> list[tuple[str, str]]:
        d = load_dataset(DatasetConfig(name="arithmetic", num_problems=200, seed=seed))
        return [(p.question, p.answer) for s in ("train", "test") for p in d.problems(s)]

    assert questions(7) == questions(7)
    assert questions(7) != questions(8)
    d = load_dataset(DatasetConfig(name="arithmetic", num_problems=200))
    every = [p for s in ("train", "validation", "test") for p in d.problems(s)]
    assert len({p.meta["expression"] for p in every}) == 200  # no question in two splits


def test_arithmetic_difficulty_knobs():
    cfg = DatasetConfig(
        name="arithmetic", num_problems=100, operations=["+"], min_operands=4, max_operands=4
    )
    for p in load_dataset(cfg).problems("train"):
        assert p.meta["expression"].count("+") == 3
        assert "-" not in p.meta["expression"] and "*" not in p.meta["expression"]
    cfg = DatasetConfig(name="arithmetic", num_problems=50, max_value=5, max_operands=2)
    for p in load_dataset(cfg).problems("train"):
        numbers = [int(n) for n in re.findall(r"\d+", p.meta["expression"])]
        assert len(numbers) == 2 and all(1 <= n <= 5 for n in numbers)
    # Division only, where exact division is often impossible: exact rationals, canonical.
    cfg = DatasetConfig(
        name="arithmetic", num_problems=60, operations=["/"], **{**ALL_TEMPLATES, "max_value": 9}
    )
    problems = load_dataset(cfg).problems("train")
    assert any("/" in p.answer or "." in p.answer for p in problems)
    for p in problems:
        assert Fraction(p.answer) == recompute(p.question)
        assert p.meta["template"] != "story" or Fraction(p.answer).denominator == 1
    with pytest.raises(DatasetError, match="operations"):
        load_dataset(DatasetConfig(name="arithmetic", operations=["^"]))
    with pytest.raises(DatasetError, match="templates"):
        load_dataset(DatasetConfig(name="arithmetic", templates=["poem"]))
    with pytest.raises(DatasetError, match="templates"):
        load_dataset(DatasetConfig(name="arithmetic", templates=[]))
    with pytest.raises(DatasetError, match="distinct"):
        load_dataset(DatasetConfig(name="arithmetic", num_problems=500, max_value=2))


def test_arithmetic_templates():
    # the embedded default: bare expressions of two operands in [1, 99]
    default = load_dataset(DatasetConfig(name="arithmetic", num_problems=200))
    problems = [p for s in ("train", "validation", "test") for p in default.problems(s)]
    assert all(re.fullmatch(r"What is \d+ [-+*/] \d+\?", p.question) for p in problems)
    assert max(int(n) for p in problems for n in re.findall(r"\d+", p.question)) > 20
    for p in problems:
        assert Fraction(p.answer) == _evaluate(p.meta["expression"])
    # stories only: a division that cannot stay natural falls back to an expression
    cfg = DatasetConfig(
        name="arithmetic",
        num_problems=60,
        operations=["/"],
        max_value=9,
        max_operands=3,
        templates=["story"],
    )
    told = {p.meta["template"] for p in load_dataset(cfg).problems("train")}
    assert told == {"story", "expression"}
    # every template with wfopt 0.1's knobs gives wfopt 0.1's problems (sha256 of the questions
    # as commit 9a58c14 generated them for seed 0)
    old = arithmetic.generate(600, 0, **ALL_TEMPLATES)
    digest = hashlib.sha256("\n".join(p.question for p in old).encode()).hexdigest()
    assert digest[:16] == "496b1a422e317407"


def test_splits_are_disjoint_stable_and_limited():
    cfg = DatasetConfig(name="arithmetic", num_problems=600, val_fraction=0.1, test_fraction=0.2)
    d = load_dataset(cfg)
    splits = {s: d.problems(s) for s in ("train", "validation", "test")}
    assert {s: len(p) for s, p in splits.items()} == {"train": 420, "validation": 60, "test": 120}
    ids = [{p.id for p in problems} for problems in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert len(ids[0] | ids[1] | ids[2]) == 600
    again = load_dataset(cfg)
    assert [p.id for p in again.problems("test")] == [p.id for p in splits["test"]]
    other = load_dataset(DatasetConfig(name="arithmetic", num_problems=600, seed=1))
    assert [p.question for p in other.problems("test")] != [p.question for p in splits["test"]]
    limited = load_dataset(DatasetConfig(name="arithmetic", num_problems=600, limit=5))
    assert [p.id for p in limited.problems("test")] == [p.id for p in splits["test"][:5]]
    with pytest.raises(DatasetError, match="split"):
        d.problems("dev")
    assert isinstance(d, Dataset) and d.name == "arithmetic" and d.kind == "math"
    # the CLI passes an OmegaConf node, not the dataclass
    node = load_dataset(OmegaConf.structured(cfg))
    assert [p.question for p in node.problems("test")] == [p.question for p in splits["test"]]
    with pytest.raises(DatasetError, match="fraction"):
        load_dataset(DatasetConfig(name="arithmetic", val_fraction=0.5, test_fraction=0.6))


# --- GSM8K ------------------------------------------------------------------------------------


def test_gsm8k_gold_numbers_of_known_lines(gsm8k_dir):
    cfg = DatasetConfig(name="gsm8k", path=str(gsm8k_dir / "test.jsonl"))
    test = {p.id: p for p in load_dataset(cfg).problems("test")}
    assert len(test) == 1319
    assert test["test.jsonl:1"].answer == "18"  # Janet's ducks
    assert test["test.jsonl:1"].question.startswith("Janet’s ducks lay 16 eggs")
    assert test["test.jsonl:2"].answer == "3"  # the robe
    assert test["test.jsonl:3"].answer == "70000"  # "#### 70000"
    assert test["test.jsonl:147"].answer == "2125"  # "#### 2,125"
    assert test["test.jsonl:490"].answer == "-10"  # "#### -10"
    assert "####" not in test["test.jsonl:1"].question


def test_a_file_is_the_split_it_names(gsm8k_dir, caplog):
    """`dataset.path=test.jsonl dataset.split=test`: the whole file, in file order (it was a
    seeded 20% subset: 264 of GSM8K's 1,319 test problems)."""
    test_file, train_file = gsm8k_dir / "test.jsonl", gsm8k_dir / "train.jsonl"
    cfg = DatasetConfig(name="gsm8k", path=str(test_file), split="test", limit=4)
    d = load_dataset(cfg)
    assert [p.id for p in d.problems("test")] == [f"test.jsonl:{i}" for i in (1, 2, 3, 4)]
    assert d.total("test") == 1319 and d.source("test") == f"{test_file} (whole file)"
    # a split that has no file and is asked for after the file is in use: a clear error
    with pytest.raises(DatasetError, match=r"no train split.*dataset\.files\.train=FILE"):
        d.problems("train")

    # one file per split, each whole and in order (validation: none given, none invented)
    both = OmegaConf.merge(
        OmegaConf.structured(DatasetConfig),
        {"name": "gsm8k", "files": {"train": str(train_file), "test": str(test_file)}},
    )
    d = load_dataset(both)
    assert (d.total("train"), d.total("test")) == (7473, 1319)
    assert d.problems("train")[0].id == "train.jsonl:1"
    with pytest.raises(DatasetError, match=r"dataset\.files\.validation=FILE"):
        d.problems("validation")
    with pytest.raises(Exception, match="tset"):  # a typo in the split name fails at compose
        OmegaConf.merge(OmegaConf.structured(DatasetConfig), {"files": {"tset": "x"}})

    # one file and a command that needs another split (the loop: train, then test): the file
    # is re-split by seed for every split, and the log says so
    d = load_dataset(DatasetConfig(name="gsm8k", path=str(test_file)))
    with caplog.at_level("WARNING"):
        train = d.problems("train")
    assert "re-split by dataset.seed=0" in caplog.text and "dataset.files.train" in caplog.text
    test = d.problems("test")
    assert (len(train), len(test)) == (1319 - 264 - 132, 264)
    assert {p.id for p in train}.isdisjoint({p.id for p in test})
    # ... which dataset.resplit=true asks for up front (the same seeded split)
    asked = load_dataset(DatasetConfig(name="gsm8k", path=str(test_file), resplit=True))
    assert [p.id for p in asked.problems("test")] == [p.id for p in test]
    assert "re-split" in asked.source("test")
    with pytest.raises(DatasetError, match="both name the test split"):
        load_dataset(
            OmegaConf.merge(
                OmegaConf.structured(DatasetConfig),
                {"name": "gsm8k", "path": str(test_file), "files": {"test": str(train_file)}},
            )
        )


def test_gsm8k_directory_splits(gsm8k_dir):
    cfg = DatasetConfig(name="gsm8k", path=str(gsm8k_dir), val_fraction=0.1)
    d = load_dataset(cfg)
    train, val, test = (d.problems(s) for s in ("train", "validation", "test"))
    assert (len(train), len(val), len(test)) == (7473 - 747, 747, 1319)
    assert [p.id for p in test[:3]] == ["test.jsonl:1", "test.jsonl:2", "test.jsonl:3"]
    assert {p.id for p in train}.isdisjoint({p.id for p in val})
    assert all(p.id.startswith("train.jsonl:") for p in train + val)
    assert [p.id for p in load_dataset(cfg).problems("validation")] == [p.id for p in val]
    golds = {p.id: p.answer for p in train + val}
    assert golds["train.jsonl:346"] == "1080" and golds["train.jsonl:645"] == "109200000"


def test_gsm8k_reference_solutions_score_one(gsm8k_dir):
    d = load_dataset(DatasetConfig(name="gsm8k", path=str(gsm8k_dir), limit=50))
    problems = d.problems("test")
    assert len(problems) == 50
    for p in problems:
        solution = p.meta["solution"]
        assert score(d, p, solution) == Score(1.0, normalized=p.answer), p.id
        wrong = solution.rsplit("####", 1)[0] + f"#### {int(p.answer) + 1}"
        assert score(d, p, wrong).value == 0.0
    assert score(d, problems[0], "I do not know.") == Score(
        0.0, "no_answer", "no number in the prediction"
    )


# --- number and exact scorers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She makes 9 * 2 = $18 every day.", "18"),
        ("The answer is $18.00.", "18"),
        ("It costs 18 dollars", "18"),
        ("The discount is 42%", "42"),
        ("Total: 1,234,567 people", "1234567"),
        ("#### 2,125", "2125"),
        ("The temperature is -10 degrees", "-10"),
        ("He lost −7 points", "-7"),  # unicode minus
        ("a loss of -$5", "-5"),
        ("5 - 3 = 2", "2"),  # a binary minus is not a sign
        ("x = 4 - 3", "3"),
        ("It weighs 2.5 kg", "2.5"),
        ("about .5 of it", "0.5"),
        ("3/4 of the cake", "0.75"),
        ("that is 1.5e3 meters", "1500"),
        ("so 18kg", "18"),
        ("The answer is 10. Check: 10 + 2 = 12", "10"),  # the marker beats the last number
        ("Answer: 7 apples and 3 pears", "7"),
        ("\\boxed{5} (we used 7 steps)", "5"),  # the box beats everything
        ("\\boxed{\\frac{3}{4}}", "0.75"),
        ("\\boxed{-\\frac{1}{2}}", "-0.5"),
        ("\\boxed{\\dfrac{\\frac{1}{2}}{3}}", "1/6"),  # nested braces
        ("\\boxed{1{,}234}", "1234"),
        ("\\boxed{\\$18.50}", "18.5"),
        ("\\boxed{x = 7}", "7"),
        ("\\boxed{12 \\text{ dollars}}", "12"),
        ("The answer is $\\frac{3}{4}$.", "0.75"),
        ("dated 1/2/2020", "1"),
        ("no digits here", None),
    ],
)
def test_extract_number(text, expected):
    value = extract_number(text)
    assert (None if value is None else format_number(value)) == expected


def test_number_comparison_and_formatting():
    assert numbers_equal(Fraction(1, 3), Fraction("0.333333"))  # within 1e-6
    assert not numbers_equal(Fraction(1, 3), Fraction("0.33"))
    assert not numbers_equal(Fraction(1234567), Fraction(1234568))  # integers: exact
    assert numbers_equal(Fraction("1e12") + Fraction(1, 10), Fraction("1e12"))  # relative
    assert not numbers_equal(Fraction(10**400), Fraction(10**400) + Fraction(1, 2))  # no overflow
    assert [format_number(Fraction(n, d)) for n, d in [(1, 8), (-7, 2), (7, 3), (10, 1)]] == [
        "0.125",
        "-3.5",
        "7/3",
        "10",
    ]
    d = SplitDataset("t", "math", {}, "number")
    p = Problem("p", "q", "0.75", "math")
    assert score(d, p, "three quarters: 3/4").value == 1.0
    assert score(d, p, "75%").value == 0.0
    assert score(d, p, "").error == "no_answer"


def test_exact_scorer():
    assert exact_match("Paris", "  PARIS. ") == (True, "paris")
    assert exact_match("Paris", "Let me think. The answer is Paris.")[0]
    assert exact_match("Paris", "\\boxed{\\text{Paris}}")[0]
    assert not exact_match("Paris", "Lyon")[0]
    d = SplitDataset("t", "math", {}, "exact")
    assert score(d, Problem("p", "q", "Yes", "math"), "yes").value == 1.0
    assert score(d, Problem("p", "q", "Yes", "math"), " ").error == "no_answer"


# --- MATH -------------------------------------------------------------------------------------


def test_last_boxed_handles_nesting():
    assert last_boxed("so \\boxed{\\frac{1}{\\sqrt{2}}} done") == "\\frac{1}{\\sqrt{2}}"
    assert (
        last_boxed("\\boxed{1} then \\boxed{\\left\\{ 2, 3 \\right\\}}")
        == "\\left\\{ 2, 3 \\right\\}"
    )
    assert last_boxed("\\fbox{x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed 5") == "5"
    assert last_boxed("\\boxed{\\frac{1}{2}") is None  # unbalanced
    assert last_boxed("no box") is None


def test_math_dataset_equivalence_via_math_verify(tmp_path):
    rows = [
        {
            "problem": "Half of one?",
            "solution": "It is $\\boxed{\\frac{1}{2}}$.",
            "level": "Level 1",
        },
        {"problem": "Expand.", "solution": "We get $\\boxed{x^{2}+2x+1}$."},
        {"problem": "Set?", "solution": "\\boxed{\\{1, 2\\}}", "answer": "\\{1,2\\}"},
    ]
    path = write_jsonl(tmp_path / "math.jsonl", rows)
    d = load_dataset(DatasetConfig(name="math", path=str(path), test_fraction=1.0, val_fraction=0))
    problems = {p.question: p for p in d.problems("test")}
    half = problems["Half of one?"]
    assert half.answer == "\\frac{1}{2}" and half.meta["level"] == "Level 1"
    for prediction in ["\\boxed{0.5}", "So the answer is \\boxed{\\frac{2}{4}}.", "$\\boxed{1/2}$"]:
        assert score(d, half, prediction).value == 1.0, prediction
    wrong = score(d, half, "\\boxed{\\frac{1}{3}}")
    assert wrong == Score(0.0, None, "", "\\frac{1}{3}")
    assert score(d, problems["Expand."], "\\boxed{(x+1)^2}").value == 1.0
    assert score(d, problems["Expand."], "\\boxed{(x-1)^2}").value == 0.0
    assert score(d, problems["Set?"], "\\boxed{\\{2, 1\\}}").value == 1.0
    assert score(d, half, "").error == "no_answer"


def test_math_verify_timeouts():
    # math-verify's own limit, on an input that makes sympy compute for ages
    result = asyncio.run(score_math("1", "\\boxed{99999999^{99999999}}", 2.0))
    assert result.value == 0.0 and result.error == "timeout"


def test_math_verify_hung_worker_is_killed(tmp_path):
    """A check past its deadline (a hang math-verify's own alarm cannot stop) kills the worker."""
    pids = tmp_path / "pids"
    hang = tmp_path / "hang.py"
    hang.write_text(
        "import os, sys, time\n"
        f"open({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
        "print('{\"ready\": true}', flush=True)\n"
        "for line in sys.stdin:\n    time.sleep(600)\n"
    )
    verifier = MathVerifier(max_workers=1, command=[sys.executable, str(hang)])
    try:
        for _ in range(2):  # the second request gets a fresh worker
            start = time.monotonic()
            result = asyncio.run(score_math("1", "\\boxed{1}", 0.5, verifier))
            assert (result.value, result.error) == (0.0, "timeout")
            assert time.monotonic() - start < 5
        started = [int(pid) for pid in pids.read_text().split()]
        assert len(started) == 2
        for pid in started:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # killed and reaped
    finally:
        verifier.close()


def test_math_verify_that_cannot_start_is_an_infrastructure_error(tmp_path):
    """A worker that cannot start is wfopt's fault: the run stops, no answer is scored 0."""
    broken = tmp_path / "broken.py"
    broken.write_text('print(\'{"ready": false, "error": "ImportError: no math_verify"}\')\n')
    verifier = MathVerifier(max_workers=1, command=[sys.executable, str(broken)])
    try:
        with pytest.raises(ScorerError, match=r"ImportError: no math_verify.*broken\.py"):
            asyncio.run(score_math("\\frac{1}{2}", "so \\boxed{\\dfrac{1}{2}}", 2.0, verifier))
    finally:
        verifier.close()


# --- HumanEval --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def humaneval() -> SplitDataset:
    cfg = DatasetConfig(name="humaneval", test_fraction=1.0, val_fraction=0.0, score_timeout_s=5)
    return load_dataset(cfg)


@pytest.fixture(scope="module")
def he(humaneval) -> dict[str, Problem]:
    return {p.id: p for p in humaneval.problems("test")}


def test_humaneval_loads_from_the_package(humaneval, he):
    assert humaneval.kind == "code" and len(he) == 164
    p = he["HumanEval/0"]
    assert p.entry_point == "has_close_elements" and p.question.startswith(
        "from typing import List"
    )
    assert "def check(candidate)" in p.tests and "def check" not in p.question
    assert p.public_tests.splitlines()[0] == (
        "assert has_close_elements([1.0, 2.0, 3.0], 0.5) == False"
    )
    assert he["HumanEval/72"].public_tests.startswith("assert will_it_fly([1, 2], 5) == False")
    assert he["HumanEval/80"].public_tests is None  # "is_happy(a) => False": `a` is no value
    default = load_dataset(DatasetConfig(name="humaneval"))  # the configured fractions
    sizes = [len(default.problems(s)) for s in ("train", "validation", "test")]
    assert sizes == [115, 16, 33]
    if HUMANEVAL_FILE.is_file():  # dataset.path overrides the packaged copy: it is the split
        cfg = DatasetConfig(name="humaneval", path=str(HUMANEVAL_FILE))
        whole = load_dataset(cfg).problems("test")
        assert [p.id for p in whole] == [f"HumanEval/{i}" for i in range(164)]
        cfg.resplit = True  # ... unless asked to re-split it like the packaged copy
        assert [p.id for p in load_dataset(cfg).problems("test")] == [
            p.id for p in default.problems("test")
        ]


@pytest.mark.parametrize("task", ["HumanEval/0", "HumanEval/10", "HumanEval/32", "HumanEval/38"])
def test_humaneval_canonical_solutions_pass(humaneval, he, task):
    p = he[task]
    full = p.question + p.answer
    assert score(humaneval, p, full) == Score(1.0)
    assert score(humaneval, p, p.answer).value == 1.0  # a body completing the prompt
    # the whole function alone in a fence (its prompt's imports and helpers are prepended)
    function = full[full.index(f"def {p.entry_point}(") :]
    assert score(humaneval, p, f"Here:\n```python\n{function}\n```\nDone.").value == 1.0


def test_humaneval_failures_have_categories(humaneval, he):
    p = he["HumanEval/0"]
    header = "def has_close_elements(numbers, threshold):\n"
    cases = {
        "wrong": header + "    return False\n",
        "syntax_error": header + "    return (\n",
        "runtime_error": header + "    return undefined_name\n",
    }
    for category, code in cases.items():
        result = score(humaneval, p, code)
        assert (result.value, result.error) == (0.0, category), result
    assert "NameError" in score(humaneval, p, cases["runtime_error"]).detail
    # exiting early must not count as passing the tests
    exit_early = "import os, sys\nos._exit(0)\n" + header + "    return False\n"
    assert score(humaneval, p, exit_early).value == 0.0
    assert score(humaneval, p, "import sys\nsys.exit(0)\n").error == "runtime_error"
    assert score(humaneval, p, "").error == "no_answer"
    assert set(ERROR_CATEGORIES) >= {"wrong", "syntax_error", "runtime_error", "timeout", "memory"}


def test_humaneval_hanging_solution_times_out_quickly(he):
    d = load_dataset(DatasetConfig(name="humaneval", score_timeout_s=1.0))
    start = time.monotonic()
    result = score(d, he["HumanEval/0"], "def has_close_elements(n, t):\n    while True: pass\n")
    assert (result.value, result.error) == (0.0, "timeout")
    assert time.monotonic() - start < 5


def test_humaneval_public_tests_pass_with_canonical_solutions(humaneval, he):
    """Every extracted docstring example is a runnable assert the reference solution passes."""
    with_examples = [p for p in he.values() if p.public_tests]
    assert len(with_examples) >= 120

    async def run_all() -> list[Score]:
        public = [
            Problem(p.id, p.question, p.answer, "code", p.entry_point, p.public_tests, meta=p.meta)
            for p in with_examples
        ]
        return await asyncio.gather(*(humaneval.score(q, q.answer) for q in public))

    failed = [
        (p.id, s)
        for p, s in zip(with_examples, asyncio.run(run_all()), strict=True)
        if s.value != 1.0
    ]
    assert failed == []


# --- MBPP and generic JSONL -------------------------------------------------------------------


MBPP_ROWS = [
    {
        "task_id": 2,
        "text": "Write a function to find the shared elements from the given two lists.",
        "code": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))",
        "test_list": [
            "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
            "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))",
        ],
        "test_setup_code": "",
    },
    {
        "task_id": 7,
        "text": "Write a function to scale a number by the global factor.",
        "code": "def scale(x):\n    return x * FACTOR",
        "test_list": ["assert scale(2) == 6", "assert scale(0) == 0", "assert scale(-1) == -3"],
        "test_setup_code": "FACTOR = 3",
    },
]


def test_mbpp_from_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS)
    cfg = DatasetConfig(name="mbpp", path=str(path), test_fraction=1.0, val_fraction=0.0)
    d = load_dataset(cfg)
    problems = {p.id: p for p in d.problems("test")}
    first, scaled = problems["2"], problems["7"]
    assert first.entry_point == "similar_elements" and scaled.entry_point == "scale"
    assert first.question.startswith("Write a function to find the shared elements")
    assert MBPP_ROWS[0]["test_list"][0] in first.question
    assert MBPP_ROWS[0]["test_list"][1] not in first.question
    assert first.public_tests == MBPP_ROWS[0]["test_list"][0]
    assert scaled.tests.splitlines() == ["FACTOR = 3", *MBPP_ROWS[1]["test_list"]]
    assert score(d, first, f"```python\n{MBPP_ROWS[0]['code']}\n```") == Score(1.0)
    assert score(d, scaled, MBPP_ROWS[1]["code"]) == Score(1.0)  # setup code ran first
    wrong = score(d, scaled, "def scale(x):\n    return x * 2")
    assert (wrong.value, wrong.error) == (0.0, "wrong")


def test_jsonl_with_configured_fields_and_scorers(tmp_path):
    rows = [{"qid": f"q{i}", "prompt": f"What is {i} + {i}?", "gold": 2 * i} for i in range(10)]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    cfg = DatasetConfig(
        name="jsonl", path=str(path), question_field="prompt", answer_field="gold", id_field="qid"
    )
    d = load_dataset(cfg)
    every = [p for s in ("train", "validation", "test") for p in d.problems(s)]
    assert sorted(p.id for p in every) == sorted(f"q{i}" for i in range(10))
    p = next(p for p in every if p.id == "q4")
    assert (p.question, p.answer) == ("What is 4 + 4?", "8")
    assert score(d, p, "4 + 4 = 8").value == 1.0
    exact = write_jsonl(
        tmp_path / "capitals.jsonl", [{"question": "Capital of France?", "answer": "Paris"}]
    )
    d = load_dataset(
        DatasetConfig(
            name="jsonl", path=str(exact), scorer="exact", test_fraction=1.0, val_fraction=0
        )
    )
    assert score(d, d.problems("test")[0], "paris").value == 1.0
    code = write_jsonl(
        tmp_path / "code.jsonl",
        [{"question": "Write inc(x).", "answer": "", "tests": ["assert inc(1) == 2"]}],
    )
    d = load_dataset(
        DatasetConfig(
            name="jsonl", path=str(code), scorer="code", test_fraction=1.0, val_fraction=0
        )
    )
    p = d.problems("test")[0]
    assert d.kind == "code" and p.entry_point == "inc"
    assert score(d, p, "def inc(x):\n    return x + 1").value == 1.0


# --- malformed data ---------------------------------------------------------------------------


def test_malformed_jsonl_errors_name_file_line_and_field(tmp_path):
    good = {"question": "1 + 1?", "answer": "It is 2.\n#### 2"}
    bad_json = write_jsonl(tmp_path / "bad.jsonl", [good, good, '{"question": "x", "answer": '])
    with pytest.raises(DatasetError, match=r"bad\.jsonl, line 3: invalid JSON"):
        load_dataset(DatasetConfig(name="gsm8k", path=str(bad_json)))
    missing = write_jsonl(tmp_path / "missing.jsonl", [good, "", {"question": "no answer"}])
    with pytest.raises(DatasetError, match=r"missing\.jsonl, line 3: missing field 'answer'"):
        load_dataset(DatasetConfig(name="gsm8k", path=str(missing)))
    no_hashes = write_jsonl(tmp_path / "nohash.jsonl", [{"question": "q", "answer": "2"}])
    with pytest.raises(DatasetError, match=r"nohash\.jsonl, line 1: field 'answer' has no '####"):
        load_dataset(DatasetConfig(name="gsm8k", path=str(no_hashes)))
    not_number = write_jsonl(tmp_path / "words.jsonl", [{"question": "q", "answer": "two"}])
    with pytest.raises(DatasetError, match=r"words\.jsonl, line 1: field 'answer' is not a number"):
        load_dataset(DatasetConfig(name="jsonl", path=str(not_number)))
    no_box = write_jsonl(tmp_path / "nobox.jsonl", [{"problem": "p", "solution": "s"}])
    with pytest.raises(DatasetError, match=r"nobox\.jsonl, line 1: field 'solution' has no"):
        load_dataset(DatasetConfig(name="math", path=str(no_box)))
    with pytest.raises(DatasetError, match=r"nowhere\.jsonl: no such file"):
        load_dataset(DatasetConfig(name="gsm8k", path=str(tmp_path / "nowhere.jsonl")))
    (tmp_path / "dir").mkdir()
    write_jsonl(tmp_path / "dir" / "test.jsonl", [good])
    with pytest.raises(DatasetError, match=r"needs train\.jsonl and test\.jsonl"):
        load_dataset(DatasetConfig(name="gsm8k", path=str(tmp_path / "dir")))
    with pytest.raises(DatasetError, match=r"dataset\.path"):
        load_dataset(DatasetConfig(name="gsm8k"))
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset(DatasetConfig(name="gsm9k"))


def test_hf_source_without_the_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DatasetError, match=r"pip install datasets.*dataset\.path"):
        load_dataset(DatasetConfig(name="gsm8k", hf_name="openai/gsm8k"))
