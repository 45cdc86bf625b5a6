"""How easily a Markdown file's prose reads: sentences, words, words per sentence, semicolons per 100 words.

    python bench/prose.py README.md [MORE.md ...]

Counted: prose lines only. Left out: fenced code blocks (``` ... ```, so also the rendered tables between
`<!-- demo-results -->` style markers; prose in those blocks outside the fences counts), indented code (4 spaces),
tables (lines starting with |), headings (#) and HTML comments (<!-- ... -->). A word is a whitespace-separated
token with a letter or digit in it. A sentence ends at '.', '!' or '?' followed by whitespace or the end (closing
brackets or quotes may come between), at a semicolon, or at a paragraph's end (a blank or left-out line). Not ends:
"e.g.", "i.e.", "vs.", "cf.", decimals, file names (train_grpo.py), punctuation inside `inline code`.
"""

import re
import sys

NOT_ENDS = re.compile(r"\b(e\.g|i\.e|vs|cf)\.", re.I)
END = r"[.!?][)\]\"'’”]*(?=\s|$)|\n\s*\n"  # and ';'


def prose(text: str) -> str:
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    keep, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        prose_line = not (fenced or line.lstrip().startswith("```") or line.startswith(("|", "#", "    ", "\t")))
        keep.append(line if prose_line else "")  # a left-out line ends a paragraph
    text = re.sub(r"`[^`]*`", lambda m: re.sub(r"[.!?;]", "_", m.group()), "\n".join(keep))  # code: no ends
    return NOT_ENDS.sub(lambda m: m.group().replace(".", "_"), text)


def sentences(body: str, end: str = END + "|;") -> int:
    return sum(1 for p in re.split(end, body) if re.search(r"\w", p))


if __name__ == "__main__":
    for path in sys.argv[1:] or ["README.md"]:
        body = prose(open(path, encoding="utf-8").read())
        s, w = sentences(body), sum(1 for t in body.split() if re.search(r"\w", t))
        print(f"{path}: {s} sentences, {w} words, {w / max(s, 1):.1f} words/sentence, "
              f"{100 * body.count(';') / max(w, 1):.2f} semicolons per 100 words "
              f"({w / max(sentences(body, END), 1):.1f} words/sentence if ';' did not end one)")
