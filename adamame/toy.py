"""A built-in toy task, tokenizer and model, so the whole recipe runs on a laptop CPU with nothing downloaded.

Why: a new user's first command should show what AdaMame does (language collapse, then its repair), through
exactly the code a real checkpoint goes through: chat template, loading, generation, rewards, kernels, FSDP,
export. So the toy model is a real Qwen3-architecture folder (config.json + safetensors + tokenizer.json with a
chat template whose generation prompt ends in `<think>\\n`), written by this project's own code.

The task: one-step additions and subtractions of numbers 1-5 in natural template sentences, in the paper's five
training languages (fr, ja, ko, pt, th), with the localized instruction of the recipe. A reasoning trace is one
sentence restating the problem and the arithmetic, then "the answer is \\boxed{N}", written in the query language or
in English. Two SFT stages (train_sft.py's default) make the collapse a preference, not an inability, as it is in a
real base model: the base stage (`base_rows`) answers a plain question in English and a question that asks "reason in
<language>" in that language, so both kinds of trace get the same practice; Stage 1 (`sft_rows`, the paper's SFT)
trains plain questions with 30% of the traces in the query language. The result
reasons in the query language about 20% of the time and, sampled at evaluate.py's temperature (0.6), is about as
accurate when it does (hotter sampling breaks its query-language traces more often). Train and held-out questions
are disjoint by construction (`problems`): a held-out question asks arithmetic that training asks in the same
language, but about another person and object, and is never trained on, with or without a request.

The tokenizer is a BPE without whitespace pre-splitting (so template phrases merge into few tokens) in which
digit runs are their own pre-tokens (every number becomes one token); with it questions are a handful of tokens
and traces about a dozen, which a ~0.6M-parameter model (2 layers) learns in a few minutes. Across nodes the demo
needs a shared file system: rank 0 writes the toy's files, and every rank reads them.

Imports: torch, tokenizers, transformers (to save the tokenizer folder); adamame: data, hf, language, model,
rollout, scoring.
"""

import json
import os
import random
import string

import torch

from adamame.data import localized_prompt, read_questions, write_jsonl
from adamame.language import INSTRUCTIONS
from adamame.hf import save_model
from adamame.model import ModelConfig, Transformer
from adamame.rollout import evaluate_model
from adamame.scoring import format_table, summarize

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
# "reason in <language>" requests: the base stage answers a request in its language, a plain question in English
REQUESTS = {"fr": "Raisonne en français.", "ja": "日本語で考えてください。", "ko": "한국어로 생각해 주세요.",
            "pt": "Raciocine em português.", "th": "กรุณาคิดเป็นภาษาไทย"}
MAX_N = 5
QUERY_FRACTION = 0.3  # Stage 1's share of query-language traces
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


COMBOS = [(name_idx, obj) for name_idx in range(4) for obj in OBJECTS]  # who and what a question is about


def problems(split: str):
    """(op, lang, name index, object, a, b) tuples; sub keeps a >= b so answers are >= 0.

    Every (op, lang, a, b) is asked twice in training and twice held out, each time about another person and object:
    a held-out question's text never occurs in training, while everything it needs (the sum, the phrasing, the
    names) does."""
    out = []
    for op in ("add", "sub"):
        for lang in LANGS:
            for a in range(1, MAX_N + 1):
                for b in range(1, MAX_N + 1):
                    if op == "sub" and b > a:
                        continue
                    k = (a + 2 * b + LANGS.index(lang)) % len(COMBOS)
                    picks = (k, k + 1) if split == "train" else (k + 6, k + 7)
                    out += [(op, lang, *COMBOS[j % len(COMBOS)], a, b) for j in picks]
    return out


def render(problem, trace_lang=None):
    """(question, trace, answer) of one problem (op, lang, name_idx, obj, a, b); trace_lang defaults to the query
    language."""
    op, lang, name_idx, obj, a, b = problem
    trace_lang = trace_lang or lang
    c = a + b if op == "add" else a - b
    n = NAMES[lang][name_idx]
    q = QUESTIONS[op][lang].format(n=n, a=a, b=b, o=OBJECTS[obj][lang])
    tn = NAMES_LATIN[lang][name_idx] if trace_lang == "en" else n  # an English trace writes the name in Latin
    t = TRACES[op][trace_lang].format(n=tn, a=a, b=b, c=c, o=OBJECTS[obj][trace_lang])
    return q, t, str(c)


def base_rows(seed=0):
    """The base stage's rows: every training problem twice, the plain question with an English trace and the
    question with a "reason in <language>" request with a trace in that language. The model it makes reasons in
    English by default and in the query language when asked: a preference, not an inability, as in a base LRM."""
    rows = []
    for p in problems("train"):
        lang = p[1]
        for trace_lang, request in (("en", ""), (lang, " " + REQUESTS[lang])):
            q, t, c = render(p, trace_lang=trace_lang)
            rows.append({"lang": lang, "question": q + request, "trace": t, "answer": f"\\boxed{{{c}}}"})
    random.Random(seed).shuffle(rows)
    return rows


def sft_rows(query_fraction=QUERY_FRACTION, seed=0):
    """Stage 1's rows (the paper's SFT): the plain training questions, each with its trace in the query language
    with probability query_fraction, else in English; so most traces still start in English."""
    rng = random.Random(seed)
    rows = []
    for p in problems("train"):
        lang = p[1]
        q, t, c = render(p, trace_lang=lang if rng.random() < query_fraction else "en")
        rows.append({"lang": lang, "question": q, "trace": t, "answer": f"\\boxed{{{c}}}"})
    rng.shuffle(rows)
    return rows


def rl_rows(split="train", seed=0):
    """RL / evaluation rows ({id, lang, prompt, answer}) in the RL format of adamame/data.py."""
    rows = []
    for i, p in enumerate(problems(split)):
        q, _, c = render(p)
        rows.append({"id": f"toy-{split}-{i}", "lang": p[1], "prompt": localized_prompt(p[1], q), "answer": c})
    random.Random(seed).shuffle(rows)
    return rows


def build_tokenizer(path, vocab_size=2000):
    """Train the toy BPE on every question, trace and instruction, and save it with the chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = []
    for p in problems("train") + problems("test"):
        for tl in (p[1], "en"):
            q, t, _ = render(p, trace_lang=tl)
            corpus += [q, t]
    corpus += [INSTRUCTIONS[lang] for lang in LANGS] * 50 + [REQUESTS[lang] for lang in LANGS] * 50
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


def build_model(path, vocab_size, *, hidden=128, layers=2, heads=4, kv_heads=2, seed=0):
    """A random Qwen3-architecture model (~0.6M parameters at the defaults), saved with save_model. Two layers: half the
    time of four, which scored about the same at temperature 0.8 (SFT model, one-process evaluation of the held-out
    set: 97.1% with 4 layers and 550 base steps, 96.9% with 2 layers and 400); hotter sampling hurts the 2-layer
    model's query-language traces more (README, "What it shows")."""
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
             "sft": os.path.join(root, "toy_sft.jsonl"),
             "train": os.path.join(root, "toy_rl_train.jsonl"), "test": os.path.join(root, "toy_rl_test.jsonl")}
    done = os.path.join(root, ".toy_ready")
    if rank == 0 and not os.path.exists(done):
        os.makedirs(paths["model"], exist_ok=True)
        tok = build_tokenizer(paths["model"])
        build_model(paths["model"], len(tok))
        write_jsonl(base_rows(), paths["base"])
        write_jsonl(sft_rows(), paths["sft"])
        write_jsonl(rl_rows("train"), paths["train"])
        write_jsonl(rl_rows("test"), paths["test"])
        open(done, "w").close()
    import torch.distributed as tdist

    if tdist.is_initialized():
        tdist.barrier()
    return paths


# ---------------------------------------------------------------------------------------------- the demo's report

# The embedded default's RL settings: the paper's recipe (G = 8, temperature 0.8, T = 90 steps) with sizes for a
# ~0.6M-parameter model on a laptop CPU: 10 prompts per step (2 per language), one optimizer step per RL step.
GRPO_SETTINGS = dict(batch_prompts=10, mini_batch_prompts=10, group_size=8, temperature=0.8, lr=1e-4, lora_rank=0,
                     max_steps=90, max_prompt_tokens=64, max_response_tokens=32, eval_every=0, save_every=20,
                     micro_batch_tokens=8192)
# Both models are scored with evaluate.py's code, 4 samples per prompt at its default temperature (the paper gives
# none; 0.6 is the project's, as recommended for R1 models), over the whole distribution (top-p 1.0, where
# evaluate.py's default 0.95 would also cut the tail). tests/test_toy.py keeps the temperature equal to evaluate.py's.
EVAL_TEMPERATURE, EVAL_TOP_P = 0.6, 1.0
DEMO_METRICS = ("pass@1", "lang_match", "acc_query", "acc_english", "n_query", "n_english", "lcpr", "model_tokens")


def held_out_questions(root, per_language=100):
    """The demo's evaluation set: the first `per_language` held-out prompts of each language (never trained on)."""
    held_out = read_questions(os.path.join(root, "toy_rl_test.jsonl"))
    langs = sorted({q.lang for q in held_out})
    return [q for lang in langs for q in [x for x in held_out if x.lang == lang][:per_language]]


def evaluate(model_dir, questions, max_new_tokens, seed, *, rank=0, world=1, device="cpu", desc="eval",
             temperature=EVAL_TEMPERATURE):
    """evaluate.py's generation and scoring (4 samples per prompt, its temperature, top-p 1.0); the summary
    (adamame.scoring.summarize)."""
    from types import SimpleNamespace

    ev = SimpleNamespace(k=4, temperature=temperature, top_p=EVAL_TOP_P, max_new_tokens=max_new_tokens, max_rows=256,
                         seed=seed)
    return summarize(evaluate_model(model_dir, questions, ev, rank=rank, world=world, device=device, desc=desc), ev.k)


def demo_report(args, rank, world, device, t_start):
    """The demo's before/after table: the SFT and RL models on held-out prompts, with evaluate.py's code; rank 0
    prints it and writes summary.json (the README's demo block is rendered from it: bench/readme_table.py demo)."""
    import json
    import time

    questions = held_out_questions(args.out)
    result = {"reward": args.reward, "held_out_prompts": len(questions), "k": 4, "temperature": EVAL_TEMPERATURE,
              "rl_temperature": args.temperature,
              "rl_steps": args.max_steps, "batch_prompts": args.batch_prompts, "group_size": args.group_size,
              "world": world}
    for name, path in (("sft", os.path.join(args.out, "sft", "final")), ("rl", os.path.join(args.out, "final"))):
        summ = evaluate(path, questions, args.max_response_tokens, args.seed, rank=rank, world=world, device=device,
                        desc=f"eval {name}")
        ind = summ["in_domain"]
        result[name] = {"accuracy": ind["pass@1"], "lang_match": ind["lang_match"], "lcpr": ind["lcpr"],
                        "tokens": ind["model_tokens"], "summary": summ}
        if rank == 0:
            print(f"\n{name.upper()} model on {len(questions)} held-out toy prompts (4 samples each, temperature "
                  f"{EVAL_TEMPERATURE}):\n" + format_table(summ, metrics=DEMO_METRICS))
    if rank == 0:
        for key, stage in (("base_steps", ("sft", "base")), ("sft_steps", ("sft",))):
            with open(os.path.join(args.out, *stage, "metrics.jsonl"), encoding="utf-8") as f:
                result[key] = sum(1 for _ in f)
        result["seconds"] = time.perf_counter() - t_start
        with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        sft, rl = result["sft"], result["rl"]
        print(f"\nreward {args.reward}: accuracy {sft['accuracy']:.3f} -> {rl['accuracy']:.3f}, query-language match "
              f"{sft['lang_match']:.3f} -> {rl['lang_match']:.3f} (summary in {args.out}/summary.json)")
