"""From questions to decoded responses: prompt rendering, generation, decoding, scoring.

Why: GRPO rollouts and evaluation candidates are the same operation (render the localized prompt with the chat
template, sample k continuations, decode, score accuracy and reasoning language), and both must score with
exactly the same code so training rewards and reported metrics cannot drift apart.

The evaluation's generation lives here too (`evaluate_model`), so evaluate.py and the toy demo run the same code.

Imports: torch, tqdm; adamame: answer, chat, dist, generate, hf, language, scoring.
"""

import json
import os
import zlib
from dataclasses import dataclass

from .answer import reward_check, think_format_ok
from .chat import encode_prompt, load_tokenizer
from .dist import compute_dtype
from .generate import generate
from .language import BENCHMARK_LANGUAGES, KNOWN_LANGUAGES, get_detector, reward_language, trace_languages
from .hf import load_model
from .scoring import score_record


@dataclass
class Rollout:
    question: int  # index into the questions list
    prompt_ids: list
    tokens: list  # generated ids, including the stop token if any
    text: str  # decoded response, without the stop token
    finish_reason: str
    logprobs: list | None
    raw: str = ""  # decoded response with the stop token, as the released reward decodes it
    prompt_text: str = ""  # decoded prompt (chat template included)
    correct: float = 0.0  # the accuracy reward: 1 when the final answer verifies
    format_ok: bool = False  # the released reward's <think> / \\boxed format check (--format-reward adds it to r_i)
    lang: str = "unknown"
    verify_timed_out: bool = False  # the checker (or the language identifier) ran out of time or memory: r_i = 0


def stop_ids(tokenizer) -> list:
    """End-of-turn ids: the tokenizer's eos plus the usual chat end markers it knows."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for t in ("<|im_end|>", "<|endoftext|>", "<｜end▁of▁sentence｜>", "<|eot_id|>"):
        i = tokenizer.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tokenizer.unk_token_id and i is not None and i >= 0:
            ids.add(i)
    return sorted(ids)


def encode_questions(tokenizer, questions, max_prompt_tokens=None):
    """(kept questions, their prompt ids, number dropped as longer than max_prompt_tokens)."""
    kept, ids = [], []
    for q in questions:
        p = encode_prompt(tokenizer, q.prompt)
        if max_prompt_tokens is None or len(p) <= max_prompt_tokens:
            kept.append(q)
            ids.append(p)
    return kept, ids, len(questions) - len(kept)


def rollouts(model, tokenizer, prompt_ids, *, n, max_new_tokens, temperature, top_p=1.0, top_k=0, seed=None,
             max_rows=None, return_logprobs=False, progress=None, sample_keys=None):
    """n samples for every prompt (prompt-major order), in one generate call whose paged KV cache is the size of
    max_rows full-length rows (None: one per sample); progress counts finished samples."""
    if not prompt_ids:
        return []
    samples = generate(model, prompt_ids, max_new_tokens=max_new_tokens, n=n, temperature=temperature, top_p=top_p,
                       top_k=top_k, eos_token_ids=stop_ids(tokenizer), seed=seed, return_logprobs=return_logprobs,
                       max_rows=max_rows, progress=progress, sample_keys=sample_keys)
    out, prompt_texts = [], {}
    for j, s in enumerate(samples):
        q = j // n
        if q not in prompt_texts:
            prompt_texts[q] = tokenizer.decode(prompt_ids[q], skip_special_tokens=False)
        body = s.tokens[:-1] if s.finish_reason == "stop" else s.tokens
        text = tokenizer.decode(body, skip_special_tokens=False)
        raw = text + tokenizer.decode(s.tokens[-1:], skip_special_tokens=False) if len(body) < len(s.tokens) \
            else text
        out.append(Rollout(q, prompt_ids[q], s.tokens, text, s.finish_reason, s.logprobs, raw, prompt_texts[q]))
    return out


def score(rolls, questions, lang_mode="prefix", detector=None, verifier="builtin"):
    """Fill `correct`, `format_ok`, `lang` (lang(o_i)) and `verify_timed_out` of every rollout in place.

    correct: the verifier on the response (builtin), or on the decoded prompt + response (math-verify, as the
    paper's reward); format_ok: the released reward's think/boxed check on the prompt + response. lang(o_i): the
    detector (default: langid over the 14 training languages) on the raw response (stop token included, as the
    released reward decodes it)."""
    for r in rolls:
        q = questions[r.question]
        sequence = r.prompt_text + (r.raw or r.text)
        r.correct, r.verify_timed_out = reward_check(r.text, q.answer, verifier, sequence=sequence)
        r.format_ok = think_format_ok(sequence)
        try:
            r.lang = reward_language(r.raw or r.text, lang_mode, detector)
        except (MemoryError, RecursionError):  # one pathological response must not stop the run
            r.correct, r.lang, r.verify_timed_out = 0.0, "unknown", True
    return rolls


# ---------------------------------------------------------------------------------------------- evaluation

def detectors(args):
    """(the evaluation's identifier, the training-time rule's identifier) for --lang-id and --benchmark."""
    name, benchmark = getattr(args, "lang_id", "langid"), getattr(args, "benchmark", None)
    languages = BENCHMARK_LANGUAGES[benchmark] if benchmark else KNOWN_LANGUAGES
    return get_detector(name, tuple(languages)), get_detector(name, trace_languages(benchmark))


EVAL_CHUNK = 256  # most questions per generate call in an evaluation: the unit written to disk and skipped on --resume


def question_keys(questions) -> list:
    """A key per question, unique within the list: "lang/id", with "#n" for the n-th repeat of one."""
    seen, keys = {}, []
    for q in questions:
        base = f"{q.lang}/{q.id}"
        seen[base] = seen.get(base, -1) + 1
        keys.append(base + (f"#{seen[base]}" if seen[base] else ""))
    return keys


def sample_key(question_key: str, candidate: int) -> int:
    """The 32-bit key of a candidate's random numbers (generate's sample_keys): a hash of (question, candidate)."""
    return zlib.crc32(f"{question_key}\0{candidate}".encode())


def generate_records(model, tok, questions, keys, *, k, temperature, top_p, max_new_tokens, max_rows, seed,
                     progress=None):
    """One record per question with its k decoded candidates and their token counts; candidate j of the question
    keyed `keys[i]` draws its random numbers by (seed, sample_key(keys[i], j)), whatever else is in the call."""
    qs, ids, _ = encode_questions(tok, questions)
    rolls = rollouts(model, tok, ids, n=k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                     seed=seed, max_rows=max_rows, progress=progress,
                     sample_keys=[sample_key(key, j) for key in keys for j in range(k)])
    recs = [{"id": q.id, "lang": q.lang, "question": q.prompt, "answer": q.answer, "candidates": [],
             "candidate_tokens": [], "finish_reasons": [], "key": key} for q, key in zip(qs, keys)]
    for r in rolls:
        recs[r.question]["candidates"].append(r.text)
        recs[r.question]["candidate_tokens"].append(len(r.tokens))
        recs[r.question]["finish_reasons"].append(r.finish_reason)
    return recs


def read_partial(folder) -> dict:
    """{question key: scored record} of an interrupted evaluation's partial files (a torn last line is dropped)."""
    done = {}
    if folder and os.path.isdir(folder):
        for name in sorted(n for n in os.listdir(folder) if n.startswith("rank")):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # the line a killed run was writing
                    done[rec["key"]] = rec
    return done


def evaluate_model(model_dir, questions, args, *, rank=0, world=1, device="cpu", desc="eval", partial=None):
    """evaluate.py's generation and scoring: k candidates per question, scored, every record (in the questions' order)
    returned on every rank. args: k, temperature, top_p, max_new_tokens, max_rows, seed, and optionally verifier,
    lang_id, benchmark (evaluate.py's flags).

    The questions go in chunks of at most EVAL_CHUNK, chunk c to rank c % world, and candidate j of a question draws its
    random numbers keyed by (seed, question, j): any number of processes, and a resumed evaluation, draw the same
    candidates. partial: a folder where each rank appends its scored records after every chunk (flushed to disk);
    questions with a record there are not generated again (evaluate.py --resume)."""
    from tqdm import tqdm

    keys = question_keys(questions)
    done = read_partial(partial)
    for q, key in zip(questions, keys):
        if key in done and done[key]["question"] != q.prompt:
            raise ValueError(f"{partial}: question {key} is not the one the interrupted evaluation drew; resume with "
                             f"its data, or --overwrite to start again")
    todo = [(q, key) for q, key in zip(questions, keys) if key not in done]
    size = max(1, min(EVAL_CHUNK, -(-len(todo) // world)))  # every rank busy; any split draws the same candidates
    chunks = [todo[a:a + size] for a in range(0, len(todo), size)][rank::world]
    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=compute_dtype(device), device=device).eval()
    model.merge_projections()  # q/k/v and gate/up as one weight each: 4 GEMMs a decode layer instead of 7
    detector, train_detector = detectors(args)
    bar = tqdm(total=sum(map(len, chunks)) * args.k, desc=desc, unit="sample", disable=rank != 0,
               dynamic_ncols=True)
    mine = []
    for chunk in chunks:
        recs = generate_records(model, tok, [q for q, _ in chunk], [key for _, key in chunk], k=args.k,
                                temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                                max_rows=args.max_rows, seed=args.seed, progress=bar)
        recs = [score_record(r, verifier=getattr(args, "verifier", "builtin"), detector=detector,
                             train_detector=train_detector) for r in recs]
        if partial:
            os.makedirs(partial, exist_ok=True)
            with open(os.path.join(partial, f"rank{rank}.jsonl"), "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
                f.flush()
                os.fsync(f.fileno())
        mine += recs
    bar.close()
    if world > 1:
        import torch.distributed as tdist

        parts = [None] * world
        tdist.all_gather_object(parts, mine)
        mine = [r for p in parts for r in p]
    done.update((r["key"], r) for r in mine)
    return [done[key] for key in keys]
