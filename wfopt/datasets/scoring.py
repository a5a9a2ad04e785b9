"""Pure answer extraction and comparison: numbers in free text, boxed LaTeX, exact strings.

No I/O here: math-verify runs in `mathverify.py` (it needs a deadline), code in `code.py`.

Number comparison (`numbers_equal`): two integers must be equal; otherwise the tolerance is
1e-6, absolute for values up to 1 and relative beyond (so 0.333333 == 1/3, but 1234567 !=
1234568).
"""

from __future__ import annotations

import ast
import math
import re
from fractions import Fraction

TOLERANCE = 1e-6

# A number as people write it: thousands separators only in groups of three ("1,234,567"),
# decimals (".5" too), an exponent, or a simple fraction ("3/4"). A sign counts only when it
# is attached ("-3", "-$3", "$-3"), so "5 - 3" ends with 3, not -3.
_NUMBER = re.compile(
    r"(?<![\w./])(?P<sign>-?)\$?(?P<sign2>-?)"
    r"(?P<body>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+)"
    r"(?:\s?/\s?(?P<den>\d+(?:\.\d+)?)(?![\d,]*/))?"
)
_ANSWER_MARKER = re.compile(
    r"final answer|answer is|answer\s*:|answer\s*=|####|result is|result\s*:", re.IGNORECASE
)
_UNICODE = str.maketrans({"−": "-", "–": "-", "\u00a0": " ", "\u202f": " ", "\u2009": " "})


def _number_from_match(match: re.Match[str]) -> Fraction | None:
    try:
        value = Fraction(match.group("body").replace(",", ""))
        if match.group("den") is not None:
            value /= Fraction(match.group("den"))
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return -value if match.group("sign") or match.group("sign2") else value


def numbers_in(text: str) -> list[Fraction]:
    """Every number in plain text, in order, as exact Fractions ("1,234.5", "$18", "3/4")."""
    text = text.translate(_UNICODE)
    found = (_number_from_match(m) for m in _NUMBER.finditer(text))
    return [value for value in found if value is not None]


def parse_number(text: str) -> Fraction | None:
    """The first number in `text`, or None."""
    numbers = numbers_in(text)
    return numbers[0] if numbers else None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` (nested braces included), or the
    token after `\\boxed ` (valid LaTeX without braces); None if absent or unbalanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:]
    bare = re.match(r"\\(?:boxed|fbox) +([^\s{$]+)", rest)
    if bare:
        return bare.group(1)
    opening = re.match(r"\\(?:boxed|fbox)\s*\{", rest)
    if not opening:
        return None
    depth = 0
    for i in range(opening.end() - 1, len(rest)):
        if rest[i] == "{":
            depth += 1
        elif rest[i] == "}":
            depth -= 1
            if depth == 0:
                return rest[opening.end() : i]
    return None


_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_SHORT = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_LATEX_NOISE = re.compile(
    r"\\text\s*\{[^{}]*\}|\\mathrm\s*\{[^{}]*\}|\\mbox\s*\{[^{}]*\}"
    r"|\^\s*\{?\\circ\}?|\\left|\\right|\\[,;:! ]|\\%|\\\$|\\displaystyle"
)


def latex_to_plain(text: str) -> str:
    r"""Just enough LaTeX → plain text for numbers: \frac{a}{b} → a/b, 1{,}234 → 1,234, and
    units, \text{...}, spacing and \left/\right removed."""
    text = text.replace("{,}", ",")
    previous = None
    while previous != text:  # innermost fractions first: \frac{\frac{1}{2}}{3}
        previous, text = text, _FRAC.sub(r"(\1)/(\2)", text)
    text = re.sub(r"\((-?[\d.]+)\)", r"\1", text)  # (3)/(4) -> 3/4
    text = _FRAC_SHORT.sub(r"\1/\2", text)
    text = _LATEX_NOISE.sub(" ", text)
    return text.replace("{", " ").replace("}", " ")


def _arithmetic(text: str) -> Fraction | None:
    """The exact value of a short plain expression of numbers, + - * / and parentheses
    ("((1)/(2))/(3)" from a nested \\frac), or None; nothing else is evaluated."""
    text = text.strip()
    if len(text) > 100 or not re.fullmatch(r"[\d\s.+\-*/()]*\d[\d\s.+\-*/()]*", text):
        return None
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None

    def value(node: ast.expr) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = value(node.operand)
            return -inner if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](value(node.left), value(node.right))
        raise ValueError("not plain arithmetic")

    try:
        return value(tree)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def _boxed_number(content: str) -> Fraction | None:
    plain = latex_to_plain(content)
    if "=" in plain:  # "x = 5": the value after the last '='
        plain = plain.rsplit("=", 1)[1]
    exact = _arithmetic(plain.replace("\\cdot", "*").replace("\\times", "*"))
    return exact if exact is not None else parse_number(plain)


def extract_number(text: str) -> Fraction | None:
    """The final numeric answer in free text.

    Preference: the last `\\boxed{}`; then the first number after the last answer marker
    ("answer is", "Answer:", "####", "final answer", ...); then the last number in the text.
    """
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        value = _boxed_number(boxed)
        if value is not None:
            return value
    plain = latex_to_plain(text)
    markers = list(_ANSWER_MARKER.finditer(plain))
    if markers:
        value = parse_number(plain[markers[-1].end() :])
        if value is not None:
            return value
    numbers = numbers_in(plain)
    return numbers[-1] if numbers else None


def numbers_equal(a: Fraction, b: Fraction, tol: float = TOLERANCE) -> bool:
    """Equal integers, or within `tol` (absolute up to 1, relative beyond)."""
    if a == b:
        return True
    if a.denominator == 1 and b.denominator == 1:
        return False
    try:
        return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)
    except OverflowError:
        return False


def format_number(value: Fraction) -> str:
    """Canonical text of an exact number: "12", "-3.5", "7/3" (a decimal only when exact)."""
    if value.denominator == 1:
        return str(value.numerator)
    twos = fives = 0
    den = value.denominator
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    digits = max(twos, fives)
    if den != 1 or digits > 12:  # not a short terminating decimal
        return f"{value.numerator}/{value.denominator}"
    scaled = str(abs(int(value * 10**digits))).rjust(digits + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{scaled[:-digits]}.{scaled[-digits:]}"


def normalize_text(text: str) -> str:
    """Stripped, lower-cased, whitespace-collapsed; without a trailing period or wrapping
    quotes/dollars, so "Paris." == "paris" == "$Paris$"."""
    text = " ".join(text.strip().lower().split())
    text = text.rstrip(".").strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`$":
        text = text[1:-1].strip()
    return text


def final_answer_candidates(text: str) -> list[str]:
    """What a free-text prediction may be answering with: the whole text, the last boxed
    content, the rest of the line after the last answer marker, and the last line."""
    candidates = [text]
    boxed = last_boxed(text)
    if boxed is not None:
        candidates.append(re.sub(r"\\text\s*\{([^{}]*)\}", r"\1", boxed))
    markers = list(_ANSWER_MARKER.finditer(text))
    if markers:
        after = text[markers[-1].end() :].strip().lstrip(":=").strip()
        candidates.append(after.splitlines()[0] if after else "")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if lines:
        candidates.append(lines[-1])
    return candidates


def exact_match(gold: str, prediction: str) -> tuple[bool, str]:
    """Case-insensitive, stripped comparison of the gold with any final-answer candidate;
    returns (matched, the normalized candidate that matched or the most specific one)."""
    target = normalize_text(gold)
    normalized = [normalize_text(c) for c in final_answer_candidates(prediction)]
    for candidate in normalized:
        if candidate == target:
            return True, candidate
    return False, normalized[1] if len(normalized) > 1 else normalized[0]


def normalize_latex(text: str) -> str:
    r"""A conservative LaTeX normal form for the math fallback (when math-verify cannot run):
    spacing, \left/\right, \dfrac/\tfrac, \text{} and a leading "x =" removed."""
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.sub(r"\\text\s*\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\left|\\right|\\[,;:! ]|\\displaystyle|\$", "", text)
    text = re.sub(r"^\s*[a-zA-Z]\s*=\s*", "", text)
    return "".join(text.split()).rstrip(".").lower()


def _plain_number(text: str) -> Fraction | None:
    """The number `text` is, if it is nothing but one number (after LaTeX cleanup)."""
    plain = latex_to_plain(text).replace("$", "").strip()
    numbers = numbers_in(plain)
    if len(numbers) != 1 or not re.fullmatch(r"-?[\d.,]+(?:\s?/\s?[\d.]+)?%?", plain):
        return None
    return numbers[0]


def fallback_math_equal(gold: str, prediction: str) -> bool:
    """Gold vs the prediction's last boxed answer: equal normalized LaTeX, or both plain
    numbers and equal (used only when math-verify cannot run)."""
    boxed = last_boxed(prediction)
    answer = boxed if boxed is not None else prediction
    if normalize_latex(answer) == normalize_latex(gold):
        return True
    a, b = _plain_number(answer), _plain_number(gold)
    return a is not None and b is not None and numbers_equal(a, b)
