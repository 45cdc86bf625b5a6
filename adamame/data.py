"""Reading the project's JSON Lines files and turning examples into token ids.

Why: every stage starts from user-supplied JSONL, and a bad line must stop the run with the file, the line
and the field named, never with a stack trace from deep inside torch or a silently wrong run. The prompt is
the recipe's: localized instruction (adamame/language.py's INSTRUCTIONS) + "\\n\\n" + question, rendered with
the model's chat template; the SFT target is `trace\\n</think>\\nanswer` (with `<think>` on the prompt side when
the template puts it there) and carries the loss; the prompt carries none. The entry points' shared command-line
pieces live here too: `HelpFormatter` (every default in --help), `check_flags` and `exit_with` (one error line).

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

Batching: `balanced_batches` (an RL step's prompts, balanced over languages) and `micro_batches` (length-sorted
forwards of at most a token budget, as many on every rank).

Imports: adamame: chat, dist (micro_batches' one collective), language.
"""

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass

from . import dist
from .chat import encode_prompt, render_prompt
from .language import INSTRUCTIONS, KNOWN_LANGUAGES


class DataError(ValueError):
    """A problem in an input file or a flag; the message names the file, the line and the field (or the flag)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The entry points' --help: every flag's real default after its text; a flag without one explains itself."""
    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "%(default)" in text:
            return text
        return text + " (default: %(default)s)"


def exit_with(message: str, code: int, every_rank: bool = False) -> None:
    """End an entry point with one line on stderr and exit status `code`. Under torchrun the ranks of a node read the
    same inputs and fail alike, so the node's first rank alone prints it (once per launcher, whose output is that
    node's; with one node, rank 0) and the others exit quietly with the same status. every_rank: an error that is
    each rank's own (a lost peer), printed by every rank that has it."""
    if every_rank or os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")) == "0":
        print(message, file=sys.stderr)
    sys.exit(code)


def interrupted_training(out: str) -> None:
    """Ctrl-C in a trainer: one line (once per node) naming the checkpoint a --resume continues from; exit 130."""
    ck = os.path.join(out, "checkpoint.pt")
    exit_with(f"interrupted: the last checkpoint is {ck}; the same command with --resume continues from it exactly"
              if os.path.exists(ck) else f"interrupted before the first checkpoint of {out} (--save-every)", 130)


def check_flags(args, positive=(), non_negative=(), fractions=()) -> None:
    """The flag values argparse's types let through but the run cannot use: a DataError naming the flag. positive:
    > 0; non_negative: >= 0; fractions: {name: (low, high)} with low <= value <= high."""
    def bad(name, want):
        raise DataError(f"--{name.replace('_', '-')} must be {want}, got {getattr(args, name)}")

    for name in positive:
        if getattr(args, name) is not None and not getattr(args, name) > 0:  # `not >` also rejects NaN
            bad(name, "positive")
    for name in non_negative:
        if getattr(args, name) is not None and not getattr(args, name) >= 0:
            bad(name, "0 or more")
    for name, (low, high) in dict(fractions).items():
        v = getattr(args, name)
        if v is not None and not low <= v <= high:
            bad(name, f"in [{low}, {high}]")


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


def tokenize_sft(tokenizer, ex: SFTExample) -> tuple:
    """(input_ids, n_prompt): the rendered prompt followed by the target and the end-of-turn token.

    The target starts inside `<think>` when the chat template's generation prompt already opened it;
    otherwise `<think>\\n` is put at the start of the target.
    """
    target = ex.target
    if "<think>" not in render_prompt(tokenizer, ex.prompt)[-20:] and not target.lstrip().startswith("<think>"):
        target = "<think>\n" + target
    p_ids = encode_prompt(tokenizer, ex.prompt)
    t_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        t_ids = t_ids + [tokenizer.eos_token_id]
    return p_ids + t_ids, len(p_ids)


def length_grouped_batches(lengths, batch_size, seed, epoch, group=50):
    """Global batches of indices for one epoch: shuffled, then sorted by length inside windows of
    `group` batches so each batch pads little; the batch order is shuffled again. Deterministic in
    (seed, epoch); the last incomplete batch is dropped so every rank count sees whole batches."""
    rng = random.Random(seed * 100_003 + epoch)
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
    rng = random.Random(seed * 100_003 + epoch)
    by_lang = {}
    for i, q in enumerate(questions):
        by_lang.setdefault(q.lang, []).append(i)
    queues = [rng.sample(v, len(v)) for _, v in sorted(by_lang.items())]
    order = [q[k] for k in range(max(map(len, queues))) for q in queues if k < len(q)]
    return [order[b:b + batch_prompts] for b in range(0, len(order) - batch_prompts + 1, batch_prompts)]


def micro_batches(items, budget, length, device):
    """`items` sorted by length and cut into runs of at most `budget` padded tokens (count x longest), so a
    micro-batch pads little. Every rank must run the same number of forwards (each one all-gathers parameters):
    a rank that needs fewer splits its largest micro-batches until it has as many as the rank that needs most."""
    bins, cur = [], []
    for it in sorted(items, key=length):
        if cur and length(it) * (len(cur) + 1) > budget:  # sorted: the new item is the longest
            bins.append(cur)
            cur = []
        cur.append(it)
    bins += [cur] if cur else []

    n = int(dist.all_max(len(bins), device))
    while len(bins) < n:
        splittable = [j for j in range(len(bins)) if len(bins[j]) > 1]
        if not splittable:
            raise RuntimeError("micro_batches: ranks hold different numbers of sequences")
        i = max(splittable, key=lambda j: len(bins[j]) * length(bins[j][-1]))
        half = len(bins[i]) // 2
        bins[i:i + 1] = [bins[i][:half], bins[i][half:]]
    return bins
