"""Reading the project's JSON Lines files: SFT examples, RL and evaluation questions, and their batch orders.

Why: every stage starts from user-supplied JSONL, and a bad line must stop the run with the file, the line
and the field named, never with a stack trace from deep inside torch or a silently wrong run. The prompt is
the recipe's: localized instruction (adamame/language.py's INSTRUCTIONS) + "\\n\\n" + question, rendered with
the model's chat template (adamame/chat.py). The SFT target is `trace\\n</think>\\nanswer`. It carries the loss
(chat.tokenize_sft), the prompt none.

Formats:
    SFT   {"lang", "prompt" | "question", "response" | "trace" + "answer"}
    RL    {"id", "lang", "prompt", "answer"}          (the paper's prompts: the instruction is already in `prompt`)
    eval  {"id", "lang", "question", "answer"}        (MGSM, MSVAMP: one file per language)

The paper's data: its RL prompts are DAPO-Math-17k problems translated into fr ja ko pt th, those its SFT model solved
1 to 7 times of 8 (evaluate.py --select-rl makes such a file from your own pool and model), released as
`2_rl/data/train/train_dapomath17k_5k.parquet` in https://github.com/dayeonki/adamame (verl's parquet format: write
each row as one RL object, `prompt` starting with the instruction); its validation file holds only training prompts,
so keep your own prompts apart for --val-data to get held-out numbers. MGSM
(https://huggingface.co/datasets/juletxara/mgsm) has 250 problems in bn de en es fr ja ru sw te th zh (the paper's
MGSM-Rev2 adds ko). MSVAMP: the paper's evaluation script identifies its traces among ar en es fr ja ko pt th vi zh,
the languages of the paper's MSVAMP, whose source the paper and the release do not give; the public release
(https://huggingface.co/datasets/Mathoctopus/MSVAMP) has bn de en es fr ja ru sw th zh, so with --benchmark msvamp only
its en es fr ja th zh files can be scored (a bn, de, ru or sw file is an error naming the set: leave out --benchmark to
identify among all 15 languages). All 15 languages have an instruction; evaluate.py's --benchmark reads the fidelity
flags over the paper's set for it, and a trace's language over that set and the reward's 14 (adamame/language.py).

Batching: `balanced_batches` (an RL step's prompts, balanced over languages) and `length_grouped_batches` (SFT).

Imports: adamame: language.
"""

import json
import os
import random
from dataclasses import dataclass

from .language import INSTRUCTIONS, KNOWN_LANGUAGES


class DataError(ValueError):
    """A problem in an input file or a flag; the message names the file, the line and the field (or the flag)."""


def localized_prompt(lang: str, question: str) -> str:
    return INSTRUCTIONS[lang] + "\n\n" + question


def read_jsonl(path: str) -> list:
    """[(line_number, dict)] for every non-empty line; a clear DataError naming the file and line for anything else
    (not UTF-8, malformed or too deeply nested JSON, not an object)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    rows = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:  # without its newline (json would count an error past it as column 1); a file may start with a BOM
                line = raw.decode("utf-8-sig" if i == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{i}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") \
                    from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: malformed JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise DataError(f"{path}:{i}: JSON nested too deeply") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
            rows.append((i, obj))
    if not rows:
        raise DataError(f"{path}: no examples (the file is empty)")
    return rows


def write_jsonl(rows: list, path: str) -> None:
    """One JSON object a line, written atomically (a temporary file, then renamed)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _field(path, i, obj, *names, required=True):
    for name in names:
        if name in obj:
            v = obj[name]
            if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                raise DataError(f"{path}:{i}: field '{name}' must be a string")
            return str(v)
    if required:
        raise DataError(f"{path}:{i}: missing field '{' or '.join(names)}'")
    return None


def _lang(path, i, obj, allowed=KNOWN_LANGUAGES):
    lang = _field(path, i, obj, "lang")
    if lang not in allowed:
        raise DataError(f"{path}:{i}: field 'lang': unknown language code {lang!r} (known: {', '.join(allowed)})")
    return lang


@dataclass
class SFTExample:
    lang: str
    prompt: str  # the user message (instruction + question)
    target: str  # what the model learns to write after the rendered prompt


def read_sft(path: str) -> list:
    out = []
    for i, obj in read_jsonl(path):
        lang = _lang(path, i, obj)
        prompt = _field(path, i, obj, "prompt", required=False)
        if prompt is None:
            prompt = localized_prompt(lang, _field(path, i, obj, "prompt", "question"))
        response = _field(path, i, obj, "response", required=False)
        if response is None:
            trace = _field(path, i, obj, "response", "trace")
            answer = _field(path, i, obj, "answer")
            response = f"{trace}\n</think>\n{answer}"
        out.append(SFTExample(lang, prompt, response))
    return out


@dataclass
class Question:
    id: str
    lang: str
    prompt: str  # the user message (instruction + question)
    answer: str


def read_questions(path: str) -> list:
    """RL prompts ({id, lang, prompt, answer}) or evaluation questions ({id, lang, question, answer})."""
    out = []
    for i, obj in read_jsonl(path):
        lang = _lang(path, i, obj)
        qid = _field(path, i, obj, "id", required=False) or f"{os.path.basename(path)}:{i}"
        prompt = _field(path, i, obj, "prompt", required=False)
        if prompt is None:
            prompt = localized_prompt(lang, _field(path, i, obj, "prompt", "question"))
        out.append(Question(qid, lang, prompt, _field(path, i, obj, "answer")))
    return out


def draw_per_language(items: list, n: int, m: int = 0, seed: int = 42) -> tuple:
    """(train, validation): per language (in order of first appearance) n items for training and the next m for
    validation from a seeded shuffle, no question text twice in any language (disjoint): the released
    3_eval/sample_for_rl.py's rule (its --n 2000 --m 0 --seed 42; its own draw also depends on its fixed language
    order and files); n = 0 takes every item as it is, in order (no draw). items: Question objects (their text
    without the localized instruction) or dicts with "lang" and "question"."""
    if n == 0:
        return list(items), []
    rng, seen, train, val = random.Random(seed), set(), [], []
    lang_of = (lambda x: x["lang"]) if items and isinstance(items[0], dict) else (lambda x: x.lang)
    for lang in dict.fromkeys(map(lang_of, items)):
        rows = [x for x in items if lang_of(x) == lang]
        rng.shuffle(rows)
        tr, va = [], []
        for x in rows:
            text = x.get("question", x.get("prompt", str(id(x)))) if isinstance(x, dict) else x.prompt
            text = text.removeprefix(INSTRUCTIONS.get(lang, "") + "\n\n")  # the question, in any language
            if text in seen:
                continue
            seen.add(text)
            if len(tr) < n:
                tr.append(x)
            elif len(va) < m:
                va.append(x)
            else:
                break
        train += tr
        val += va
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


def length_grouped_batches(lengths, batch_size, seed, epoch, group=50):
    """Global batches of indices for one epoch: shuffled, then sorted by length inside windows of
    `group` batches so each batch pads little; the batch order is shuffled again. Deterministic in
    (seed, epoch); the last incomplete batch is dropped so every rank count sees whole batches."""
    rng = random.Random(seed * 100_003 + epoch)  # one stream per (seed, epoch): distinct while epochs < 100,003
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * group
    grouped = []
    for w in range(0, len(order), window):
        grouped += sorted(order[w:w + window], key=lambda j: lengths[j])
    batches = [grouped[b:b + batch_size] for b in range(0, len(grouped) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return batches


def balanced_batches(questions, batch_prompts, seed, epoch):
    """Batches of question indices for one epoch, each drawing the languages in turn (so each is balanced when the
    languages are); deterministic in (seed, epoch); the last incomplete batch is dropped."""
    rng = random.Random(seed * 100_003 + epoch)  # as length_grouped_batches: one stream per (seed, epoch)
    by_lang = {}
    for i, q in enumerate(questions):
        by_lang.setdefault(q.lang, []).append(i)
    queues = [rng.sample(v, len(v)) for _, v in sorted(by_lang.items())]
    order = [q[k] for k in range(max(map(len, queues))) for q in queues if k < len(q)]
    return [order[b:b + batch_prompts] for b in range(0, len(order) - batch_prompts + 1, batch_prompts)]
