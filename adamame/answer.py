"""Answer extraction and safe math verification: the accuracy reward r_i of the recipe.

Why this shape: the accuracy reward decides what the policy learns, and it reads untrusted model output on every
rollout, where a policy will find any hole that pays. So the checker
  * never hands model text to `eval`, `sympify` or `parse_expr`: its own lexer and recursive-descent grammar
    build sympy expressions from a fixed vocabulary (numbers, single-letter and Greek symbols, + - * / ^, \\frac,
    \\sqrt, \\pi, e, \\infty, sin/cos/tan/log/ln/exp);
  * never joins numbers that words or separators keep apart: `6 or 7`, `3 and 4`, `10 minutes 30 seconds`, `1, 2`
    are sets, and a set must equal the gold as a whole (`x = 5 or x = 7` is {5, 7}, not 7);
  * is bounded: inputs over 2,000 characters, number literals over 200 digits, results over 10^1000 and nesting
    over 60 levels are refused, every step checks a deadline, and symbolic expressions are compared by evaluating
    both at five random points with complex floats (a bounded computation; `2 \\sin b \\cos a` equals
    `\\sin(a+b) - \\sin(a-b)`) rather than by sympy's unbounded `simplify`, which can run for minutes and only
    runs, under a timer, when the points cannot decide; `verify` never raises. A response whose check hits the time
    limit scores 0 and is counted in train_grpo.py's `verify_timeouts` metric.

What an answer may be (after unwrapping `\\text{}` and friends, dropping `$`, `\\left`, spacing commands, units
and other words):
    element  := expr | tuple | interval          a relation `x = e` or `x \\in e` stands for e
    answer   := element (sep element)* | interval (\\cup interval)*
    sep      := , ; | any word: connectives in every language (or, et, または, หรือ ...), units, the rest of a
                sentence | several \\boxed{} in the answer part
    expr     := term (('+' | '-' | \\pm) term)*          (\\pm makes the set {a + b, a - b})
    term     := unary (('*' | '/' | \\cdot | \\times | \\div | implicit) unary)*   never between two numbers
    unary    := ('-' | '+') unary | power
    power    := atom ('^' unary)?                      right-associative: a^b^c = a^(b^c)
    atom     := number ['%'] | symbol | (expr) | {expr} | [expr] | \\frac{expr}{expr} | \\sqrt[n]{expr} | \\pi
              | \\infty | function [^ power] (argument)
Sets are unordered, tuples ordered; `(a, b)` may also be an open interval and `[a, b]` a closed one. Localized
numbers are read every way they can be (`1.000` is 1 or 1000, `2,5` is 2.5 or the set {2, 5}, `1 000` is 1000,
`25%` is 25 or 0.25, `42 個` is 42): right for a multilingual reward even where Math-Verify reads them otherwise.
Two scalars are equal when exactly equal (integers), within a relative 1e-6 (other numbers), or when they agree
at 5 random points of their free symbols (expressions). It also reads `\\text{(C)}`, `11,\\!111,\\!100`, intervals
and their unions, and unordered sets of tuples.

The final answer (`extract_answer`) is the set of the boxes of the answer part (after `</think>`, or the whole text
without one), so a hedge such as `\\boxed{40}, non: \\boxed{42}` is {40, 42}, not 42; when the answer part after a
`</think>` boxes nothing, the reward reads the trace's last box (a reasoning model's last box in its trace is its
latest answer; the evaluation, adamame/scoring.py, checks the answer part's first box, or the trace's first).

Against Math-Verify: on its own regression cases that have a boxed prediction (95 in its tests/test_all.py,
test_open_thoughts.py and test_numina_cases.py) this checker agrees with the verdict those tests expect on 90 (0.947;
`python bench/checker_agreement.py MATH_VERIFY_TESTS_DIR`). Of the cases they reject it accepts one, whose gold
itself boxes two values (`\\boxed{1} no no no no no \\boxed{2}` against `\\boxed{1,2}`: both are the set {1, 2} to
this checker, the gold's last box to Math-Verify); no hedged prediction is accepted. `--verifier math-verify` (on
train_grpo.py and evaluate.py; `pip install math-verify`, not a requirement) uses Math-Verify exactly as the paper's
code calls it: `verify(parse(prompt + response), parse(gold))` for the reward (the prediction first, on the decoded
prompt and response together), `verify(parse(gold), parse(box))` for evaluation.

Imports: sympy (numbers and expressions built here, never parsed from text); adamame: language (split_response).
"""

import cmath
import math
import re
import signal
import threading
import time
from fractions import Fraction

import sympy

from .language import THINK_CLOSE, split_response

MAX_ANSWER_CHARS = 2000
MAX_DIGITS = 200
MAX_RESULT_DIGITS = 1000
MAX_DEPTH = 60
MAX_READINGS = 16
MAX_SET = 64  # more elements than this in one answer is not an answer
REL_TOL = 1e-6


# ---------------------------------------------------------------------------------------------- extraction

def _box_at(text: str, start: int, closing: dict):
    """(contents, end) of the `\\boxed{...}` / `\\fbox{...}` starting at `start`, or (None, start + 1).
    `closing` maps each "{" to its matching "}" (all_boxed finds them in one pass)."""
    i = start + (6 if text.startswith("\\boxed", start) else 5)
    if i < len(text) and text[i] == "{":
        j = closing.get(i)
        return (text[i + 1:j], j + 1) if j is not None else (None, start + 1)
    m = re.match(r" +([^\s$]+)", text[i:i + 200])  # "\boxed 5": the next whitespace-free token
    return (m.group(1), i + m.end()) if m else (None, start + 1)


def _closing_braces(text: str) -> dict:
    """{position of "{": position of its matching "}"}, in one pass over the braces (linear, any input)."""
    stack, match = [], {}
    for m in re.finditer(r"[{}]", text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            match[stack.pop()] = m.start()
    return match


def all_boxed(text: str) -> list:
    """Contents of every top-level `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`), in order."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return []
    closing = _closing_braces(text)
    out, pos = [], 0
    for m in re.finditer(r"\\boxed|\\fbox", text):  # every start found in one pass
        if m.start() < pos:
            continue  # inside a box already read
        found, end = _box_at(text, m.start(), closing)
        if found is not None:
            out.append(found)
            pos = end
    return out


def last_boxed(text: str) -> str | None:
    boxes = all_boxed(text)
    return boxes[-1] if boxes else None


def first_boxed(text: str) -> str | None:
    boxes = all_boxed(text)
    return boxes[0] if boxes else None


def extract_answer(response: str) -> str | None:
    """The reward's final answer: the set of the boxed answers of the answer part (after `</think>`, or the whole
    response when there is none, as the evaluation splits it), written "a, b" when there are several distinct ones,
    so a hedge (`\\boxed{40}, non: \\boxed{42}`) is the set {40, 42}; when the answer part after a `</think>` boxes
    nothing, the last boxed answer of the trace; None if nothing is boxed."""
    close = response.find(THINK_CLOSE)
    answer = response if close < 0 else response[close + len(THINK_CLOSE):]
    boxes = list(dict.fromkeys(b.strip() for b in all_boxed(answer)))
    if boxes:
        return boxes[0] if len(boxes) == 1 else ", ".join(boxes)
    return last_boxed(response[:close]) if close >= 0 else None


def think_format_ok(text: str) -> bool:
    """The released reward's format check: a `<think>` block of at least 10 characters, then `\\boxed{` after its
    `</think>` (text: the decoded prompt and response, as there)."""
    m = re.search(r"<think>([\s\S]+?)</think>([\s\S]+)", text)
    return bool(m) and len(m.group(1).strip()) >= 10 and re.search(r"\\boxed\{", m.group(2)) is not None


def paper_boxed(text: str) -> str:
    """The paper's evaluation script's extract_boxed, rule for rule: the contents of the first `\\boxed{` by brace
    counting (to the end of the text, less its last character, when the braces never close), stripped; "" if none."""
    idx = text.find("\\boxed{")
    if idx == -1:
        return ""
    start = i = idx + len("\\boxed{")
    depth = 1
    while i < len(text) and depth > 0:
        depth += (text[i] == "{") - (text[i] == "}")
        i += 1
    return text[start:i - 1].strip()


def paper_answers(response: str) -> tuple:
    """The paper's evaluation: (first box of the answer part, first box of the trace), split the paper's way; ""
    where there is none."""
    trace, answer = split_response(response, paper=True)
    return paper_boxed(answer), paper_boxed(trace)


# ---------------------------------------------------------------------------------------------- normalisation

class _Reject(Exception):
    """Not an answer we can read (or too big, too deep, or too slow)."""


_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|texttt|textsf|textup|textnormal|emph|mathrm|mathbf|mathit|mathsf|"
                       r"mbox|operatorname)\s*\{([^{}]*)\}")
_REPLACE = [
    (re.compile(r"\\\\+(?=[a-zA-Z])"), r"\\"),  # a doubled backslash before a command (\\left): one
    (re.compile(r"(?<=\d),\\!\s*(?=\d{3})|(?<=\d)\{,\}(?=\d{3})|(?<=\d)\\[,;: ](?=\d{3}(?!\d))"), ""),  # 1,\!000 14{,}916
    (re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big|bigg|Bigg|displaystyle|textstyle)(?![a-zA-Z])"), ""),
    (re.compile(r"\\(?:,|;|:|!| )|\\q?quad|~"), " "),  # spacing (\\quad glued to a name too: \\quadx_2)
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ|\\degree"), ""),
    (re.compile(r"\\[dtc]frac"), r"\\frac"),
    (re.compile(r"\\%|％"), "%"),
    (re.compile(r"\\\$|\$|€|£|¥|₩|฿|R\$|₹"), ""),
    (re.compile(r"[−–—]"), "-"),
    (re.compile(r"\\(?:times|cdot|ast)(?![a-zA-Z])|×|·|⋅|∗"), "*"),
    (re.compile(r"\\div(?![a-zA-Z])|÷"), "/"),
    (re.compile(r"π"), r"\\pi "), (re.compile(r"√"), r"\\sqrt"), (re.compile(r"∞"), r"\\infty "),
    (re.compile(r"±"), r"\\pm "), (re.compile(r"∪"), r"\\cup "),
    (re.compile(r"\\\{|\\lbrace(?![a-zA-Z])"), "⦃"), (re.compile(r"\\\}|\\rbrace(?![a-zA-Z])"), "⦄"),  # set braces
    (re.compile(r"\\[()\[\]]"), " "),  # \( \) \[ \] math delimiters
    (re.compile(r"[\u00a0\u2009\u202f\u2007\u3000]"), " "),
    (re.compile(r"\\in(?![a-zA-Z])"), "="),
]


def normalize(text: str) -> str:
    """The answer with its LaTeX decoration removed (one box's contents if boxed)."""
    s = text.strip()
    if "\\boxed" in s or "\\fbox" in s:
        s = ", ".join(dict.fromkeys(b.strip() for b in all_boxed(s)))
    for _ in range(3):  # nested \text{\textbf{...}}
        s = _TEXT_CMD.sub(lambda m: f" {m.group(1)} ", s)
    for pat, rep in _REPLACE:
        s = pat.sub(rep, s)
    return s.strip().rstrip(".。").strip()


# ---------------------------------------------------------------------------------------------- lexer

_NUM = (r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)"           # 1,000 / 12,345.5
        r"|\d{1,3}(?: \d{3})+(?:[.,]\d+)?(?![\d.,]?\d)"    # 1 000 / 1 000,5
        r"|\d{1,3}(?:\.\d{3}){2,}(?:,\d+)?(?!\d)"          # 1.000.000 / 1.000.000,5
        r"|\d{1,3}(?:\.\d{3})+,\d+(?!\d)"                  # 1.000,5
        r"|\d+(?:[.,]\d+)?|\.\d+")                         # 12 / 1.5 / 1,5 / .5
FUNCS = {"sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec,
         "csc": sympy.csc, "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan, "sinh": sympy.sinh,
         "cosh": sympy.cosh, "tanh": sympy.tanh, "ln": sympy.log, "log": sympy.log, "exp": sympy.exp}
GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta", "iota",
         "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi", "chi", "psi",
         "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega"}
KNOWN_FUNCS = set(FUNCS) | {"pi", "sqrt"}
# a relation other than = or a negation makes the answer something else than its number: no reading at all
REFUSED = {"neq", "ne", "not", "le", "leq", "leqslant", "ge", "geq", "geqslant", "lt", "gt", "neg", "lnot", "approx",
           "sim", "simeq", "nless", "ngtr", "notin", "subset", "subseteq", "supset", "ll", "gg"}
NEGATIONS = {"not", "no", "non", "nicht", "kein", "keine", "pas", "ne", "não", "nao", "nunca", "ni", "нет", "не",
             "不", "不是", "没有", "非", "ない", "ではない", "아니", "않", "아님", "ไม่", "ไม่ใช่", "hapana", "si", "না", "కాదు"}
_LEX = re.compile(
    r"(?P<num>" + _NUM + r")"
    r"|\\(?P<cmd>[a-zA-Z]+)"
    r"|(?P<sym>[a-zA-Z](?:_\{?[a-zA-Z0-9]{1,3}\}?)?)(?![a-zA-Z])"
    r"|(?P<word>[^\W\d_]+)"
    r"|(?P<op>[-+*/^(){}\[\]%,;=⦃⦄|!])"
    r"|(?P<rel>[<>≤≥≠≈¬∉⊂⊆])"
    r"|(?P<space>\s+)")


def _lex(s: str, deadline: float, symbols: bool) -> list:
    """[(kind, text)]: num, sym, cmd (\\frac, \\pi, functions, \\pm, \\cup, \\infty), word, op.

    With `symbols` false (a numeric gold), letters are units or words. With it true, single letters are variables,
    and a run of 2-3 Latin letters glued to a number, a variable or a bracket (2xy, ab^2) is their product; other
    words (units, "and", "réponse", 個) are words either way.
    """
    toks, i, space = [], 0, True
    while i < len(s):
        if time.perf_counter() > deadline:
            raise _Reject("time limit")
        m = _LEX.match(s, i)
        if not m:
            raise _Reject(f"unexpected character {s[i]!r}")
        kind, text = m.lastgroup, m.group(m.lastgroup)
        i = m.end()
        if kind == "space":
            space = True
            continue
        if kind == "rel" or (kind == "cmd" and text in REFUSED) or (kind == "word" and text.lower() in NEGATIONS):
            raise _Reject(f"a relation or negation: {text!r}")
        if kind == "word" and text.lower() in KNOWN_FUNCS:
            kind, text = "cmd", text.lower()
        if kind == "cmd" and text in GREEK:
            kind = "sym"
        elif kind == "cmd" and text not in KNOWN_FUNCS and text not in ("frac", "infty", "pm", "mp", "cup"):
            kind = "word"  # \mathbb{R} and other macros: noise, never an operator
        glued = (not space and bool(toks) and (toks[-1][0] in ("num", "sym") or toks[-1] == ("op", ")"))) or \
            (i < len(s) and s[i] in "^(")
        if symbols and kind == "word" and text.isascii() and len(text) <= 3 and glued:
            toks += [("sym", c) for c in text]
        else:
            if not symbols and kind == "sym":
                kind = "word"
            if kind == "word":  # a unit's power goes with it: cm^2, m^{3}
                m2 = re.match(r"\s*\^\s*(?:\{\s*\d\s*\}|\d)", s[i:])
                i += m2.end() if m2 else 0
            toks.append((kind, text))
        space = False
    return toks


def _split(toks: list, is_sep) -> list:
    """Top-level pieces of a token list, cut where is_sep(token) (brackets protect what they hold)."""
    parts, cur, depth = [], [], 0
    for t in toks:
        if t[0] == "op" and t[1] in "([{⦃":
            depth += 1
        elif t[0] == "op" and t[1] in ")]}⦄":
            depth -= 1
        if depth == 0 and is_sep(t):
            parts.append(cur)
            cur = []
        else:
            cur.append(t)
    parts.append(cur)
    return parts


# ---------------------------------------------------------------------------------------------- grammar

def _to_sympy(f: Fraction):
    return sympy.Rational(f.numerator, f.denominator)


def _number_values(tok: str) -> list:
    """Exact values of a number literal; ambiguous separators ("1.000", "1,5") give every reading."""
    if sum(c.isdigit() for c in tok) > MAX_DIGITS:
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


def _check_size(v):
    if v.is_Rational and max(len(str(abs(v.p))), len(str(v.q))) > MAX_RESULT_DIGITS:
        raise _Reject("result too large")
    return v


def _div(a, b):
    if b == 0:
        raise _Reject("division by zero")
    return a / b


def _pow(base, exp):
    if base.is_number and exp.is_number:
        e, b = complex(exp.evalf(15)), complex(base.evalf(15))
        if abs(e.imag) > 0 or abs(e.real) > 10_000:
            raise _Reject("exponent too large")
        if abs(b) not in (0.0, 1.0) and abs(e.real) * abs(math.log10(abs(b))) > MAX_RESULT_DIGITS:
            raise _Reject("result too large")
        if b == 0 and e.real < 0:
            raise _Reject("division by zero")
    elif _height(exp) > 6 or _height(base) > 6:
        raise _Reject("power tower")
    return base ** exp


def _height(x) -> int:
    return 1 + max((_height(a) for a in x.args), default=0) if isinstance(x, sympy.Pow) else 0


def _combine(xs, ys, op):
    out = []
    for x in xs:
        for y in ys:
            out.append(_check_size(op(x, y)))
            if len(out) >= MAX_READINGS:  # ambiguous readings multiply; a handful is plenty
                return out
    return out


class _Parser:
    """Recursive descent over tokens; every method returns a list of candidate readings (sympy expressions)."""

    def __init__(self, toks, deadline, symbols: bool):
        self.t, self.i, self.deadline, self.depth, self.symbols = toks, 0, deadline, 0, symbols

    def peek(self):
        return self.t[self.i] if self.i < len(self.t) else (None, None)

    def take(self, kind=None, val=None):
        k, v = self.peek()
        if (kind and k != kind) or (val and v != val):
            raise _Reject(f"expected {val or kind}")
        self.i += 1
        return v

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Reject("nested too deep")
        if time.perf_counter() > self.deadline:
            raise _Reject("time limit")

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
            elif k in ("sym", "cmd") and v not in ("pm", "mp", "cup") or (k, v) == ("op", "("):
                vals = _combine(vals, self.unary(), lambda a, b: a * b)  # implicit: 2x, 2\pi, 3\sqrt{2}, 2(3)
            else:  # a number right after a value is never multiplied: "3 4" was cut into {3, 4} before
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
        k, v = self.peek()
        if k == "num":
            self.take()
            vals = [_to_sympy(f) for f in _number_values(v)]
            if self.peek() == ("op", "%"):  # a percentage reads as p or p/100
                self.take()
                vals = vals + [x / 100 for x in vals]
            return vals
        if k == "sym" and self.symbols:
            self.take()
            return [sympy.E if v == "e" else sympy.Symbol(v.replace("{", "").replace("}", ""))]
        for open_, close in (("(", ")"), ("{", "}"), ("[", "]")):
            if (k, v) == ("op", open_):
                return self.group(open_, close)
        if k == "cmd":
            self.take()
            if v == "pi":
                return [sympy.pi]
            if v == "infty":
                return [sympy.oo]
            if v == "frac":
                return _combine(self.frac_arg(), self.frac_arg(), _div)
            if v == "sqrt":
                index = self.group("[", "]") if self.peek() == ("op", "[") else [sympy.Integer(2)]
                return _combine(self.frac_arg(), index, lambda a, n: _pow(a, 1 / n))
            if v in FUNCS:
                return self.function(v)
        raise _Reject(f"unexpected {v!r}")

    def function(self, name):
        power = None
        if self.peek() == ("op", "^"):  # \sin^2 x = (\sin x)^2
            self.take()
            power = self.atom()
        if self.peek() == ("op", "("):
            arg = self.group("(", ")")
        else:  # \sin b \cos a: the argument is the tight product of numbers and symbols that follows
            arg = self.atom()
            while self.peek()[0] == "sym":
                arg = _combine(arg, self.atom(), lambda a, b: a * b)
        vals = [FUNCS[name](a) for a in arg]
        return _combine(vals, power, _pow) if power else vals

    def frac_arg(self):
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


def _expr(toks, deadline, symbols) -> list:
    if not toks:
        raise _Reject("empty")
    p = _Parser(list(toks), deadline, symbols)
    vals = p.expr()
    if p.i != len(p.t):
        raise _Reject("trailing text")
    return vals


# ---------------------------------------------------------------------------------------------- structures
# A reading of an answer is ("set", [reading...]), ("tuple", [...]), ("interval", lo, hi, lo_closed, hi_closed,
# tuple_too), ("union", [interval...]) or ("expr", sympy value); an answer has several readings when it is ambiguous.

def _element(toks, deadline, symbols) -> list:
    """Readings of one element: `x = v` (the variable's name kept), a relation's right-hand side, a set in braces, a
    tuple or an interval, or an expr."""
    sides = _split(toks, lambda t: t == ("op", "="))
    if len(sides) > 1 and len(sides[-2]) == 1 and sides[-2][0][0] == "sym":
        return [("assign", sides[-2][0][1], r) for r in _element(sides[-1], deadline, symbols)]
    toks = sides[-1]
    if _enclosed(toks, "⦃", "⦄") or _enclosed(toks, "{", "}") and any(t == ("op", ",") for t in toks):
        items = [_element(p, deadline, symbols) for p in _split(toks[1:-1], lambda t: t[1] in (",", ";"))]
        return [("set", c) for c in _choices(items)]  # \\{1, 2\\}, or {1, 2} (a LaTeX group that lists values)
    if len(toks) >= 2 and toks[0][0] == "op" and toks[0][1] in "([" and toks[-1][0] == "op" and toks[-1][1] in ")]":
        inner = _split(toks[1:-1], lambda t: t[0] == "op" and t[1] in ",;")
        if len(inner) >= 2 and all(inner):
            lo_closed, hi_closed = toks[0][1] == "[", toks[-1][1] == "]"
            out = []
            for c in _choices([_element(p, deadline, symbols) for p in inner]):
                if len(c) == 2 and c[0][0] == c[1][0] == "expr":  # (a, b) [a, b) ...: an interval
                    out.append(("interval", c[0][1], c[1][1], lo_closed, hi_closed))
                if not lo_closed and not hi_closed or len(c) != 2 and lo_closed and hi_closed:
                    out.append(("tuple", c))  # (a, b) is also a pair; [a, b, c] a list
            return out
    return [("expr", v) for v in _expr(toks, deadline, symbols)]


def _enclosed(toks, open_, close) -> bool:
    """Is the whole token list one bracket pair `open_ ... close` (not `{a} + {b}`)?"""
    if len(toks) < 2 or toks[0] != ("op", open_) or toks[-1] != ("op", close):
        return False
    depth = 0
    for k, t in enumerate(toks):
        depth += t == ("op", open_)
        depth -= t == ("op", close)
        if depth == 0 and k < len(toks) - 1:
            return False
    return True


def _choices(items: list) -> list:
    """The cartesian product of per-item readings, at most MAX_READINGS combinations."""
    out = [[]]
    for readings in items:
        out = [c + [r] for c in out for r in readings][:MAX_READINGS]
    return out


def _expand_pm(toks: list) -> list:
    """Token lists with every \\pm (\\mp) read as + and as - (at most 2 of them)."""
    out = [toks]
    for _ in range(2):
        i = next((k for k, t in enumerate(out[0]) if t[0] == "cmd" and t[1] in ("pm", "mp")), None)
        if i is None:
            break
        out = [t[:i] + [("op", sign)] + t[i + 1:] for t in out for sign in "+-"]
    return out


def _is_sep(t) -> bool:
    return t[0] == "word" or (t[0] == "op" and t[1] in ",;")


def _answer(toks, deadline, symbols) -> list:
    """Readings of one token list: a union of intervals, or elements cut at separators (several make a set)."""
    unions = _split(toks, lambda t: t == ("cmd", "cup"))
    if len(unions) > 1:
        parts = [[r for r in _element(u, deadline, symbols) if r[0] == "interval"] for u in unions]
        return [("union", c) for c in _choices(parts) if len(c) == len(unions)]
    sep = []  # two numbers side by side ("3 4", or "10 ... 30" once the words are gone) are two answers
    for t in toks:
        if sep and t[0] == "num" and sep[-1][0] == "num":
            sep.append(("op", ","))
        sep.append(t)
    parts = [p for p in _split(sep, _is_sep) if p]
    if not parts:
        return []
    items = [_element(p, deadline, symbols) for p in parts]
    return [c[0] if len(c) == 1 else ("set", c) for c in _choices(items)]


_THOUSANDS = r"(?=\d{3}(?!\d))"


def _comma_variants(text: str, strict: bool) -> list:
    """The ways to read the commas between digits: inside brackets always separators ((1,100) is a pair); outside
    them a thousands group (1,000) stays a number, and another one (2,5) is a separator, or, for a prediction, also a
    decimal comma (2.5). The gold is read strictly: no decimal commas."""
    out, depth = [], 0
    for i, c in enumerate(text):
        depth += c in "([{⦃"
        depth -= c in ")]}⦄"
        glued = c == "," and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()
        out.append(", " if glued and depth > 0 else c)
    inside = "".join(out)
    if not re.search(r"\d,\d", inside):
        return [inside]
    separated = re.sub(r"(?<=\d),(?=\d)(?!\d{3}(?!\d))", ", ", inside)
    return [separated] if strict else [inside, separated]


def readings(text: str, deadline: float, symbols: bool, strict: bool = False) -> list:
    """Every reading of a normalized answer (see the module docstring). `symbols`: letters are variables;
    `strict`: the gold's reading (no decimal commas)."""
    variants = _comma_variants(text, strict)
    out = []
    for s in variants:
        toks = _lex(s, deadline, symbols)
        signs = _expand_pm(toks)
        if len(signs) == 1:
            try:
                out += _answer(toks, deadline, symbols)
            except _Reject as e:
                if str(e) == "time limit" or s is variants[-1] and not out:
                    raise
        else:  # a ± b: the set of both values
            per_sign = [_answer(t, deadline, symbols) for t in signs]
            out += [("set", c) for c in _choices(per_sign)]
    return out[:MAX_READINGS]


# ---------------------------------------------------------------------------------------------- comparison

_PROBES = [0.7132, -1.4417, 2.3185, -0.5589, 1.8864]  # values of the free symbols at the 5 probe points
_COMPLEX_FUNCS = {sympy.sin: cmath.sin, sympy.cos: cmath.cos, sympy.tan: cmath.tan, sympy.asin: cmath.asin,
                  sympy.acos: cmath.acos, sympy.atan: cmath.atan, sympy.sinh: cmath.sinh, sympy.cosh: cmath.cosh,
                  sympy.tanh: cmath.tanh, sympy.exp: cmath.exp, sympy.log: cmath.log,
                  sympy.cot: lambda z: 1 / cmath.tan(z), sympy.sec: lambda z: 1 / cmath.cos(z),
                  sympy.csc: lambda z: 1 / cmath.sin(z)}


def _float(x, env):
    """x (a sympy expression built here) as a complex float at symbol values `env`; bounded (no big numbers)."""
    if x.is_Symbol:
        return env[x]
    if x.is_Number:
        try:
            return complex(float(x))
        except (OverflowError, TypeError, ValueError):
            return complex("nan")
    if x is sympy.I:
        return 1j
    if x is sympy.pi:
        return complex(math.pi)
    if x is sympy.E:
        return complex(math.e)
    if isinstance(x, sympy.Add):
        return sum(_float(a, env) for a in x.args)
    if isinstance(x, sympy.Mul):
        out = complex(1)
        for a in x.args:
            out *= _float(a, env)
        return out
    if isinstance(x, sympy.Pow):
        b, e = _float(x.args[0], env), _float(x.args[1], env)
        try:
            return b ** e
        except (OverflowError, ZeroDivisionError):
            return complex("nan")
    f = _COMPLEX_FUNCS.get(type(x))
    if f is not None and len(x.args) == 1:
        try:
            return f(_float(x.args[0], env))
        except (OverflowError, ValueError, ZeroDivisionError):
            return complex("nan")
    raise _Reject(f"cannot evaluate {type(x).__name__}")


def _close(x: complex, y: complex, tol: float) -> bool:
    return abs(x - y) <= tol * max(abs(x), abs(y)) + 1e-12


def _finite(z: complex) -> bool:
    return math.isfinite(z.real) and math.isfinite(z.imag)


def _scalar_equal(a, b, deadline) -> bool:
    if a == b:
        return True
    if a.has(sympy.oo, -sympy.oo, sympy.zoo) or b.has(sympy.oo, -sympy.oo, sympy.zoo):
        return False
    free = sorted(a.free_symbols | b.free_symbols, key=str)
    if not free:
        if a.is_Rational and b.is_Rational and (a.is_Integer or b.is_Integer):
            return False  # exact values, one of them an integer: no tolerance (1000000.5 is not 1000000)
        x, y = _float(a, {}), _float(b, {})
        return _finite(x) and _finite(y) and _close(x, y, REL_TOL)
    agree = 0
    for k in range(len(_PROBES)):  # a polynomial identity that holds at random points holds (Schwartz-Zippel)
        if time.perf_counter() > deadline:
            raise _Reject("time limit")
        env = {s: complex(_PROBES[(k + j) % len(_PROBES)] * (1 + 0.37 * j)) for j, s in enumerate(free)}
        x, y = _float(a, env), _float(b, env)
        if not (_finite(x) and _finite(y)):
            continue
        if not _close(x, y, 1e-7):
            return False
        agree += 1
    if agree >= 3:
        return True
    return _simplify_is_zero(a - b, deadline)


def _simplify_is_zero(d, deadline) -> bool:
    """sympy.simplify(d) == 0 under a real-time timer; only on the main thread (signals), else undecided."""
    left = deadline - time.perf_counter()
    if left <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return False

    def stop(*_):
        raise _Reject("time limit")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, left)
    try:
        return sympy.simplify(d) == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _equal(p, g, deadline) -> bool:
    """Is reading p equal to reading g? Sets match one to one (duplicates collapse), a set of one is its element,
    tuples match in order, a bare list matches a tuple in order; `x = v` equals `x = v` or the bare value v."""
    if time.perf_counter() > deadline:
        raise _Reject("time limit")
    if p[0] == "set" and g[0] == "set":
        a, b = _dedupe(p[1], deadline), _dedupe(g[1], deadline)
        return len(a) == len(b) and _matching(a, b, deadline)
    if p[0] == "set":
        a = _dedupe(p[1], deadline)
        return len(a) == 1 and _equal(a[0], g, deadline)
    if g[0] == "set":
        b = _dedupe(g[1], deadline)
        return len(b) == 1 and _equal(p, b[0], deadline)
    if p[0] == "assign" and g[0] == "assign":
        return p[1] == g[1] and _equal(p[2], g[2], deadline)
    if p[0] == "assign" or g[0] == "assign":  # "x = 5" for the gold 5 (and the other way round)
        return _equal(p[2] if p[0] == "assign" else p, g[2] if g[0] == "assign" else g, deadline)
    if p[0] == "expr" and g[0] == "expr":
        return _scalar_equal(p[1], g[1], deadline)
    if {p[0], g[0]} <= {"tuple", "set"} and "tuple" in (p[0], g[0]):  # "3, -1" for (3, -1): in order
        return len(p[1]) == len(g[1]) and all(_equal(x, y, deadline) for x, y in zip(p[1], g[1]))
    if p[0] == "interval" and g[0] == "interval":
        return p[3:5] == g[3:5] and _scalar_equal(p[1], g[1], deadline) and _scalar_equal(p[2], g[2], deadline)
    if p[0] == "union" and g[0] == "union":
        return len(p[1]) == len(g[1]) and _matching(p[1], g[1], deadline)
    if p[0] == "union" and len(p[1]) == 1:
        return _equal(p[1][0], g, deadline)
    if g[0] == "union" and len(g[1]) == 1:
        return _equal(p, g[1][0], deadline)
    return False


def _dedupe(items, deadline):
    if len(items) > MAX_SET:
        raise _Reject("set too large")
    out = []
    for x in items:
        if not any(_equal(x, y, deadline) for y in out):
            out.append(x)
    return out


def _matching(a, b, deadline) -> bool:
    unmatched = list(b)  # one-to-one; greedy is enough for values that are equal or not
    for x in a:
        hit = next((k for k, y in enumerate(unmatched) if _equal(x, y, deadline)), None)
        if hit is None:
            return False
        unmatched.pop(hit)
    return True


_PLAIN = re.compile(r"-?\d{1,30}(?:\.\d{1,30})?")
_AMBIGUOUS = re.compile(r"-?\d{1,3}\.\d{3}")  # "1.000": one thousand in de/es/pt/fr, one elsewhere


def _text_key(s: str) -> str:
    return " ".join(re.sub(r"[{}\\]", " ", s).lower().split()).strip(" .,;:()")


def _readings_or_none(text, deadline, symbols, strict=False) -> list:
    try:
        return readings(text, deadline, symbols, strict)
    except _Reject as e:
        if str(e) == "time limit":
            raise
        return []


def check(prediction: str, gold: str, timeout: float = 1.0) -> tuple:
    """(equal, timed_out): is the extracted answer `prediction` equal to `gold`, and did the time limit cut the
    comparison short. Never evaluates text as code and never raises."""
    try:
        if prediction is None or gold is None:
            return False, False
        p, g = prediction.strip(), gold.strip()
        if _PLAIN.fullmatch(p) and _PLAIN.fullmatch(g) and not _AMBIGUOUS.fullmatch(p):  # common case, no sympy
            return Fraction(p) == Fraction(g), False
        if not p or len(p) > MAX_ANSWER_CHARS or len(g) > MAX_ANSWER_CHARS:
            return False, False
        deadline = time.perf_counter() + timeout
        p, g = normalize(p), normalize(g)
        if not p or not g:
            return False, False
        try:
            symbols = any(k == "sym" for k, _ in _lex(g, deadline, True))  # the gold uses letters as math
        except _Reject as e:
            if str(e) == "time limit":
                raise
            symbols = True
        gold_readings = _readings_or_none(g, deadline, True, strict=True)
        pred_readings = _readings_or_none(p, deadline, symbols)
        if not gold_readings or not pred_readings:  # text answers ("Evelyn", a matrix): the same text
            return bool(_text_key(p)) and _text_key(p) == _text_key(g), False
        for a in pred_readings:
            for b in gold_readings:
                if _equal(a, b, deadline):
                    late = time.perf_counter() > deadline
                    return not late, late
        return False, False
    except _Reject as e:
        return False, str(e) == "time limit"
    except (MemoryError, RecursionError):
        return False, True
    except Exception:  # untrusted input: any other failure is "not equal", never a crash of the trainer
        return False, False


def verify(prediction: str, gold: str, timeout: float = 1.0) -> bool:
    """True when the extracted answer `prediction` equals `gold` (see the module docstring). Never raises."""
    return check(prediction, gold, timeout)[0]


# ---------------------------------------------------------------------------------------------- verifiers
# "builtin": this module. "math-verify": the Math-Verify package (an optional dependency), called as the paper's
# code calls it, for runs that must match the paper exactly.

VERIFIERS = ("builtin", "math-verify")


def require_verifier(name: str) -> None:
    """A clear error, before any work, for an unknown verifier or a missing math-verify package."""
    if name not in VERIFIERS:
        raise ValueError(f"unknown verifier {name!r} (choose from {', '.join(VERIFIERS)})")
    if name == "math-verify":
        try:
            _math_verify_package()
        except ImportError:
            raise ValueError("--verifier math-verify needs the math-verify package, which is not installed "
                             "(pip install math-verify)") from None


def _math_verify_package():
    import math_verify  # optional (pip install math-verify): imported only when --verifier math-verify is chosen
    return math_verify


def _math_verify(gold: str, text: str) -> bool:
    math_verify = _math_verify_package()
    try:
        return bool(math_verify.verify(math_verify.parse(gold), math_verify.parse(text)))
    except Exception:  # Math-Verify's own time-outs and parse failures count as "not equal", as in the paper
        return False


def verify_with(prediction: str, gold: str, verifier: str = "builtin") -> bool:
    """An extracted answer (a box's contents) against the gold answer, with the chosen verifier (the paper's
    evaluation: parse both with Math-Verify, verify(gold, prediction))."""
    if prediction is None:
        return False
    return verify(prediction, gold) if verifier == "builtin" else _math_verify(gold, prediction)


def reward_check(response: str, gold: str, verifier: str = "builtin", sequence: str | None = None) -> tuple:
    """(r_i, timed_out) for a whole response: the builtin checker on extract_answer(response), or Math-Verify as the
    paper's reward calls it: verify(parse(sequence), parse(gold)), the prediction first, on `sequence` = the decoded
    prompt and response together (the response alone when not given); Math-Verify finds the final answer itself."""
    if verifier == "builtin":
        ok, timed_out = check(extract_answer(response), gold)
        return (1.0 if ok else 0.0), timed_out
    math_verify = _math_verify_package()
    try:
        ok = math_verify.verify(math_verify.parse(sequence if sequence is not None else response),
                                math_verify.parse(gold))
    except Exception:  # its own time-outs and parse failures score 0, as in the paper's reward
        ok = False
    return (1.0 if ok else 0.0), False


def accuracy(response: str, gold: str, verifier: str = "builtin") -> float:
    """r_i: 1.0 when the response's final boxed answer verifies against `gold`, else 0.0."""
    return reward_check(response, gold, verifier)[0]
