"""The paper's evaluation: k candidates per question, accuracy, language fidelity, code-switching and tokens.

    python evaluate.py --model DIR --data FILES_OR_DIR [--k 4 --temperature 0.6 --max-new-tokens 8192 --out DIR]
    torchrun --nproc_per_node N evaluate.py --model DIR --data DIR        (questions split over ranks)
    python evaluate.py --score generations.jsonl --out DIR [--tokenizer DIR]   (score another engine's outputs)
    python evaluate.py --model SFT_DIR --data POOL --select-rl 2000 --out DIR      (choose the RL prompts)

For every question the localized instruction (adamame/language.py) + question is rendered with the model's chat template
and k candidates are drawn with adamame's generation engine. Writes --out/generations.jsonl (one record per
question: candidates, token counts, extracted answers, correctness, fidelity flags), --out/summary.json,
--out/summary.csv, and prints a table with the languages as columns. Metric definitions: adamame/scoring.py.

--select-rl N is the released recipe's RL data stage (3_eval/sample_for_rl.py, then filter_for_rl.py): per language
N questions drawn from --data (seed 42; --select-val M more, disjoint, written unfiltered to rl_val.jsonl), k = 8
candidates each from the SFT model, and the questions it solves 1 to 7 times of 8 written to --out/rl_train.jsonl
(train_grpo.py --data reads it; each row keeps its correct_num); per language kept / total and the mean count are
printed. With --score it selects from another engine's candidates (N drawn from the records; 0: all of them).

Records for --score: {"lang", "answer", "candidates": [str, ...]} plus optional "id", "question" and
"candidate_tokens": [int, ...]; without token counts, --tokenizer counts them.
"""

import argparse
import json
import os
import shutil
import sys


from adamame import dist
from adamame.answer import require_verifier
from adamame.chat import load_tokenizer
from adamame.checkpoint import lock_output
from adamame.cli import HelpFormatter, check_flags, exit_with
from adamame.data import (DataError, draw_per_language, read_jsonl,
                          read_questions, write_jsonl)
from adamame.hf import resolve
from adamame.language import BENCHMARK_LANGUAGES, KNOWN_LANGUAGES
from adamame.evaluation import detectors, evaluate_model
from adamame.scoring import (format_selection, format_table, score_record, select_for_rl, summarize, write_paper_csv,
                             write_summary)

DRAW_SEED = 42  # the released sample_for_rl.py's --seed
FINISHED = ("generations.jsonl", "summary.json")  # an earlier evaluation that finished (partial/: one interrupted)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--model", help="model to generate with: a folder (HF format) or a hub id")
    ap.add_argument("--data", nargs="+", help="JSONL files or folders of them ({id, lang, question, answer})")
    ap.add_argument("--score", help="score existing generations (JSONL records with lang, answer, candidates)")
    ap.add_argument("--tokenizer", help="with --score: tokenizer folder or hub id, to count response tokens (default: "
                                        "--model's, when given)")
    ap.add_argument("--out", default="runs/eval", help="output folder")
    ap.add_argument("--k", type=int, default=4, help="candidates per question, pass@k (the paper's; 8 when not given "
                                                     "with --select-rl, the released selection's)")
    ap.add_argument("--temperature", type=float, default=0.6,
                    help="sampling temperature, 0 = greedy (not given in the paper; 0.6 as recommended for R1 models)")
    ap.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (not given in the paper)")
    ap.add_argument("--max-new-tokens", type=int, default=8192, help="response budget (the paper's)")
    ap.add_argument("--max-rows", type=int, default=128,
                    help="the paged KV cache, in rows of a full prompt and response (samples decode as many at "
                         "once as its blocks hold; a memory knob: in float32 it changes no sample)")
    ap.add_argument("--limit", type=int, help="evaluate only the first N questions of each file")
    ap.add_argument("--verifier", choices=("builtin", "math-verify"), default="builtin",
                    help="answer checker: builtin or math-verify (the paper's; pip install math-verify)")
    ap.add_argument("--lang-id", choices=("langid", "lingua"), default="langid",
                    help="language identifier: langid or lingua (the paper's; pip install lingua-language-detector)")
    ap.add_argument("--benchmark", choices=("mgsm", "msvamp"),
                    help="identify languages among the paper's set for this benchmark (default: among all 15 "
                         "languages this project knows)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (a candidate's random numbers are keyed by "
                                                        "seed, question and candidate: any number of processes draws "
                                                        "the same candidates)")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted evaluation in --out: its finished questions are kept, not redrawn")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an earlier evaluation in --out (without it or --resume, one there stops at once)")
    ap.add_argument("--select-rl", type=int, metavar="N",
                    help="also write --out/rl_train.jsonl: of N questions drawn per language (0: all, no draw), those "
                         "with 1 <= correct < their candidates, 8 (the released RL data stage; released N: 2000)")
    ap.add_argument("--select-val", type=int, default=0, metavar="M",
                    help="with --select-rl: M more questions per language, disjoint, to --out/rl_val.jsonl")
    args = ap.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    if args.select_rl is not None and not any(a == "--k" or a.startswith("--k=") for a in given):
        args.k = 8
    return args


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


def check_benchmark(path, langs, benchmark):
    """A file whose language --benchmark cannot identify is an error (its traces would all count as not faithful)."""
    allowed = BENCHMARK_LANGUAGES.get(benchmark, KNOWN_LANGUAGES)
    bad = sorted(set(langs) - set(allowed))
    if bad:
        raise DataError(f"{path}: language {', '.join(bad)} is not among --benchmark {benchmark}'s languages "
                        f"({' '.join(allowed)}): its traces could never count as faithful; leave out --benchmark to "
                        f"identify among all {len(KNOWN_LANGUAGES)} languages")


def read_generations(path, k, benchmark=None):
    """The records of a --score file, every one checked (at least k candidates; candidate_tokens, when given, one
    count per candidate) before anything is written."""
    recs = []
    for i, obj in read_jsonl(path):
        for field in ("lang", "answer", "candidates"):
            if field not in obj:
                raise DataError(f"{path}:{i}: missing field '{field}'")
        if not isinstance(obj["candidates"], list) or not all(isinstance(c, str) for c in obj["candidates"]):
            raise DataError(f"{path}:{i}: field 'candidates' must be a list of strings")
        if len(obj["candidates"]) < k:
            raise DataError(f"{path}:{i}: field 'candidates' has {len(obj['candidates'])}, fewer than --k {k}")
        counts = obj.get("candidate_tokens")
        if counts is not None and (not isinstance(counts, list) or len(counts) != len(obj["candidates"])
                                   or not all(isinstance(c, int) and not isinstance(c, bool) for c in counts)):
            raise DataError(f"{path}:{i}: field 'candidate_tokens' must be a list of {len(obj['candidates'])} "
                            f"integers, one per candidate")
        if obj["lang"] not in KNOWN_LANGUAGES:
            raise DataError(f"{path}:{i}: field 'lang': unknown language code {obj['lang']!r}")
        obj["answer"] = str(obj["answer"])
        recs.append(obj)
    check_benchmark(path, [r["lang"] for r in recs], benchmark)
    return recs


def write_outputs(recs, k, out):

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "generations.jsonl"), "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    summary = summarize(recs, k)
    write_summary(summary, out)
    write_paper_csv(recs, os.path.join(out, "paper_summary.csv"), k)
    print(format_table(summary))
    print(f"wrote {out}/generations.jsonl, summary.json, summary.csv, paper_summary.csv")
    return summary


def write_selection(selection, val, out):
    """--select-rl's files: rl_train.jsonl (the kept questions of `selection`, select_for_rl's result) and, when
    drawn, rl_val.jsonl; the per-language counts printed."""
    rows, stats = selection
    write_jsonl(rows, os.path.join(out, "rl_train.jsonl"))
    print(format_selection(stats) + f" -> {out}/rl_train.jsonl")
    if val:
        write_jsonl([{k: r[k] for k in ("id", "lang", "prompt", "question", "answer") if k in r} for r in val],
                    os.path.join(out, "rl_val.jsonl"))
        print(f"validation: {len(val)} questions -> {out}/rl_val.jsonl")
    return rows


RESUME_KEYS = ("model", "data", "limit", "k", "temperature", "top_p", "max_new_tokens", "seed", "verifier", "lang_id",
               "benchmark", "select_rl", "select_val")


def same_settings(partial, args):
    """(rank 0) The settings of the records in `partial`: written with the first of them, compared on --resume
    (records drawn with other data, seed, k or model must not be mixed into one evaluation); --overwrite starts
    afresh. Returns the error message, or None."""
    if args.overwrite:
        shutil.rmtree(partial, ignore_errors=True)
    now = {k: getattr(args, k) for k in RESUME_KEYS}
    path = os.path.join(partial, "settings.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            before = json.load(f)
        diff = [f"--{k.replace('_', '-')} {before.get(k)} (now {now[k]})" for k in RESUME_KEYS
                if before.get(k) != now[k]]
        return diff and (f"{path}: the interrupted evaluation ran with {', '.join(diff)}: resume with its settings, "
                         f"or --overwrite to start again") or None
    os.makedirs(partial, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(now, f)
    return None


def main(argv=None):

    args = parse_args(argv)
    check_flags(args, positive=("k", "max_new_tokens", "max_rows", "limit"),
                non_negative=("temperature", "select_rl", "select_val"))
    if args.select_val and not args.select_rl:
        raise DataError("--select-val needs --select-rl N with N > 0 (it draws the validation questions after the N)")
    if not 0 < args.top_p <= 1:
        raise DataError(f"--top-p must be in (0, 1], got {args.top_p}")
    require_verifier(args.verifier)

    detector, train_detector = detectors(args)  # a missing lingua is reported before any work
    print(f"language identifier: {detector.version}, evaluation languages {' '.join(detector.languages)}")
    if args.score:
        recs = read_generations(args.score, args.k, args.benchmark)  # all read and checked before --out is touched
        count = None
        if args.tokenizer or args.model:  # the model's own tokenizer counts its tokens
            tok = load_tokenizer(resolve(args.tokenizer or args.model, "--tokenizer" if args.tokenizer else "--model"))
            count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        elif not all("candidate_tokens" in r for r in recs):
            print("note: no candidate_tokens and no --tokenizer: token metrics are left empty", file=sys.stderr)
        if args.select_rl is not None:
            recs, val = draw_per_language(recs, args.select_rl, args.select_val, DRAW_SEED)
        lock_output(args.out, earlier=FINISHED + ("partial",), keep=args.overwrite)
        recs = [score_record(r, count, args.verifier, detector, train_detector) for r in recs]
        selection = select_for_rl(recs) if args.select_rl is not None else None  # its errors before any file
        summary = write_outputs(recs, args.k, args.out)
        if selection:
            write_selection(selection, val, args.out)
        return summary
    if not args.model or not args.data:
        raise DataError("give --model and --data to generate, or --score FILE to score existing generations")

    questions, val = [], []
    for f in data_files(args.data):
        questions += read_questions(f)[:args.limit]
        check_benchmark(f, [q.lang for q in questions], args.benchmark)
    if args.select_rl is not None:
        questions, val = draw_per_language(questions, args.select_rl, args.select_val, DRAW_SEED)
    rank, world, device = dist.setup()
    partial = os.path.join(args.out, "partial")
    lock_output(args.out, earlier=FINISHED + (() if args.resume else ("partial",)), keep=args.overwrite,
                check=lambda: same_settings(partial, args))  # every rank knows before any reads the old records
    recs = evaluate_model(resolve(args.model), questions, args, rank=rank, world=world, device=device,
                          partial=partial)
    summary = write_outputs(recs, args.k, args.out) if rank == 0 else None
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)  # every record is in generations.jsonl now
    if rank == 0 and args.select_rl is not None:
        write_selection(select_for_rl(recs), [{"id": q.id, "lang": q.lang, "prompt": q.prompt, "answer": q.answer}
                                              for q in val], args.out)
    dist.cleanup()
    return summary


def cli():
    try:
        main()
    except (DataError, FileNotFoundError, ValueError) as e:
        dist.cleanup(barrier=False)
        exit_with(f"error: {e}", 2)
    except KeyboardInterrupt:
        dist.cleanup(barrier=False)
        args = parse_args()
        exit_with("interrupted" if args.score else f"interrupted: the finished questions are kept in "
                  f"{os.path.join(args.out, 'partial')}; the same command with --resume continues", 130)


if __name__ == "__main__":
    cli()
