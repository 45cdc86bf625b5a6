"""The built-in answer checker against Math-Verify's own regression cases that have a boxed prediction.

    python bench/checker_agreement.py MATH_VERIFY_TESTS_DIR      # the tests/ folder of huggingface/Math-Verify

Reads every `@pytest.mark.parametrize("gold,pred,expected", [...])` table of the test files (literal tables only),
keeps the cases whose prediction contains `\\boxed`, and scores the prediction as the reward does
(adamame.answer.extract_answer, then check against the gold). Prints the agreement with the verdict the tests
expect, every disagreement, and whether any case the tests reject is accepted. Math-Verify itself is not needed.
"""

import ast
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cases(folder):
    for path in sorted(glob.glob(os.path.join(folder, "test_*.py"))):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
            for dec in fn.decorator_list:
                if not (isinstance(dec, ast.Call) and ast.unparse(dec.func).endswith("parametrize")):
                    continue
                try:
                    names, rows = ast.literal_eval(dec.args[0]), ast.literal_eval(dec.args[1])
                except (ValueError, SyntaxError):
                    continue  # a table built by code
                names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
                if {"gold", "pred", "expected"} <= set(names):
                    g, p, e = (names.index(k) for k in ("gold", "pred", "expected"))
                    for r in rows:
                        yield os.path.basename(path), fn.name, r[g], r[p], r[e]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.path.isdir(argv[0]):
        raise SystemExit(__doc__)
    from adamame.answer import check, extract_answer

    boxed = [c for c in cases(argv[0]) if "\\boxed" in c[3]]
    agree, accepted_rejects = 0, []
    for file, test, gold, pred, expected in boxed:
        got = check(extract_answer(pred), gold)[0]
        agree += int(got) == int(expected)
        if int(got) != int(expected):
            print(f"{file}::{test}: expected {int(expected)}, got {int(got)}: gold {gold[:80]!r}, "
                  f"read {str(extract_answer(pred))[:80]!r}")
            if got:
                accepted_rejects.append((file, test, gold))
    print(f"agreement on {len(boxed)} cases with a boxed prediction: {agree} ({agree / len(boxed):.3f}); "
          f"rejected cases accepted: {len(accepted_rejects)}")


if __name__ == "__main__":
    main()
