"""Hand-made candidate records for checking evaluate.py --select-rl against the released RL data stage.

    python tests/rl_selection.py write DIR    the records as DIR/<lang>.jsonl (the released res/<dataset>/<model>
                                              layout), to run the released 3_eval/filter_for_rl.py's filter_file on

tests/fixtures/rl_selection/released_kept.jsonl is what the released `filter_file`, unmodified (with Math-Verify
0.8 and lingua installed, as its metrics.py imports them), wrote for these records, the files of fr, ja and th
concatenated in that order. Each record has 8 candidates; their correct counts cover 0, 1, 7 and 8 out of 8 and the
cases the released check distinguishes: the answer in the trace's box or the response's, no `</think>`, nested
braces, a LaTeX fraction, an unclosed box.
"""

import json
import os
import sys

WRONG = "<think>\nJe compte: 3 + 4 = 8.\n</think>\n\\boxed{8}"
GOOD = "<think>\nJe compte: 3 + 4 = 7.\n</think>\n\\boxed{7}"
IN_TRACE = "Je compte et j'obtiens \\boxed{7}.\n</think>\nLa réponse est \\boxed{9}."  # trace right, response wrong
NO_THINK = "3 + 4 = 7, donc \\boxed{7}"  # no </think>: all response
UNCLOSED = "<think>\n3 + 4\n</think>\n\\boxed{7"  # the released extract_boxed drops the last character: ""


def records():
    """{lang: [record]}: each record {id, lang, question, answer, candidates} with 8 candidates."""
    q = "Combien font 3 et 4 ?"
    fr = [
        {"id": "fr-0", "answer": "7", "candidates": [WRONG] * 8},  # 0 of 8
        {"id": "fr-1", "answer": "7", "candidates": [GOOD] + [WRONG] * 7},  # 1
        {"id": "fr-7", "answer": "7", "candidates": [GOOD] * 7 + [WRONG]},  # 7
        {"id": "fr-8", "answer": "7", "candidates": [GOOD] * 8},  # 8
        {"id": "fr-trace", "answer": "7", "candidates": [IN_TRACE] * 3 + [WRONG] * 5},  # 3, by the trace's box
        {"id": "fr-nothink", "answer": "7", "candidates": [NO_THINK] * 2 + [UNCLOSED] * 6},  # 2
        {"id": "fr-unclosed", "answer": "7", "candidates": [UNCLOSED] * 8},  # 0
    ]
    ja = [
        {"id": "ja-frac", "answer": "0.75", "candidates": ["<think>\n3/4\n</think>\n\\boxed{\\frac{3}{4}}"] * 4
         + ["<think>\n3/4\n</think>\n\\boxed{\\frac{4}{3}}"] * 4},  # 4
        {"id": "ja-nested", "answer": "\\frac{1}{2}", "candidates": ["<think>\nx\n</think>\n\\boxed{\\frac{1}{2}}"] * 8},
        {"id": "ja-8-nothink", "answer": "12", "candidates": ["\\boxed{12}"] * 8},  # 8
        {"id": "ja-1-last", "answer": "12", "candidates": ["\\boxed{11}"] * 7 + ["答えは \\boxed{12} です"]},  # 1
    ]
    th = [
        {"id": "th-7", "answer": "42", "candidates": ["<think>\n6 * 7 = 42\n</think>\n\\boxed{42}"] * 7
         + ["<think>\n6 * 7 = 48\n</think>\n\\boxed{48}"]},
        {"id": "th-0-empty", "answer": "42", "candidates": [""] * 8},
        {"id": "th-5", "answer": "42", "candidates": ["\\boxed{42}"] * 5 + ["<think>\n\\boxed{41}\n</think>\n"] * 3},
    ]
    out = {}
    for lang, recs in (("fr", fr), ("ja", ja), ("th", th)):
        out[lang] = [{"id": r["id"], "lang": lang, "question": q, "answer": r["answer"],
                      "candidates": r["candidates"]} for r in recs]
    return out


if __name__ == "__main__" and sys.argv[1:2] == ["write"]:
    os.makedirs(sys.argv[2], exist_ok=True)
    for lang, recs in records().items():
        with open(os.path.join(sys.argv[2], f"{lang}.jsonl"), "w", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
