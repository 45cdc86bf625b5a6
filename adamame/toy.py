"""A built-in toy task, tokenizer and model, so the whole recipe runs on a laptop CPU with nothing downloaded.

Why: a new user's first command should show what AdaMame does, through exactly the code a real checkpoint goes
through: chat template, loading, generation, rewards, kernels, FSDP, export. So the toy model is a real
Qwen3-architecture folder (config.json + safetensors + tokenizer.json with a chat template whose generation prompt
ends in `<think>\\n`), written by this project's own code. And the toy must leave the recipe something to do: an SFT
model often wrong, reasoning better in English than in some query languages, so that the reward's schedule (explore
first, then align) can matter, or be shown not to.

The task: two-step word problems of four types, operands 1-9, in the paper's five training languages (fr ja ko pt th)
and two out-of-domain ones (es, and de with a quarter of es's data) seen only in the base stage:
    add  a + b + c      has a, gets b, gets c          sub  a - b - c      has a, gives b, gives c
    mul  a * b + c      buys a boxes of b, gets c      dbl  (a + b) * 2    has a, gets b, doubles
A trace writes one sentence per step in its language around an equation every language shares (`4 * 7 = 28`), then
"the answer is \\boxed{N}". The stages are the paper's:
  - base stage (`base_rows`, a base reasoning model's habit): every training problem as a plain question with an
    English trace, and as a question that asks "reason in <language>" with a trace in that language (10% of these
    switch to English after the first step: a code-switching habit). English writes every step of every type; each
    query language is weak on one or two types (`WEAK`), as lower-resource languages are: there its traces are terse,
    both steps in one equation (`7 * 4 + 2 = 30`), which the model must compute at once and gets wrong more often.
  - Stage 1 (`sft_rows`, the paper's SFT): plain questions in fr ja ko pt th with query-language, answer-correct
    traces only (terse in the weak cells).
  - RL prompts: a pool of other problems, of which train_grpo.py's demo keeps those the SFT model solves 1 to 7 times
    out of 8 (`select_rl_prompts`: evaluate.py --select-rl's code).
  - held out (`problems("test")`): other problems, in all seven languages.
The splits are disjoint question texts (`problems`). `competence` tabulates a model's accuracy per language and type.

The tokenizer is a BPE without whitespace pre-splitting (template phrases merge into few tokens) in which digit runs
are their own pre-tokens (every number 0-90 is one token). Across nodes the demo needs a shared file system: rank 0
writes the toy's files, and every rank reads them.

Imports: torch, tokenizers, transformers (to save the tokenizer folder); adamame: data, evaluation, hf, language,
model, scoring.
"""

import json
import os
import random
import string
import time
from types import SimpleNamespace

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
import torch.distributed as tdist

from .data import localized_prompt, read_questions, write_jsonl
from .hf import save_model
from .language import INSTRUCTIONS
from .model import ModelConfig, Transformer
from .evaluation import evaluate_model
from .scoring import format_selection, format_table, select_for_rl, summarize

LANGS = ("fr", "ja", "ko", "pt", "th")  # in-domain: base stage, Stage 1 and RL
OOD = ("es", "de")  # out-of-domain: the base stage only
TYPES = ("add", "sub", "mul", "dbl")
# each query language's weak types; ADAMAME_TOY_NO_GAP=1 (bench/ablation.py's control) makes every cell strong
WEAK = {} if os.environ.get("ADAMAME_TOY_NO_GAP") == "1" else {
    "fr": ("mul",), "ja": ("sub", "dbl"), "ko": ("dbl",), "pt": ("add", "mul"), "th": ("sub",)}
OOD_SHARE = {"es": 1.0, "de": 0.25}  # base-stage problems of an out-of-domain language, relative to the others
SWITCH = 0.1  # base-stage requested traces that continue in English after their first step
SPLIT = {"train": 50, "rl": 20, "test": 15}  # problems per (language, type)
NAMES = {"fr": ["Marie", "Paul", "Julie", "Louis"], "pt": ["Maria", "João", "Ana", "Pedro"],
         "es": ["Lucía", "Carlos", "Elena", "Diego"], "de": ["Anna", "Lukas", "Lena", "Jonas"],
         "ja": ["花子", "太郎", "さくら", "健太"], "ko": ["민수", "지영", "서준", "하은"],
         "th": ["สมชาย", "มานี", "สมศรี", "ปิติ"]}
LATIN = {"ja": ["Hanako", "Taro", "Sakura", "Kenta"], "ko": ["Minsu", "Jiyoung", "Seojun", "Haeun"],
         "th": ["Somchai", "Manee", "Somsri", "Piti"]}  # an English trace writes the name in Latin letters
OBJECTS = {"book": {"fr": "livres", "pt": "livros", "es": "libros", "de": "Bücher", "ja": "本", "ko": "책",
                    "th": "หนังสือ", "en": "books"},
           "stamp": {"fr": "timbres", "pt": "selos", "es": "sellos", "de": "Briefmarken", "ja": "切手", "ko": "우표",
                     "th": "แสตมป์", "en": "stamps"},
           "pencil": {"fr": "crayons", "pt": "lápis", "es": "lápices", "de": "Stifte", "ja": "鉛筆", "ko": "연필",
                      "th": "ดินสอ", "en": "pencils"}}
# Sentences: q_* build a question, t_* a trace; {n} name, {o} object, {a} {b} operands, {x} a step's operand, {p} the
# value before a step, {s} after it.
PHRASES = {
    "en": dict(t_terse="All together, {e} = {s}.", q_has="{n} has {a} {o}.", q_boxes="{n} buys {a} boxes of {b} {o}.", q_gets="Then {n} gets {x} more.",
               q_gives="Then {n} gives {x} to a friend.", q_doubles="Then the number of {o} doubles.",
               q_ask="How many {o} does {n} have now?", t_has="{n} starts with {a} {o}.",
               t_boxes="{a} boxes of {b} {o} make {a} * {b} = {s} {o}.", t_gets="Getting {x} more gives {p} + {x} = {s}.",
               t_gives="Giving away {x} leaves {p} - {x} = {s}.", t_doubles="Doubling gives {p} * 2 = {s}.",
               t_answer="The answer is \\boxed{{{s}}}.", sep=" "),
    "fr": dict(t_terse="Au total, {e} = {s}.", q_has="{n} a {a} {o}.", q_boxes="{n} achète {a} boîtes de {b} {o}.",
               q_gets="Ensuite, {n} en reçoit {x} de plus.", q_gives="Ensuite, {n} en donne {x} à un ami.",
               q_doubles="Ensuite, le nombre de {o} double.", q_ask="Combien de {o} {n} a-t-il maintenant ?",
               t_has="{n} commence avec {a} {o}.", t_boxes="{a} boîtes de {b} {o} font {a} * {b} = {s} {o}.",
               t_gets="En recevant {x} de plus, on obtient {p} + {x} = {s}.",
               t_gives="En donnant {x}, il reste {p} - {x} = {s}.", t_doubles="Le double donne {p} * 2 = {s}.",
               t_answer="La réponse est \\boxed{{{s}}}.", sep=" "),
    "pt": dict(t_terse="Juntando tudo, {e} = {s}.", q_has="{n} tem {a} {o}.", q_boxes="{n} compra {a} caixas de {b} {o}.",
               q_gets="Depois, {n} recebe mais {x}.", q_gives="Depois, {n} dá {x} a um amigo.",
               q_doubles="Depois, o número de {o} dobra.", q_ask="Quantos {o} {n} tem agora?",
               t_has="{n} começa com {a} {o}.", t_boxes="{a} caixas de {b} {o} são {a} * {b} = {s} {o}.",
               t_gets="Recebendo mais {x}, ficam {p} + {x} = {s}.", t_gives="Dando {x}, sobram {p} - {x} = {s}.",
               t_doubles="O dobro é {p} * 2 = {s}.", t_answer="A resposta é \\boxed{{{s}}}.", sep=" "),
    "es": dict(t_terse="En total, {e} = {s}.", q_has="{n} tiene {a} {o}.", q_boxes="{n} compra {a} cajas de {b} {o}.",
               q_gets="Luego, {n} recibe {x} más.", q_gives="Luego, {n} le da {x} a un amigo.",
               q_doubles="Luego, el número de {o} se duplica.", q_ask="¿Cuántos {o} tiene {n} ahora?",
               t_has="{n} empieza con {a} {o}.", t_boxes="{a} cajas de {b} {o} son {a} * {b} = {s} {o}.",
               t_gets="Al recibir {x} más, quedan {p} + {x} = {s}.", t_gives="Al dar {x}, quedan {p} - {x} = {s}.",
               t_doubles="El doble es {p} * 2 = {s}.", t_answer="La respuesta es \\boxed{{{s}}}.", sep=" "),
    "de": dict(t_terse="Insgesamt {e} = {s}.", q_has="{n} hat {a} {o}.", q_boxes="{n} kauft {a} Schachteln mit je {b} {o}.",
               q_gets="Dann bekommt {n} noch {x} dazu.", q_gives="Dann gibt {n} einem Freund {x}.",
               q_doubles="Dann verdoppelt sich die Zahl der {o}.", q_ask="Wie viele {o} hat {n} jetzt?",
               t_has="{n} beginnt mit {a} {o}.", t_boxes="{a} Schachteln mit je {b} {o} sind {a} * {b} = {s} {o}.",
               t_gets="Mit {x} mehr sind es {p} + {x} = {s}.", t_gives="Nach dem Abgeben von {x} bleiben {p} - {x} = {s}.",
               t_doubles="Verdoppelt sind es {p} * 2 = {s}.", t_answer="Die Antwort ist \\boxed{{{s}}}.", sep=" "),
    "ja": dict(t_terse="まとめると、{e} = {s}個です。", q_has="{n}さんは{o}を{a}個持っています。", q_boxes="{n}さんは{o}が{b}個入った箱を{a}箱買いました。",
               q_gets="さらに{x}個もらいました。", q_gives="友だちに{x}個あげました。",
               q_doubles="そのあと{o}の数が二倍になりました。", q_ask="{n}さんは今{o}を何個持っていますか？",
               t_has="{n}さんは最初に{o}を{a}個持っています。", t_boxes="{b}個入りの箱が{a}箱なので、{a} * {b} = {s}個です。",
               t_gets="{x}個もらうと、{p} + {x} = {s}個になります。", t_gives="{x}個あげると、{p} - {x} = {s}個残ります。",
               t_doubles="二倍にすると、{p} * 2 = {s}個です。", t_answer="答えは \\boxed{{{s}}} です。", sep=""),
    "ko": dict(t_terse="모두 합하면 {e} = {s}개입니다.", q_has="{n}는 {o}를 {a}개 가지고 있습니다.", q_boxes="{n}는 {o}가 {b}개씩 든 상자를 {a}개 샀습니다.",
               q_gets="그리고 {x}개를 더 받았습니다.", q_gives="그리고 친구에게 {x}개를 주었습니다.",
               q_doubles="그 후 {o}의 수가 두 배가 되었습니다.", q_ask="{n}는 이제 {o}를 몇 개 가지고 있습니까?",
               t_has="{n}는 처음에 {o}를 {a}개 가지고 있습니다.", t_boxes="{b}개씩 든 상자가 {a}개이므로 {a} * {b} = {s}개입니다.",
               t_gets="{x}개를 더 받으면 {p} + {x} = {s}개가 됩니다.", t_gives="{x}개를 주면 {p} - {x} = {s}개가 남습니다.",
               t_doubles="두 배가 되면 {p} * 2 = {s}개입니다.", t_answer="답은 \\boxed{{{s}}} 입니다.", sep=" "),
    "th": dict(t_terse="รวมทั้งหมด {e} = {s} ชิ้น", q_has="{n}มี{o} {a} ชิ้น", q_boxes="{n}ซื้อ{o}มา {a} กล่อง กล่องละ {b} ชิ้น",
               q_gets="แล้วได้รับเพิ่มอีก {x} ชิ้น", q_gives="แล้วให้เพื่อนไป {x} ชิ้น",
               q_doubles="จากนั้นจำนวน{o}เพิ่มเป็นสองเท่า", q_ask="ตอนนี้{n}มี{o}กี่ชิ้น",
               t_has="ตอนแรก{n}มี{o} {a} ชิ้น", t_boxes="{a} กล่อง กล่องละ {b} ชิ้น เท่ากับ {a} * {b} = {s} ชิ้น",
               t_gets="ได้รับเพิ่ม {x} ชิ้น จึงมี {p} + {x} = {s} ชิ้น", t_gives="ให้ไป {x} ชิ้น จึงเหลือ {p} - {x} = {s} ชิ้น",
               t_doubles="เพิ่มเป็นสองเท่า จึงมี {p} * 2 = {s} ชิ้น", t_answer="คำตอบคือ \\boxed{{{s}}}", sep=" "),
}
# (question clauses, trace steps): each step (phrase, operand name, operation)
STRUCTURE = {
    "add": (("q_has", "q_gets:b", "q_gets:c"), (("t_gets", "b", "+"), ("t_gets", "c", "+"))),
    "sub": (("q_has", "q_gives:b", "q_gives:c"), (("t_gives", "b", "-"), ("t_gives", "c", "-"))),
    "mul": (("q_boxes", "q_gets:c"), (("t_boxes", "b", "*"), ("t_gets", "c", "+"))),
    "dbl": (("q_has", "q_gets:b", "q_doubles"), (("t_gets", "b", "+"), ("t_doubles", None, "*2"))),
}
# "reason in <language>" requests: the base stage answers a request in its language, a plain question in English
REQUESTS = {"fr": "Raisonne en français.", "ja": "日本語で考えてください。", "ko": "한국어로 생각해 주세요.",
            "pt": "Raciocine em português.", "th": "กรุณาคิดเป็นภาษาไทย", "es": "Razona en español.",
            "de": "Denke auf Deutsch nach."}
MAX_ANSWER = 90  # 9 * 9 + 9
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def _operands(kind, rng):
    while True:
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        if kind != "sub" or a >= b + c:
            return a, b, (0 if kind == "dbl" else c)


def problems(split: str, langs=LANGS + OOD):
    """(type, lang, name index, object, a, b, c) tuples of one split ("train", "rl", "test"): SPLIT[split] distinct
    question texts per (language, type), the three splits disjoint (drawn from one seeded sequence per cell); an
    out-of-domain language's training split has OOD_SHARE of the problems."""
    out = []
    for lang in langs:
        for kind in TYPES:
            rng, seen, cells = random.Random(f"{lang}-{kind}"), set(), {s: [] for s in SPLIT}
            for s in SPLIT:
                want = round(SPLIT[s] * OOD_SHARE.get(lang, 1.0)) if s == "train" else SPLIT[s]
                while len(cells[s]) < want:
                    p = (kind, lang, rng.randrange(4), rng.choice(sorted(OBJECTS)), *_operands(kind, rng))
                    if p[:1] + p[2:] not in seen:
                        seen.add(p[:1] + p[2:])
                        cells[s].append(p)
            out += cells[split]
    return out


def answer_of(problem) -> int:
    kind, _, _, _, a, b, c = problem
    return {"add": a + b + c, "sub": a - b - c, "mul": a * b + c, "dbl": (a + b) * 2}[kind]


EXPRESSION = {"add": "{a} + {b} + {c}", "sub": "{a} - {b} - {c}", "mul": "{a} * {b} + {c}", "dbl": "({a} + {b}) * 2"}


def render(problem, trace_lang=None, switch=False, terse=None):
    """(question, trace, answer) of one problem; trace_lang defaults to the query language; switch: the trace
    continues in English after its first step; terse (default: a query-language trace of a WEAK cell): both steps in
    one equation, `7 * 4 + 2 = 30`, which the model must compute at once."""
    kind, lang, who, obj, a, b, c = problem
    trace_lang = trace_lang or lang
    ops = {"a": a, "b": b, "c": c}
    qp = PHRASES[lang]
    clauses = []
    for part in STRUCTURE[kind][0]:
        name, _, x = part.partition(":")
        clauses.append(qp[name].format(n=NAMES[lang][who], o=OBJECTS[obj][lang], a=a, b=b, x=ops.get(x)))
    question = qp["sep"].join(clauses + [qp["q_ask"].format(n=NAMES[lang][who], o=OBJECTS[obj][lang])])
    if terse is None:
        terse = trace_lang == lang and kind in WEAK.get(lang, ())
    if terse:
        value = answer_of(problem)
        tp = PHRASES[trace_lang]
        body = tp["t_terse"].format(e=EXPRESSION[kind].format(a=a, b=b, c=c), s=value)
        return question, body + tp["sep"] + tp["t_answer"].format(s=value), str(value)
    sentences, value = [], a
    for i, (phrase, x, op) in enumerate(((("t_has", None, None),) if kind != "mul" else ()) + STRUCTURE[kind][1]):
        tl = "en" if switch and i > 0 else trace_lang
        tp = PHRASES[tl]
        n = LATIN.get(lang, NAMES[lang])[who] if tl == "en" else NAMES[lang][who]
        prev = value
        if op == "+":
            value += ops[x]
        elif op == "-":
            value -= ops[x]
        elif op == "*":
            value = a * b
        elif op == "*2":
            value *= 2
        sentences.append((tl, tp[phrase].format(n=n, o=OBJECTS[obj][tl], a=a, b=b, x=ops.get(x), p=prev, s=value)))
    last = "en" if switch else trace_lang
    sentences.append((last, PHRASES[last]["t_answer"].format(s=value)))
    trace = ""
    for i, (tl, s) in enumerate(sentences):
        trace += ("" if i == 0 else PHRASES[tl]["sep"] or PHRASES[sentences[i - 1][0]]["sep"]) + s
    assert value == answer_of(problem)
    return question, trace, str(value)


def base_rows(seed=0):
    """The base stage's rows: every training problem as a plain question with an English trace, and as a question with
    a "reason in <language>" request and a trace in that language, SWITCH of them continuing in English. The model
    it makes reasons in English by habit and in a language when asked."""
    rng, rows = random.Random(seed), []
    for p in problems("train"):
        lang = p[1]
        q, t, c = render(p, trace_lang="en")
        rows.append({"lang": lang, "question": q, "trace": t, "answer": f"\\boxed{{{c}}}"})
        q, t, c = render(p, switch=rng.random() < SWITCH)
        rows.append({"lang": lang, "question": q + " " + REQUESTS[lang], "trace": t, "answer": f"\\boxed{{{c}}}"})
    rng.shuffle(rows)
    return rows


def sft_rows(seed=0):
    """Stage 1's rows (the paper's SFT): plain training questions in the in-domain languages with query-language,
    answer-correct traces only (terse in the weak cells)."""
    rng, rows = random.Random(seed + 1), []
    for p in problems("train", LANGS):
        q, t, c = render(p)
        rows.append({"lang": p[1], "question": q, "trace": t, "answer": f"\\boxed{{{c}}}"})
    rng.shuffle(rows)
    return rows


def rl_rows(split="rl", langs=LANGS, seed=0):
    """RL / evaluation rows ({id, lang, prompt, answer}, the RL format of adamame/data.py), with the problem's type."""
    rows = []
    for i, p in enumerate(problems(split, langs)):
        q, _, c = render(p)
        rows.append({"id": f"toy-{split}-{p[1]}-{p[0]}-{i}", "lang": p[1], "prompt": localized_prompt(p[1], q),
                     "answer": c})
    random.Random(seed).shuffle(rows)
    return rows


def build_tokenizer(path, vocab_size=3000):
    """Train the toy BPE on every question, trace and instruction, and save it with the chat template."""
    from transformers import PreTrainedTokenizerFast  # ~0.7 s to import: only when the toy is built

    corpus = []
    for p in problems("train") + problems("rl") + problems("test"):
        for tl in (p[1], "en"):
            q, t, _ = render(p, trace_lang=tl)
            corpus += [q, t]
    langs = LANGS + OOD
    corpus += [INSTRUCTIONS[lang] for lang in langs] * 50 + [REQUESTS[lang] for lang in langs] * 50
    corpus += [str(i) for i in range(0, MAX_ANSWER + 1)] * 20
    corpus += ["<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n<think>\n", "\n</think>\n\\boxed{"] * 50
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    # digit runs and the answer box are pre-tokens of their own; everything else may merge, spaces included
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\d+|\\boxed\{|\}|\n"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, max_token_length=24,
                                  show_progress=False, initial_alphabet=list(string.printable))
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def build_model(path, vocab_size, *, hidden=128, layers=2, heads=4, kv_heads=2, seed=0):
    """A random Qwen3-architecture model (~0.7M parameters at the defaults), saved with save_model."""
    cfg = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": vocab_size,
           "hidden_size": hidden, "intermediate_size": 3 * hidden, "num_hidden_layers": layers,
           "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": hidden // heads,
           "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 512, "tie_word_embeddings": True,
           "attention_bias": False, "hidden_act": "silu", "bos_token_id": None, "eos_token_id": 2,
           "pad_token_id": 0, "torch_dtype": "float32"}
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.from_dict(cfg))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    save_model(model, path)
    return model


def build_toy(root: str, rank: int = 0) -> dict:
    """Create (once) the toy model folder and data files under `root`; returns their paths.

    Under torchrun only rank 0 writes; the other ranks wait for it.
    """
    paths = {"model": os.path.join(root, "toy_model"), "base": os.path.join(root, "toy_base.jsonl"),
             "sft": os.path.join(root, "toy_sft.jsonl"), "pool": os.path.join(root, "toy_rl_pool.jsonl"),
             "train": os.path.join(root, "toy_rl_train.jsonl"), "test": os.path.join(root, "toy_rl_test.jsonl")}
    done = os.path.join(root, ".toy_ready-2")  # this toy's version: the two-step task with its RL pool
    if os.path.exists(os.path.join(root, ".toy_ready")):  # the one-step toy's folder: its SFT model is not this toy's
        raise ValueError(f"{root} holds the toy of an earlier version of this project; give another --out")
    if rank == 0 and not os.path.exists(done):
        os.makedirs(paths["model"], exist_ok=True)
        tok = build_tokenizer(paths["model"])
        build_model(paths["model"], len(tok))
        write_jsonl(base_rows(), paths["base"])
        write_jsonl(sft_rows(), paths["sft"])
        write_jsonl(rl_rows("rl"), paths["pool"])
        write_jsonl(rl_rows("test", LANGS + OOD), paths["test"])
        open(done, "w").close()
    if tdist.is_initialized():
        tdist.barrier()
    return paths


# ---------------------------------------------------------------------------------------------- the demo's report

# The embedded default's RL settings: the paper's recipe (G = 8, temperature 0.8, T = 90 steps) with sizes for a
# ~0.7M-parameter model on a laptop CPU: 10 prompts per step (2 per language), one optimizer step per RL step.
GRPO_SETTINGS = dict(batch_prompts=10, mini_batch_prompts=10, group_size=8, temperature=0.8, lr=1e-4, lora_rank=0,
                     max_steps=90, max_prompt_tokens=64, max_response_tokens=40, eval_every=0, save_every=20,
                     micro_batch_tokens=8192)
# Both models are scored with evaluate.py's code, 4 samples per prompt at its default temperature (the paper gives
# none; 0.6 is the project's, as recommended for R1 models), over the whole distribution (top-p 1.0, where
# evaluate.py's default 0.95 would also cut the tail). tests/test_toy.py keeps the temperature equal to evaluate.py's.
EVAL_TEMPERATURE, EVAL_TOP_P = 0.6, 1.0
DEMO_METRICS = ("pass@1", "pass@k", "lang_match", "acc_query", "acc_english", "n_query", "n_english", "lcpr",
                "code_switch", "model_tokens")


def held_out_questions(root, per_language=SPLIT["test"] * len(TYPES)):
    """The demo's evaluation set: the first `per_language` held-out prompts of each language (never trained on)."""
    held_out = read_questions(os.path.join(root, "toy_rl_test.jsonl"))
    langs = sorted({q.lang for q in held_out})
    return [q for lang in langs for q in [x for x in held_out if x.lang == lang][:per_language]]


def evaluate(model_dir, questions, max_new_tokens, seed, *, rank=0, world=1, device="cpu", desc="eval",
             temperature=EVAL_TEMPERATURE):
    """evaluate.py's generation and scoring (4 samples per prompt, its temperature, top-p 1.0); the summary
    (adamame.scoring.summarize)."""
    ev = SimpleNamespace(k=4, temperature=temperature, top_p=EVAL_TOP_P, max_new_tokens=max_new_tokens, max_rows=256,
                         seed=seed)
    return summarize(evaluate_model(model_dir, questions, ev, rank=rank, world=world, device=device, desc=desc), ev.k)


def demo_report(args, rank, world, device, t_start):
    """The demo's before/after table: the SFT and RL models on held-out prompts, with evaluate.py's code; rank 0
    prints it and writes summary.json (the README's demo block is rendered from it: bench/readme_table.py demo)."""
    questions = held_out_questions(args.out)
    result = {"reward": args.reward, "held_out_prompts": len(questions), "k": 4, "temperature": EVAL_TEMPERATURE,
              "rl_temperature": args.temperature,
              "rl_steps": args.max_steps, "batch_prompts": args.batch_prompts, "group_size": args.group_size,
              "world": world}
    for name, path in (("sft", os.path.join(args.out, "sft", "final")), ("rl", os.path.join(args.out, "final"))):
        summ = evaluate(path, questions, args.max_response_tokens, args.seed, rank=rank, world=world, device=device,
                        desc=f"eval {name}")
        ind, ood = summ["in_domain"], summ["out_of_domain"]
        result[name] = {"accuracy": ind["pass@1"], "lang_match": ind["lang_match"], "lcpr": ind["lcpr"],
                        "tokens": ind["model_tokens"], "ood_accuracy": ood.get("pass@1"),
                        "ood_lang_match": ood.get("lang_match"), "summary": summ}
        if rank == 0:
            print(f"\n{name.upper()} model on {len(questions)} held-out toy prompts (4 samples each, temperature "
                  f"{EVAL_TEMPERATURE}):\n" + format_table(summ, metrics=DEMO_METRICS))
    if rank == 0:
        for key, stage in (("base_steps", ("sft", "base")), ("sft_steps", ("sft",))):
            with open(os.path.join(args.out, *stage, "metrics.jsonl"), encoding="utf-8") as f:
                result[key] = sum(1 for _ in f)
        with open(os.path.join(args.out, "metrics.jsonl"), encoding="utf-8") as f:
            first = [json.loads(line)["mixed_groups"] for line in f][:10]
        result["mixed_groups_first_10_steps"] = sum(first) / len(first)
        result["rl_prompts"] = {"kept": len(read_questions(os.path.join(args.out, "toy_rl_train.jsonl"))),
                                "pool": len(read_questions(os.path.join(args.out, "toy_rl_pool.jsonl")))}
        result["seconds"] = time.perf_counter() - t_start
        with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        sft, rl = result["sft"], result["rl"]
        print(f"\nreward {args.reward}: accuracy {sft['accuracy']:.3f} -> {rl['accuracy']:.3f}, query-language match "
              f"{sft['lang_match']:.3f} -> {rl['lang_match']:.3f} (summary in {args.out}/summary.json)")


# ---------------------------------------------------------------------------------------------- the recipe's stages

SELECT_K = 8  # the released selection: 8 candidates per pool question, at evaluate.py's default sampling


def select_rl_prompts(model_dir, pool_path, out_path, *, rank=0, world=1, device="cpu", max_new_tokens=64, seed=0,
                      min_rows=10):
    """The RL data stage on the toy (evaluate.py --select-rl's code, every pool question): k = 8 candidates from the
    SFT model at evaluate.py's defaults (temperature 0.6, top-p 0.95), the questions solved 1 to 7 times written to
    out_path (rank 0; every rank waits). Fewer than min_rows kept (an SFT model of a few steps, as in the smoke run):
    the whole pool, said in a line. Returns the per-language (kept, total, mean correct_num)."""
    ev = SimpleNamespace(k=SELECT_K, temperature=0.6, top_p=0.95, max_new_tokens=max_new_tokens, max_rows=256,
                         seed=seed)
    recs = evaluate_model(model_dir, read_questions(pool_path), ev, rank=rank, world=world, device=device,
                          desc="select RL prompts")
    rows, stats = select_for_rl(recs)
    if rank == 0:
        print(format_selection(stats) + f" -> {out_path}")
        if len(rows) < min_rows:
            rows = [{"id": q.id, "lang": q.lang, "prompt": q.prompt, "answer": q.answer}
                    for q in read_questions(pool_path)]
            print(f"note: fewer than {min_rows} questions of mixed correctness; RL on the whole pool instead")
        write_jsonl(rows, out_path)
    if tdist.is_initialized():
        tdist.barrier()
    return stats


def competence(records) -> dict:
    """{lang: {type: accuracy}} of scored evaluation records whose ids carry the toy's type (rl_rows' ids), and the
    share of candidates whose trace is in the query language per cell under "<type>_match"."""
    cells = {}
    for r in records:
        kind = r["id"].split("-")[3]
        c = cells.setdefault(r["lang"], {}).setdefault(kind, [0, 0, 0])
        c[0] += sum(s["correct"] for s in r["scores"])
        c[1] += len(r["scores"])
        c[2] += sum(s["lang_match"] for s in r["scores"])
    return {lang: {**{k: v[0] / v[1] for k, v in d.items()}, **{f"{k}_match": v[2] / v[1] for k, v in d.items()}}
            for lang, d in cells.items()}
