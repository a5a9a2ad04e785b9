"""Pure answer extraction and comparison: numbers, boxed LaTeX, exact strings.

Code scoring (running tests in the sandbox) lives in `code.py`; these functions do no I/O.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

# A number as people write it: optional sign and currency, thousands separators, decimals,
# a simple fraction, an exponent. Thousands separators only in groups of exactly three digits.
_NUMBER = re.compile(
    r"(?<![\w.])(-)?\s?\$?\s?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?"
    r"(?:\s*/\s*\d+(?:\.\d+)?)?)"
)
_ANSWER_MARKER = re.compile(
    r"(?:final answer|answer is|answer:|answer =|####|result is|result:)", re.IGNORECASE
)


def parse_number(text: str) -> Fraction | None:
    """The first number in `text` as an exact Fraction ("1,234.5", "$18", "3/4", "-2e3")."""
    match = _NUMBER.search(text)
    if not match:
        return None
    sign, body = match.group(1), match.group(2).replace(",", "").replace(" ", "")
    try:
        if "/" in body:
            num, den = body.split("/")
            value = Fraction(num) / Fraction(den)
        else:
            value = Fraction(body)
    except (ValueError, ZeroDivisionError):
        return None
    return -value if sign else value


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces included."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i]
    return None


def _latex_number(text: str) -> Fraction | None:
    """Numbers written in LaTeX inside a box: \\frac{a}{b}, \\dfrac, plain numbers."""
    frac = re.fullmatch(r"\s*(-)?\\d?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}\s*", text)
    if frac:
        try:
            value = Fraction(frac.group(2)) / Fraction(frac.group(3))
        except (ValueError, ZeroDivisionError):
            return None
        return -value if frac.group(1) else value
    cleaned = re.sub(r"\\[,!;: ]|\\text\{[^}]*\}|\\%|%|\\\$", "", text)
    return parse_number(cleaned)


def extract_number(text: str) -> Fraction | None:
    """The final numeric answer in free text.

    Preference: the last `\\boxed{}`; then the first number after the last answer marker
    ("answer is", "Answer:", "####", ...); then the last number in the text.
    """
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        value = _latex_number(boxed)
        if value is not None:
            return value
    markers = list(_ANSWER_MARKER.finditer(text))
    if markers:
        value = parse_number(text[markers[-1].end() :])
        if value is not None:
            return value
    numbers = list(_NUMBER.finditer(text))
    return parse_number(numbers[-1].group(0)) if numbers else None


def numbers_equal(a: Fraction, b: Fraction, tol: float = 1e-6) -> bool:
    """Equal within `tol`, absolute for small values and relative for large ones."""
    return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)


def format_number(value: Fraction) -> str:
    """Canonical text of an exact number: "12", "-3.5", "7/3"."""
    if value.denominator == 1:
        return str(value.numerator)
    decimal = float(value)
    if Fraction(decimal).limit_denominator(10**6) == value and len(repr(decimal)) <= 12:
        return repr(decimal)
    return f"{value.numerator}/{value.denominator}"


def normalize_text(text: str) -> str:
    return " ".join(text.strip().lower().split()).rstrip(".")
