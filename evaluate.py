"""The paper's evaluation: k candidates per question, accuracy, language fidelity, code-switching and tokens.

    python evaluate.py --model DIR --data FILES_OR_DIR [--k 4 --temperature 0.6 --max-new-tokens 8192 --out DIR]
    torchrun --nproc_per_node N evaluate.py --model DIR --data DIR        (questions split over ranks)
    python evaluate.py --score generations.jsonl --out DIR [--tokenizer DIR]   (score another engine's outputs)

For every question the localized instruction (recipe.md) + question is rendered with the model's chat template
and k candidates are drawn with adamame's generation engine. Writes --out/generations.jsonl (one record per
question: candidates, token counts, extracted answers, correctness, fidelity flags), --out/summary.json,
--out/summary.csv, and prints a table with the languages as columns. Metric definitions: adamame/scoring.py and
the README.

Records for --score: {"lang", "answer", "candidates": [str, ...]} plus optional "id", "question" and
"candidate_tokens": [int, ...]; without token counts, --tokenizer counts them.
"""

import argparse
import json
import os
import sys

from adamame.data import DataError


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (HF format) to generate with")
    ap.add_argument("--data", nargs="+", help="JSONL files or folders of them ({id, lang, question, answer})")
    ap.add_argument("--score", help="score existing generations (JSONL records with lang, answer, candidates)")
    ap.add_argument("--tokenizer", help="with --score: tokenizer folder to count response tokens")
    ap.add_argument("--out", default="runs/eval", help="output folder (default runs/eval)")
    ap.add_argument("--k", type=int, default=4, help="candidates per question (paper: 4)")
    ap.add_argument("--temperature", type=float, default=0.6,
                    help="sampling temperature (not given in recipe.md; 0.6 as recommended for R1 models)")
    ap.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    ap.add_argument("--max-new-tokens", type=int, default=8192, help="response budget (paper: 8192)")
    ap.add_argument("--batch-prompts", type=int, default=32, help="prompts per generate call (memory knob)")
    ap.add_argument("--limit", type=int, help="evaluate only the first N questions of each file")
    ap.add_argument("--verifier", choices=("builtin", "math-verify"), default="builtin",
                    help="answer checker: builtin (default) or math-verify (the paper's; pip install math-verify)")
    ap.add_argument("--lang-id", choices=("langid", "lingua"), default="langid",
                    help="language identifier: langid (default) or lingua (the paper's; pip install "
                         "lingua-language-detector)")
    ap.add_argument("--benchmark", choices=("mgsm", "msvamp"),
                    help="restrict the evaluation's identifier to the paper's language set for this benchmark "
                         "(default: the 13 languages this project knows)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def data_files(paths):
    files = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".jsonl"))
            if not found:
                raise DataError(f"{p}: no .jsonl files in this folder")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return files


def detectors(args):
    """(the evaluation's identifier, the training-time rule's identifier) for --lang-id and --benchmark."""
    from adamame.language import BENCHMARK_LANGUAGES, EVAL_LANGUAGES, TRAIN_LANGUAGES, get_detector

    name = getattr(args, "lang_id", "langid")
    languages = BENCHMARK_LANGUAGES[args.benchmark] if getattr(args, "benchmark", None) else EVAL_LANGUAGES
    return get_detector(name, tuple(languages)), get_detector(name, TRAIN_LANGUAGES)


def read_generations(path):
    from adamame.data import read_jsonl
    from adamame.language import KNOWN_LANGUAGES

    recs = []
    for i, obj in read_jsonl(path):
        for field in ("lang", "answer", "candidates"):
            if field not in obj:
                raise DataError(f"{path}:{i}: missing field '{field}'")
        if not isinstance(obj["candidates"], list) or not all(isinstance(c, str) for c in obj["candidates"]):
            raise DataError(f"{path}:{i}: field 'candidates' must be a list of strings")
        if not obj["candidates"]:
            raise DataError(f"{path}:{i}: field 'candidates' is empty")
        if obj["lang"] not in KNOWN_LANGUAGES:
            raise DataError(f"{path}:{i}: field 'lang': unknown language code {obj['lang']!r}")
        obj["answer"] = str(obj["answer"])
        recs.append(obj)
    return recs


def generate_records(model, tok, questions, *, k, temperature, top_p, max_new_tokens, batch_prompts, seed,
                     progress=None):
    """One record per question with its k decoded candidates and their token counts."""
    from adamame.rollout import encode_questions, rollouts

    qs, ids, _ = encode_questions(tok, questions)
    rolls = rollouts(model, tok, ids, n=k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                     seed=seed, chunk_prompts=batch_prompts, progress=progress)
    recs = [{"id": q.id, "lang": q.lang, "question": q.prompt, "answer": q.answer, "candidates": [],
             "candidate_tokens": [], "finish_reasons": []} for q in qs]
    for r in rolls:
        recs[r.question]["candidates"].append(r.text)
        recs[r.question]["candidate_tokens"].append(len(r.tokens))
        recs[r.question]["finish_reasons"].append(r.finish_reason)
    return recs


def evaluate_model(model_dir, questions, args, rank=0, world=1, device="cpu", desc="eval"):
    """Generate on this rank's share of the questions and gather every scored record on rank 0."""
    import torch
    from tqdm import tqdm

    from adamame.chat import load_tokenizer
    from adamame.dist import compute_dtype
    from adamame.model import load_model
    from adamame.scoring import score_record

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=compute_dtype(device), device=device).eval()
    mine = questions[rank::world]
    bar = tqdm(total=len(mine), desc=desc, disable=rank != 0, dynamic_ncols=True)
    recs = generate_records(model, tok, mine, k=args.k, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, batch_prompts=args.batch_prompts,
                            seed=args.seed * 1000 + rank, progress=bar)
    bar.close()
    detector, train_detector = detectors(args)
    recs = [score_record(r, verifier=getattr(args, "verifier", "builtin"), detector=detector,
                         train_detector=train_detector) for r in recs]
    if world > 1:
        import torch.distributed as tdist

        parts = [None] * world
        tdist.all_gather_object(parts, recs)
        recs = [r for p in parts for r in p]
    return recs


def write_outputs(recs, k, out):
    from adamame.scoring import format_table, summarize, write_paper_csv, write_summary

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "generations.jsonl"), "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    summary = summarize(recs, k)
    write_summary(summary, out)
    write_paper_csv(recs, os.path.join(out, "paper_summary.csv"))
    print(format_table(summary))
    print(f"wrote {out}/generations.jsonl, summary.json, summary.csv, paper_summary.csv")
    return summary


def main(argv=None):
    from adamame.answer import require_verifier

    from adamame.checkpoint import lock_output

    args = parse_args(argv)
    require_verifier(args.verifier)
    detector, train_detector = detectors(args)  # a missing lingua is reported before any work
    print(f"language identifier: {detector.version}, evaluation languages {' '.join(detector.languages)}")
    if args.score:
        lock_output(args.out)
        from adamame.scoring import score_record

        recs = read_generations(args.score)
        count = None
        if args.tokenizer:
            from adamame.chat import load_tokenizer

            tok = load_tokenizer(args.tokenizer)
            count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        elif not all("candidate_tokens" in r for r in recs):
            print("note: no candidate_tokens and no --tokenizer: token metrics are left empty", file=sys.stderr)
        recs = [score_record(r, count, args.verifier, detector, train_detector) for r in recs]
        ks = {len(r["candidates"]) for r in recs}
        return write_outputs(recs, min(ks), args.out)
    if not args.model or not args.data:
        raise DataError("give --model and --data to generate, or --score FILE to score existing generations")

    from adamame import dist
    from adamame.data import read_questions

    questions = []
    for f in data_files(args.data):
        questions += read_questions(f)[:args.limit]
    rank, world, device = dist.setup()
    lock_output(args.out)
    recs = evaluate_model(args.model, questions, args, rank, world, device)
    summary = write_outputs(recs, args.k, args.out) if rank == 0 else None
    dist.cleanup()
    return summary


def cli():
    try:
        main()
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
