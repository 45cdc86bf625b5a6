"""Answer extraction and safe math verification: the accuracy reward r_i of the recipe.

Why this shape: the accuracy reward decides what the policy learns, and it reads untrusted model output on every
rollout. So the checker never hands model text to `eval`, `sympify` or `parse_expr`. It normalises the text
(strip `$`, `\\text{}`, units, thousands separators, ...), then parses it with the small grammar below into
sympy numbers (exact integers and rationals, square roots, pi), refusing anything whose size could blow up
(number literals over 200 digits, results over 10^1000, nesting over 60 levels, inputs over 2,000 characters
after extraction). Every step checks a deadline, so a call returns within its time limit, and any failure is
simply "not equal": `verify` never raises.

    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/' | \\cdot | \\times | \\div | <implicit>) unary)*
    unary  := ('-' | '+') unary | power
    power  := atom ('^' unary)?                      right-associative: a^b^c = a^(b^c)
    atom   := number ['%'] | '(' expr ')' | '{' expr '}' | '[' expr ']'
            | \\frac{expr}{expr} | \\sqrt{expr} | \\sqrt[n]{expr} | \\pi

A top-level comma list, or one wrapped in (), [] or \\{\\}, is a tuple (ordered) or a set (unordered, for \\{\\}
and bare lists). Two scalars are equal when exactly equal or within a relative tolerance of 1e-6.

Imports: sympy (numbers only; no parsing of text).
"""

import math
import re
import time
from fractions import Fraction

import sympy

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
MAX_ANSWER_CHARS = 2000
MAX_DIGITS = 200
MAX_RESULT_DIGITS = 1000
MAX_DEPTH = 60
REL_TOL = 1e-6


# ---------------------------------------------------------------------------------------------- extraction

def split_response(response: str) -> tuple[str, str]:
    """(trace, answer): the reasoning before the first `</think>` and the text after it.

    The prompt usually ends in `<think>\\n`, so the response starts inside the trace; if the model writes
    `<think>` itself, anything before it is dropped from the trace. Without `</think>` the whole response is
    the trace and the answer part is empty.
    """
    close = response.find(THINK_CLOSE)
    if close < 0:
        trace, answer = response, ""
    else:
        trace, answer = response[:close], response[close + len(THINK_CLOSE):]
    open_ = trace.rfind(THINK_OPEN)
    if open_ >= 0:
        trace = trace[open_ + len(THINK_OPEN):]
    return trace.strip(), answer.strip()


def last_boxed(text: str) -> str | None:
    """Contents of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced nested braces; `\\boxed 5` too."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    while start >= 0:
        i = start + (6 if text.startswith("\\boxed", start) else 5)
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                c = text[j]
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1:j]
        elif i < len(text) and text[i] == " ":  # "\boxed 5": the next whitespace-free token
            m = re.match(r" +([^\s$]+)", text[i:i + 200])
            if m:
                return m.group(1)
        # unbalanced or bare "\boxed": try an earlier occurrence
        prev = text[:start]
        start = max(prev.rfind("\\boxed"), prev.rfind("\\fbox"))
    return None


def extract_answer(response: str) -> str | None:
    """The final answer of a response: the last boxed answer of the answer part, else of the trace."""
    trace, answer = split_response(response)
    found = last_boxed(answer)
    return found if found is not None else last_boxed(trace)


# ---------------------------------------------------------------------------------------------- normalisation

class _Reject(Exception):
    """The text is not a number we accept (or is too big, too deep, or too slow to evaluate)."""


_TEXT_CMDS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_DROP = [
    (re.compile(r"\\(?:left|right|big|Big|bigg|Bigg|displaystyle|,|;|:|!|quad|qquad)(?![a-zA-Z])"), " "),
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ"), ""),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\%|％"), "%"),
    (re.compile(r"\\\$|\$|€|£|¥|₩|฿|R\$"), ""),
    (re.compile(r"[−–—]"), "-"),
    (re.compile(r"\\(?:times|cdot)"), "*"),
    (re.compile(r"×|·|⋅"), "*"),
    (re.compile(r"\\div|÷"), "/"),
    (re.compile(r"π"), r"\\pi "),
    (re.compile(r"√"), r"\\sqrt"),
    (re.compile(r"\\\{"), "⦃"),  # set braces, kept apart from grouping braces
    (re.compile(r"\\\}"), "⦄"),
    (re.compile(r"[\u00a0\u2009\u202f\u2007]"), " "),
]


def normalize(text: str) -> str:
    s = text.strip()
    if "\\boxed" in s or "\\fbox" in s:
        s = last_boxed(s) or ""
    for _ in range(3):  # nested \text{\textbf{...}}
        s = _TEXT_CMDS.sub(lambda m: m.group(1) if re.search(r"\d", m.group(1)) else " ", s)
    for pat, rep in _DROP:
        s = pat.sub(rep, s)
    s = s.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    if "=" in s:  # "x = 5", "n=12": keep the right-hand side
        s = s.rsplit("=", 1)[1]
    # units and words: letter runs that are not LaTeX commands (keep \frac, \sqrt, \pi)
    unit_power = r"(?:\s*\^\s*\{?\s*\d\s*\}?)?"  # cm^2, m^{3}
    s = re.sub(r"(?<![\\a-zA-Z])[^\W\d_]{2,}" + unit_power, " ", s)
    s = re.sub(r"(?<=\d)\s*[^\W\d_](?![^\W\d_])" + unit_power, " ", s)  # "5m", "3 h": one-letter unit
    s = s.strip().rstrip(".。").strip()
    return s


# ---------------------------------------------------------------------------------------------- numbers

_NUM = re.compile(
    r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)"          # 1,000 / 12,345.5
    r"|\d{1,3}(?: \d{3})+(?:[.,]\d+)?(?!\d)"        # 1 000 / 1 000,5
    r"|\d{1,3}(?:\.\d{3}){2,}(?:,\d+)?(?!\d)"       # 1.000.000 / 1.000.000,5
    r"|\d{1,3}(?:\.\d{3})+,\d+(?!\d)"               # 1.000,5
    r"|\d+(?:[.,]\d+)?|\.\d+"                        # 12 / 1.5 / 1,5 / .5
)


def _number_values(tok: str) -> list:
    """Exact values of a number literal; ambiguous separators ("1.000", "1,5") give every reading."""
    digits = sum(c.isdigit() for c in tok)
    if digits > MAX_DIGITS:
        raise _Reject("number too long")
    if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", tok):
        return [Fraction(tok.replace(",", ""))]
    if " " in tok:
        return [Fraction(tok.replace(" ", "").replace(",", "."))]
    if tok.count(".") >= 2 or ("." in tok and "," in tok):  # European thousands with decimal comma
        return [Fraction(tok.replace(".", "").replace(",", "."))]
    if re.fullmatch(r"\d{1,3}\.\d{3}", tok):  # "1.000": one point and three digits could be either
        return [Fraction(tok), Fraction(tok.replace(".", ""))]
    return [Fraction(tok.replace(",", "."))]


# ---------------------------------------------------------------------------------------------- parser

_TOKEN = re.compile(r"\s*(?:(\\frac|\\sqrt|\\pi)(?![a-zA-Z])|(" + _NUM.pattern + r")|([-+*/^(){}\[\]%⦃⦄,;]))")


def _tokenize(s: str, deadline: float) -> list:
    toks, i = [], 0
    while i < len(s):
        if time.perf_counter() > deadline:
            raise _Reject("time limit")
        m = _TOKEN.match(s, i)
        if not m or m.end() == i:
            if s[i:].strip() == "":
                break
            raise _Reject(f"unexpected text at {s[i:i + 10]!r}")
        cmd, num, op = m.groups()
        toks.append(("cmd", cmd) if cmd else ("num", num) if num else ("op", op))
        i = m.end()
    return toks


def _to_sympy(f: Fraction):
    return sympy.Rational(f.numerator, f.denominator)


class _Parser:
    """Recursive descent over the token list; each method returns a list of candidate sympy values."""

    def __init__(self, toks, deadline):
        self.t, self.i, self.deadline, self.depth = toks, 0, deadline, 0

    def peek(self):
        return self.t[self.i] if self.i < len(self.t) else (None, None)

    def take(self, kind=None, val=None):
        k, v = self.peek()
        if (kind and k != kind) or (val and v != val):
            raise _Reject(f"expected {val or kind}")
        self.i += 1
        return v

    def check(self):
        if time.perf_counter() > self.deadline:
            raise _Reject("time limit")

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Reject("nested too deep")
        self.check()

    def expr(self):
        self.enter()
        vals = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()
            rhs = self.term()
            vals = _combine(vals, rhs, (lambda a, b: a + b) if op == "+" else (lambda a, b: a - b))
        self.depth -= 1
        return vals

    def term(self):
        vals = self.unary()
        while True:
            k, v = self.peek()
            if (k, v) in (("op", "*"), ("op", "/")):
                self.take()
                rhs = self.unary()
                vals = _combine(vals, rhs, (lambda a, b: a * b) if v == "*" else _div)
            elif k in ("num", "cmd") or (k, v) in (("op", "("), ("op", "{")):
                vals = _combine(vals, self.unary(), lambda a, b: a * b)  # implicit: 2\pi, 3\sqrt{2}, 2(3)
            else:
                return vals

    def unary(self):
        self.enter()
        k, v = self.peek()
        if (k, v) in (("op", "-"), ("op", "+")):
            self.take()
            vals = self.unary()
            out = [-x for x in vals] if v == "-" else vals
        else:
            out = self.power()
        self.depth -= 1
        return out

    def power(self):
        base = self.atom()
        if self.peek() == ("op", "^"):
            self.take()
            return _combine(base, self.unary(), _pow)
        return base

    def group(self, open_, close):
        self.take("op", open_)
        vals = self.expr()
        self.take("op", close)
        return vals

    def atom(self):
        self.check()
        k, v = self.peek()
        if k == "num":
            self.take()
            vals = [_to_sympy(f) for f in _number_values(v)]
            if self.peek() == ("op", "%"):  # a percentage reads as p or p/100
                self.take()
                vals = vals + [x / 100 for x in vals]
            return vals
        if (k, v) == ("op", "("):
            return self.group("(", ")")
        if (k, v) == ("op", "{"):
            return self.group("{", "}")
        if (k, v) == ("op", "["):
            return self.group("[", "]")
        if (k, v) == ("cmd", "\\pi"):
            self.take()
            return [sympy.pi]
        if (k, v) == ("cmd", "\\frac"):
            self.take()
            num, den = self._frac_arg(), self._frac_arg()
            return _combine(num, den, _div)
        if (k, v) == ("cmd", "\\sqrt"):
            self.take()
            index = [sympy.Integer(2)]
            if self.peek() == ("op", "["):
                index = self.group("[", "]")
            radicand = self._frac_arg()
            return _combine(radicand, index, lambda a, n: _pow(a, 1 / n))
        raise _Reject(f"unexpected {v!r}")

    def _frac_arg(self):
        # \frac{a}{b}, and the shorthand \frac12 = \frac{1}{2} (single digits)
        k, v = self.peek()
        if (k, v) == ("op", "{"):
            return self.group("{", "}")
        if k == "num" and v.isdigit():
            self.take()
            if len(v) > 1:  # split "12" into "1" and push back "2"
                self.t.insert(self.i, ("num", v[1:]))
                v = v[0]
            return [sympy.Integer(int(v))]
        return self.atom()


def _div(a, b):
    if b == 0:
        raise _Reject("division by zero")
    return a / b


def _pow(base, exp):
    if not exp.is_number or not base.is_number:
        raise _Reject("not a number")
    e, b = complex(exp.evalf(15)), complex(base.evalf(15))
    if abs(e.imag) > 0 or abs(e.real) > 10_000:
        raise _Reject("exponent too large")
    if abs(b) not in (0.0, 1.0) and abs(e.real) * math.log10(abs(b)) > MAX_RESULT_DIGITS:
        raise _Reject("result too large")
    if b == 0 and e.real < 0:
        raise _Reject("division by zero")
    return base ** exp


def _combine(xs, ys, op):
    out = []
    for x in xs:
        for y in ys:
            v = op(x, y)
            if v.is_number and v.is_Rational and max(len(str(abs(v.p))), len(str(v.q))) > MAX_RESULT_DIGITS:
                raise _Reject("result too large")
            out.append(v)
            if len(out) > 16:  # ambiguous readings multiply; a handful is plenty
                return out
    return out


def _parse_scalar(s: str, deadline: float) -> list:
    toks = _tokenize(s, deadline)
    if not toks:
        raise _Reject("empty")
    p = _Parser(toks, deadline)
    vals = p.expr()
    if p.i != len(p.t):
        raise _Reject("trailing text")
    return vals


def _split_top(s: str, seps=",;") -> list:
    parts, depth, cur = [], 0, []
    for c in s:
        if c in "({[⦃":
            depth += 1
        elif c in ")}]⦄":
            depth -= 1
        if c in seps and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _parse(s: str, deadline: float):
    """('scalar', [values]) or ('tuple'|'set', [[values], ...])."""
    s = s.strip()
    wrapped = len(s) >= 2 and ((s[0], s[-1]) in (("(", ")"), ("[", "]"), ("⦃", "⦄"), ("{", "}")))
    if wrapped and s[0] == "⦃":
        inner = _split_top(s[1:-1])
        return "set", [_parse_scalar(x, deadline) for x in inner]
    if wrapped and "," in s[1:-1] or ";" in s:
        inner = _split_top(s[1:-1] if wrapped else s)
        thousands = re.fullmatch(r"\d{1,3}", inner[0]) and all(re.fullmatch(r"\d{3}", x) for x in inner[1:])
        if len(inner) > 1 and all(inner) and not thousands:
            kind = "tuple" if wrapped and s[0] in "([" else "set"
            return kind, [_parse_scalar(x, deadline) for x in inner]
    if re.search(r",\s", s):  # "2, 3" (comma then space): a bare list, not a thousands separator
        inner = _split_top(s)
        if len(inner) > 1 and all(inner):
            return "set", [_parse_scalar(x, deadline) for x in inner]
    return "scalar", _parse_scalar(s.replace("⦃", "{").replace("⦄", "}"), deadline)


# ---------------------------------------------------------------------------------------------- comparison

def _num_equal(a, b) -> bool:
    if a == b:
        return True
    try:
        x, y = complex(a.evalf(30)), complex(b.evalf(30))
    except (TypeError, ValueError):
        return False
    if not all(math.isfinite(v) for v in (x.real, x.imag, y.real, y.imag)):
        return False
    return abs(x - y) <= REL_TOL * max(abs(x), abs(y)) + 1e-12


def _any_equal(xs, ys) -> bool:
    return any(_num_equal(x, y) for x in xs for y in ys)


def _equal(p, g) -> bool:
    (pk, pv), (gk, gv) = p, g
    if pk == "scalar" or gk == "scalar":
        return pk == gk and _any_equal(pv, gv)
    if len(pv) != len(gv):
        return False
    if pk == "tuple" and gk == "tuple":
        return all(_any_equal(a, b) for a, b in zip(pv, gv))
    unmatched = list(gv)  # sets: a one-to-one matching, greedy is enough for numbers
    for a in pv:
        hit = next((k for k, b in enumerate(unmatched) if _any_equal(a, b)), None)
        if hit is None:
            return False
        unmatched.pop(hit)
    return True


_PLAIN = re.compile(r"-?\d{1,30}(?:\.\d{1,30})?")
_AMBIGUOUS = re.compile(r"-?\d{1,3}\.\d{3}")  # "1.000": one thousand in de/es/pt/fr, one elsewhere


def verify(prediction: str, gold: str, timeout: float = 1.0) -> bool:
    """True when the extracted answer `prediction` equals `gold` as a number, tuple or set.

    Never evaluates the text as code and never raises; returns False past `timeout` seconds.
    """
    try:
        if prediction is None or gold is None:
            return False
        p, g = prediction.strip(), gold.strip()
        if _PLAIN.fullmatch(p) and _PLAIN.fullmatch(g) and not _AMBIGUOUS.fullmatch(p):  # common case, no sympy
            return Fraction(p) == Fraction(g)
        if not p or len(p) > MAX_ANSWER_CHARS or len(g) > MAX_ANSWER_CHARS:
            return False
        deadline = time.perf_counter() + timeout
        p, g = normalize(p), normalize(g)
        if not p or not g:
            return False
        return _equal(_parse(p, deadline), _parse(g, deadline)) and time.perf_counter() <= deadline
    except (_Reject, ArithmeticError, ValueError, TypeError, RecursionError, MemoryError, AttributeError):
        return False
    except Exception:  # untrusted input: any other failure is "not equal", never a crash of the trainer
        return False


def accuracy(response: str, gold: str) -> float:
    """r_i: 1.0 when the response's final boxed answer verifies against `gold`, else 0.0."""
    return 1.0 if verify(extract_answer(response), gold) else 0.0
