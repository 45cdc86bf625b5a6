import json
import os

from adamame import toy
from adamame.language import reward_language
from tests.helpers import run_cli


ALL = toy.LANGS + toy.OOD


def test_traces_are_identified_as_their_language():
    wrong = []
    problems = toy.problems("train") + toy.problems("rl") + toy.problems("test")
    for p in problems:
        for trace_lang in (p[1], "en"):
            _, trace, c = toy.render(p, trace_lang=trace_lang)
            got = reward_language(trace + f"\n</think>\n\\boxed{{{c}}}")
            if got != trace_lang:
                wrong.append((trace_lang, got, trace))
    assert not wrong, wrong[:3]
    cells = len(ALL) * len(toy.TYPES)
    assert len(toy.problems("test")) == cells * toy.SPLIT["test"] and len(toy.problems("rl")) == cells * toy.SPLIT["rl"]


def test_the_splits_are_disjoint_and_answers_are_right():
    texts = {s: {toy.render(p)[0] for p in toy.problems(s)} for s in ("train", "rl", "test")}
    assert all(texts.values())
    assert not texts["train"] & texts["rl"] and not texts["train"] & texts["test"] and not texts["rl"] & texts["test"]
    for p in toy.problems("test"):
        kind, _, _, _, a, b, c = p
        expected = {"add": a + b + c, "sub": a - b - c, "mul": a * b + c, "dbl": (a + b) * 2}[kind]
        assert toy.render(p)[2] == str(expected) and expected >= 0
    # an out-of-domain language has OOD_SHARE of the others' training problems
    train = toy.problems("train")
    assert sum(p[1] == "de" for p in train) == len(toy.TYPES) * round(0.25 * toy.SPLIT["train"])
    assert sum(p[1] == "es" for p in train) == len(toy.TYPES) * toy.SPLIT["train"]


def test_weak_cells_are_terse_in_their_language_and_english_writes_every_step():
    """The competence gap is by construction: a weak cell's query-language trace computes both steps in one
    equation; the same problem's English trace (and a strong cell's) writes one equation a step."""
    for p in toy.problems("train"):
        kind, lang = p[0], p[1]
        _, own, _ = toy.render(p)
        _, en, _ = toy.render(p, trace_lang="en")
        assert en.count(" = ") == 2
        assert own.count(" = ") == (1 if kind in toy.WEAK.get(lang, ()) else 2), own
    assert all(toy.WEAK.get(lang) for lang in toy.LANGS) and not any(lang in toy.WEAK for lang in toy.OOD)


def test_stage_1_is_query_language_answer_correct_traces_of_in_domain_questions():
    from adamame.answer import verify

    rows = toy.sft_rows()
    assert len(rows) == len(toy.problems("train", toy.LANGS)) and {r["lang"] for r in rows} == set(toy.LANGS)
    assert all(reward_language(r["trace"]) == r["lang"] for r in rows)
    assert not any(r["question"].endswith(tuple(toy.REQUESTS.values())) for r in rows)
    assert all(verify(r["trace"].rsplit("\\boxed{", 1)[1].split("}")[0], r["answer"][7:-1]) for r in rows)


def test_the_base_stage_answers_plain_questions_in_english_and_requests_in_their_language():
    rows = toy.base_rows()
    assert len(rows) == 2 * len(toy.problems("train")) and {r["lang"] for r in rows} == set(ALL)
    english_answer = toy.PHRASES["en"]["t_answer"].split("\\")[0]  # "The answer is "
    requested = [r["question"].endswith(toy.REQUESTS[r["lang"]]) for r in rows]
    assert sum(requested) == len(rows) // 2
    switched = stepwise = 0
    for r, asked in zip(rows, requested):
        if not asked:
            assert reward_language(r["trace"]) == "en", r
        elif english_answer in r["trace"]:  # a switch: continued in English after its first step
            switched += 1
            assert r["trace"].count(" = ") == 2 and not r["trace"].startswith(english_answer), r
        else:
            assert reward_language(r["trace"]) == r["lang"], r
        stepwise += asked and r["trace"].count(" = ") == 2  # a terse (weak-cell) trace is never switched
    assert 0.06 < switched / stepwise < 0.14  # SWITCH = 10% of the step-by-step requested traces
    held_out = {toy.render(p)[0] for p in toy.problems("test") + toy.problems("rl")}
    assert not held_out & {r["question"] for r in rows}  # nothing held out is seen, with or without a request
    assert not held_out & {r["question"].rsplit(" ", 1)[0] for r in rows}


def test_out_of_domain_languages_reach_only_the_base_stage_and_evaluation(tmp_path):
    assert not {r["lang"] for r in toy.sft_rows()} & set(toy.OOD)
    assert not {r["lang"] for r in toy.rl_rows("rl")} & set(toy.OOD)
    assert {r["lang"] for r in toy.rl_rows("test", ALL)} == set(ALL)


def test_the_demo_samples_as_the_paper_and_balances_languages():
    """Only sizes are the toy's: the group and the temperature are the paper's (train_grpo.py's defaults), and a
    step's prompts split evenly over the five languages."""
    import train_grpo

    paper = train_grpo.parse_args(["--model", "m", "--data", "d"])
    for k in ("group_size", "temperature"):
        assert toy.GRPO_SETTINGS[k] == getattr(paper, k), k
    assert toy.GRPO_SETTINGS["batch_prompts"] % len(toy.LANGS) == 0


def test_the_toy_settings_are_defaults_the_command_line_overrides():
    """Without --model/--data the trainers' defaults are the toy's own settings; a flag given still wins; with a
    model and data every default is the paper's again."""
    import train_grpo
    import train_sft

    toy_run = train_grpo.parse_args(["--lr", "0.5"])
    assert toy_run.lr == 0.5 and all(getattr(toy_run, k) == v for k, v in toy.GRPO_SETTINGS.items() if k != "lr")
    assert train_grpo.parse_args(["--model", "m", "--data", "d"]).batch_prompts == 512
    sft = train_sft.parse_args([])
    assert all(getattr(sft, k) == v for k, v in train_sft.TOY_SETTINGS.items()) and sft.base_steps == train_sft.TOY_BASE_STEPS
    sft = train_sft.parse_args(["--max-steps", "7"])  # a --max-steps given sets both stages
    assert sft.max_steps == 7 and sft.base_steps == 7 and sft.lr == train_sft.TOY_SETTINGS["lr"]
    assert train_sft.parse_args(["--model", "m", "--data", "d"]).lora_rank == 8


def test_the_demo_scores_at_evaluate_py_s_temperature():
    import evaluate

    defaults = evaluate.parse_args(["--model", "m", "--data", "d"])
    assert (defaults.temperature, defaults.k) == (toy.EVAL_TEMPERATURE, 4)


def test_tokenizer_makes_short_sequences_and_round_trips(tmp_path):
    tok = toy.build_tokenizer(str(tmp_path))
    for p in toy.problems("test")[::7]:
        q, t, c = toy.render(p, trace_lang="en")
        assert len(tok(q)["input_ids"]) <= 16 and len(tok(t)["input_ids"]) <= 26
        assert tok.decode(tok(t)["input_ids"]) == t
        assert tok.unk_token_id not in tok(t + "\n</think>\n\\boxed{22}")["input_ids"]
    assert all(len(tok(str(n))["input_ids"]) == 1 for n in range(0, toy.MAX_ANSWER + 1))


def test_shortened_demo_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "demo"
    r = run_cli(["train_grpo.py", "--out", str(out), "--sft-steps", "10", "--max-steps", "2"], nproc=2, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "toy demo settings: --batch-prompts 10, " in r.stdout and ", --max-steps 2, " in r.stdout  # given wins
    assert "toy task settings: --lora-rank 0, " in r.stdout and "(its base stage: --max-steps 10)" in r.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["reward"] == "adamame"
    for stage in ("sft", "rl"):
        assert 0.0 <= s[stage]["accuracy"] <= 1.0 and 0.0 <= s[stage]["lang_match"] <= 1.0
        assert set(s[stage]["summary"]["languages"]) == set(ALL)  # out-of-domain languages reported apart
        assert s[stage]["summary"]["out_of_domain"]["pass@k"] is not None
    from bench.readme_table import demo

    block = demo(s)  # the README's demo block is rendered from this file
    assert f"accuracy {s['sft']['accuracy']:.3f} -> {s['rl']['accuracy']:.3f}" in block and "10 + 10 SFT steps" in block
    assert os.path.exists(out / "toy_model" / "tokenizer.json") and os.path.exists(out / "final" / "config.json")
    # the RL prompts are the pool's the SFT model solved 1 to 7 times of 8; mixed groups are logged per step
    pool = {q["id"]: q for q in map(json.loads, open(out / "toy_rl_pool.jsonl", encoding="utf-8"))}
    kept = [json.loads(line) for line in open(out / "toy_rl_train.jsonl", encoding="utf-8")]
    assert "Total: " in r.stdout and all(pool[k["id"]]["prompt"] == k["prompt"] for k in kept)
    if "RL on the whole pool instead" in r.stdout:  # an SFT model of 10 steps may solve none of them
        assert len(kept) == len(pool)
    else:
        assert all(1 <= k["correct_num"] <= 7 for k in kept) and f"{len(kept)}/{len(pool)} kept" in r.stdout
    rows = [json.loads(line) for line in open(out / "metrics.jsonl", encoding="utf-8")]
    assert all(0 <= row["mixed_groups"] <= 1 for row in rows) and "mixed_groups_first_10_steps" in s
    assert "query-language match" in r.stdout and "lang_match" in r.stdout
    # a second run reuses the toy model, the SFT result and the RL prompts (replacing the RL run only when asked)
    r2 = run_cli(["train_grpo.py", "--out", str(out), "--sft-steps", "10", "--max-steps", "1", "--reward", "grpo",
                  "--overwrite"])
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "examples, 1 rank(s)" not in r2.stdout  # train_sft did not run again (it prints this first)
    assert json.loads((out / "summary.json").read_text())["reward"] == "grpo"
