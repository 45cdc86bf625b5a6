"""From questions to scored responses: prompt rendering, generation, decoding, scoring.

Why: GRPO rollouts and evaluation candidates are the same operation (render the localized prompt with the chat
template, sample k continuations, decode, score accuracy and reasoning language), and both must score with
exactly the same code so training rewards and reported metrics cannot drift apart.

adamame/evaluation.py runs these for evaluate.py and the toy demo.

Imports: adamame: answer, chat, generate, language.
"""

from dataclasses import dataclass

from .answer import reward_check, think_format_ok
from .chat import encode_prompt
from .generate import generate
from .language import reward_language


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
