"""Evaluation: k candidates per question, scored the way the paper's evaluation script scores them, on any number
of ranks, resumable.

Why: a benchmark number must not depend on how many processes ran it, nor on an interruption. So candidate j of a
question draws its random numbers by (seed, question, j), whatever else is in the generate call, and each rank
appends its scored records to disk after every chunk. evaluate.py and the toy demo (adamame/toy.py) both call
`evaluate_model`, so the demo's before/after table is evaluate.py's.

Imports: torch, tqdm; adamame: chat, dist, hf, language, rollout, scoring.
"""

import json
import os
import zlib

import torch.distributed as tdist
from tqdm import tqdm

from .chat import load_tokenizer
from .dist import compute_dtype
from .hf import load_model
from .language import BENCHMARK_LANGUAGES, KNOWN_LANGUAGES, get_detector, trace_languages
from .rollout import encode_questions, rollouts
from .scoring import score_record


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
        parts = [None] * world
        tdist.all_gather_object(parts, mine)
        mine = [r for p in parts for r in p]
    done.update((r["key"], r) for r in mine)
    return [done[key] for key in keys]
