"""A built-in toy task, tokenizer and model, so the whole recipe runs on a laptop CPU with nothing downloaded.

Why: a new user's first command should show what AdaMame does (language collapse, then its repair), through
exactly the code a real checkpoint goes through: chat template, loading, generation, rewards, kernels, FSDP,
export. So the toy model is a real Qwen3-architecture folder (config.json + safetensors + tokenizer.json with a
chat template whose generation prompt ends in `<think>\\n`), written by this project's own code.

The task: one-step additions and subtractions of small numbers in natural template sentences, in the paper's
five training languages (fr, ja, ko, pt, th), with the localized instruction of the recipe. A reasoning trace is
one sentence restating the problem and the arithmetic, then "the answer is \\boxed{N}", written either in the
query language or in English; the SFT mix puts most traces in English regardless of the query language (the
collapse that GRPO then has to undo). Train and held-out questions are disjoint by construction (`problems`): a
held-out question asks arithmetic that training asks in the same language, but about another person and object.

The tokenizer is a BPE without whitespace pre-splitting (so template phrases merge into few tokens) in which
digit runs are their own pre-tokens (every number 0-100 becomes one token); with it questions are a handful of
tokens and traces about a dozen, which a ~1M-parameter model learns in a minute.

Imports: torch, tokenizers, transformers (to save the tokenizer folder), adamame.
"""

import json
import os
import random
import string

import torch

LANGS = ("fr", "ja", "ko", "pt", "th")
NAMES = {"fr": ["Marie", "Paul", "Julie", "Louis"], "ja": ["花子", "太郎", "さくら", "健太"],
         "ko": ["민수", "지영", "서준", "하은"], "pt": ["Maria", "João", "Ana", "Pedro"],
         "th": ["สมชาย", "มานี", "สมศรี", "ปิติ"]}
NAMES_LATIN = {"fr": NAMES["fr"], "pt": NAMES["pt"], "ja": ["Hanako", "Taro", "Sakura", "Kenta"],
               "ko": ["Minsu", "Jiyoung", "Seojun", "Haeun"], "th": ["Somchai", "Manee", "Somsri", "Piti"]}
OBJECTS = {  # (fr, ja, ko, pt, th, en)
    "apple": {"fr": "pommes", "ja": "りんご", "ko": "사과", "pt": "maçãs", "th": "แอปเปิล", "en": "apples"},
    "book": {"fr": "livres", "ja": "本", "ko": "책", "pt": "livros", "th": "หนังสือ", "en": "books"},
    "stamp": {"fr": "timbres", "ja": "切手", "ko": "우표", "pt": "selos", "th": "แสตมป์", "en": "stamps"},
}
# question templates: {n} name, {a} {b} numbers, {o} object
QUESTIONS = {
    "add": {
        "fr": "{n} a {a} {o}. Ensuite, {n} en reçoit encore {b}. Combien de {o} {n} a-t-il maintenant ?",
        "ja": "{n}さんは{o}を{a}個持っています。さらに{b}個もらいました。{n}さんは今{o}を何個持っていますか？",
        "ko": "{n}는 {o}를 {a}개 가지고 있습니다. {b}개를 더 받았습니다. {n}는 이제 {o}를 몇 개 가지고 있습니까?",
        "pt": "{n} tem {a} {o}. Depois, {n} recebe mais {b}. Quantos {o} {n} tem agora?",
        "th": "{n}มี{o} {a} ชิ้น แล้วได้รับเพิ่มอีก {b} ชิ้น ตอนนี้{n}มี{o}กี่ชิ้น",
    },
    "sub": {
        "fr": "{n} a {a} {o}. Ensuite, {n} en donne {b} à un ami. Combien de {o} reste-t-il à {n} ?",
        "ja": "{n}さんは{o}を{a}個持っています。友だちに{b}個あげました。{n}さんの{o}は何個残っていますか？",
        "ko": "{n}는 {o}를 {a}개 가지고 있습니다. 친구에게 {b}개를 주었습니다. {n}에게 {o}가 몇 개 남았습니까?",
        "pt": "{n} tem {a} {o}. Depois, {n} dá {b} a um amigo. Quantos {o} sobram para {n}?",
        "th": "{n}มี{o} {a} ชิ้น แล้วให้เพื่อนไป {b} ชิ้น {n}เหลือ{o}กี่ชิ้น",
    },
}
TRACES = {
    "add": {
        "fr": "{n} a {a} {o} et en reçoit encore {b}, donc {n} a maintenant {a} + {b} = {c} {o}. La réponse est \\boxed{{{c}}}.",
        "ja": "{n}さんは{o}を{a}個持っていて、さらに{b}個もらったので、{a} + {b} = {c}個になります。答えは \\boxed{{{c}}} です。",
        "ko": "{n}는 {o}를 {a}개 가지고 있고 {b}개를 더 받았으므로 이제 {a} + {b} = {c}개를 가지고 있습니다. 답은 \\boxed{{{c}}} 입니다.",
        "pt": "{n} tem {a} {o} e recebe mais {b}, então agora {n} tem {a} + {b} = {c} {o}. A resposta é \\boxed{{{c}}}.",
        "th": "{n}มี{o} {a} ชิ้น และได้รับเพิ่มอีก {b} ชิ้น ดังนั้นตอนนี้มี {a} + {b} = {c} ชิ้น คำตอบคือ \\boxed{{{c}}}",
        "en": "{n} has {a} {o} and then gets {b} more, so now {n} has {a} + {b} = {c} {o}. The answer is \\boxed{{{c}}}.",
    },
    "sub": {
        "fr": "{n} a {a} {o} et en donne {b} à un ami, donc il reste {a} - {b} = {c} {o}. La réponse est \\boxed{{{c}}}.",
        "ja": "{n}さんは{o}を{a}個持っていて、友だちに{b}個あげたので、{a} - {b} = {c}個残ります。答えは \\boxed{{{c}}} です。",
        "ko": "{n}는 {o}를 {a}개 가지고 있고 친구에게 {b}개를 주었으므로 {a} - {b} = {c}개가 남습니다. 답은 \\boxed{{{c}}} 입니다.",
        "pt": "{n} tem {a} {o} e dá {b} a um amigo, então sobram {a} - {b} = {c} {o}. A resposta é \\boxed{{{c}}}.",
        "th": "{n}มี{o} {a} ชิ้น และให้เพื่อนไป {b} ชิ้น ดังนั้นเหลือ {a} - {b} = {c} ชิ้น คำตอบคือ \\boxed{{{c}}}",
        "en": "{n} has {a} {o} and gives {b} to a friend, so {n} has {a} - {b} = {c} {o} left. The answer is \\boxed{{{c}}}.",
    },
}
MAX_N = 12
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


COMBOS = [(name_idx, obj) for name_idx in range(4) for obj in OBJECTS]  # who and what a question is about


def held_out(op: str, lang: str, a: int, b: int) -> bool:
    """A third of the (op, language, a, b) also get a held-out question."""
    return (a + 3 * b + LANGS.index(lang) + (op == "sub")) % 3 == 0


def problems(split: str):
    """(op, lang, name index, object, a, b) tuples; sub keeps a >= b so answers are >= 0.

    Training has one question for every (op, lang, a, b). A held-out question asks the same arithmetic in the same
    language about another person and object, so its text never occurs in training while everything it needs
    (the sum, the phrasing, the names) does."""
    out = []
    for op in ("add", "sub"):
        for lang in LANGS:
            for a in range(1, MAX_N + 1):
                for b in range(1, MAX_N + 1):
                    if op == "sub" and b > a:
                        continue
                    k = (a + 2 * b + LANGS.index(lang)) % len(COMBOS)
                    if split == "train":
                        out.append((op, lang, *COMBOS[k], a, b))
                    elif held_out(op, lang, a, b):
                        out.append((op, lang, *COMBOS[(k + len(COMBOS) // 2) % len(COMBOS)], a, b))
    return out


def render(op, lang, name_idx, obj, a, b, trace_lang=None):
    """(question, trace, answer) of one problem; trace_lang defaults to the query language."""
    trace_lang = trace_lang or lang
    c = a + b if op == "add" else a - b
    n = NAMES[lang][name_idx]
    q = QUESTIONS[op][lang].format(n=n, a=a, b=b, o=OBJECTS[obj][lang])
    tn = NAMES_LATIN[lang][name_idx] if trace_lang == "en" else n  # an English trace writes the name in Latin
    t = TRACES[op][trace_lang].format(n=tn, a=a, b=b, c=c, o=OBJECTS[obj][trace_lang])
    return q, t, str(c)


def sft_rows(english_fraction=0.78, seed=0):
    """SFT JSONL rows over the train split: each trace in English with probability english_fraction."""
    rng = random.Random(seed)
    rows = []
    for p in problems("train"):
        lang = p[1]
        q, t, c = render(*p, trace_lang="en" if rng.random() < english_fraction else lang)
        rows.append({"lang": lang, "question": q, "trace": t, "answer": f"\\boxed{{{c}}}"})
    rng.shuffle(rows)
    return rows


def rl_rows(split="train", seed=0):
    """RL / evaluation rows ({id, lang, prompt, answer}) in the format of ../shared/data/rl/train.jsonl."""
    from adamame.data import localized_prompt

    rows = []
    for i, p in enumerate(problems(split)):
        q, _, c = render(*p)
        rows.append({"id": f"toy-{split}-{i}", "lang": p[1], "prompt": localized_prompt(p[1], q), "answer": c})
    random.Random(seed).shuffle(rows)
    return rows


def build_tokenizer(path, vocab_size=2000):
    """Train the toy BPE on every question, trace and instruction, and save it with the chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from adamame.data import INSTRUCTIONS

    corpus = []
    for p in problems("train") + problems("test"):
        for tl in (p[1], "en"):
            q, t, _ = render(*p, trace_lang=tl)
            corpus += [q, t]
    corpus += [INSTRUCTIONS[lang] for lang in LANGS] * 50
    corpus += [str(i) for i in range(0, 2 * MAX_N + 1)] * 20
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


def build_model(path, vocab_size, hidden=128, layers=4, heads=4, kv_heads=2, seed=0):
    """A random Qwen3-architecture model (~1M parameters at the defaults), saved with save_model."""
    from adamame.model import ModelConfig, Transformer, save_model

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


def write_jsonl(rows, path):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def apply_settings(args, argv, settings: dict) -> None:
    """Set the toy-sized `settings` on `args`, except for flags given on the command line (`argv`)."""
    import sys

    given = {a.split("=")[0][2:].replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])
             if a.startswith("--")}
    for k, v in settings.items():
        if k not in given:
            setattr(args, k, v)


def build_toy(root: str, rank: int = 0) -> dict:
    """Create (once) the toy model folder and data files under `root`; returns their paths.

    Under torchrun only rank 0 writes; the other ranks wait for it.
    """
    paths = {"model": os.path.join(root, "toy_model"), "sft": os.path.join(root, "toy_sft.jsonl"),
             "train": os.path.join(root, "toy_rl_train.jsonl"), "test": os.path.join(root, "toy_rl_test.jsonl")}
    done = os.path.join(root, ".toy_ready")
    if rank == 0 and not os.path.exists(done):
        os.makedirs(paths["model"], exist_ok=True)
        tok = build_tokenizer(paths["model"])
        build_model(paths["model"], len(tok))
        write_jsonl(sft_rows(), paths["sft"])
        write_jsonl(rl_rows("train"), paths["train"])
        write_jsonl(rl_rows("test"), paths["test"])
        open(done, "w").close()
    import torch.distributed as tdist

    if tdist.is_initialized():
        tdist.barrier()
    return paths
