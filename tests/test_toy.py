import json
import os

from adamame import toy
from adamame.language import reward_language
from tests.helpers import run_cli


def test_traces_are_identified_as_their_language():
    wrong = []
    problems = toy.problems("train") + toy.problems("test")
    for p in problems:
        for trace_lang in (p[1], "en"):
            _, trace, c = toy.render(p, trace_lang=trace_lang)
            got = reward_language(trace + f"\n</think>\n\\boxed{{{c}}}")
            if got != trace_lang:
                wrong.append((trace_lang, got, trace))
    assert not wrong, wrong[:3]
    assert len(problems) == 800


def test_train_and_held_out_questions_are_disjoint():
    def questions(split):
        return {toy.render(p)[0] for p in toy.problems(split)}

    train, test = questions("train"), questions("test")
    assert train and test and not (train & test)
    assert len(test) == len(train) == 2 * len({(p[0], p[1], p[4], p[5]) for p in toy.problems("train")})
    # what a held-out question needs is taught: the same arithmetic in the same language
    facts = {(p[0], p[1], p[4], p[5]) for p in toy.problems("train")}
    assert all((p[0], p[1], p[4], p[5]) in facts for p in toy.problems("test"))


def test_stage_1_mix_is_mostly_english():
    rows = toy.sft_rows()
    english = sum(reward_language(r["trace"]) == "en" for r in rows) / len(rows)
    assert 0.64 <= english <= 0.76  # 30% of the traces in the query language
    assert not any(r["question"].endswith(tuple(toy.REQUESTS.values())) for r in rows)


def test_the_base_stage_answers_plain_questions_in_english_and_requests_in_their_language():
    rows = toy.base_rows()
    assert len(rows) == 2 * len(toy.problems("train"))
    for r in rows:
        requested = r["question"].endswith(toy.REQUESTS[r["lang"]])
        assert reward_language(r["trace"]) == (r["lang"] if requested else "en"), r
    assert sum(r["question"].endswith(tuple(toy.REQUESTS.values())) for r in rows) == len(rows) // 2
    held_out = {toy.render(p)[0] for p in toy.problems("test")}
    assert not held_out & {r["question"] for r in rows}  # nothing held out is seen, with or without a request
    assert not held_out & {r["question"].rsplit(" ", 1)[0] for r in rows}


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
    assert all(getattr(sft, k) == v for k, v in train_sft.TOY_SETTINGS.items()) and sft.base_steps == 400
    sft = train_sft.parse_args(["--max-steps", "7"])  # a --max-steps given sets both stages
    assert sft.max_steps == 7 and sft.base_steps == 7 and sft.lr == train_sft.TOY_SETTINGS["lr"]
    assert train_sft.parse_args(["--model", "m", "--data", "d"]).lora_rank == 8


def test_the_demo_scores_at_evaluate_py_s_temperature():
    import evaluate

    defaults = evaluate.parse_args(["--model", "m", "--data", "d"])
    assert (defaults.temperature, defaults.k) == (toy.EVAL_TEMPERATURE, 4)


def test_tokenizer_makes_short_sequences_and_round_trips(tmp_path):
    tok = toy.build_tokenizer(str(tmp_path))
    q, t, c = toy.render(("add", "th", 1, "apple", 11, 5), trace_lang="en")
    assert len(tok(q)["input_ids"]) <= 12 and len(tok(t)["input_ids"]) <= 20
    assert tok.decode(tok(t)["input_ids"]) == t
    assert all(len(tok(str(n))["input_ids"]) == 1 for n in range(0, 2 * toy.MAX_N + 1))
    assert tok.unk_token_id not in tok(t + "\n</think>\n\\boxed{22}")["input_ids"]


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
        assert set(s[stage]["summary"]["languages"]) == set(toy.LANGS)
    from bench.readme_table import demo

    block = demo(s)  # the README's demo block is rendered from this file
    assert f"accuracy {s['sft']['accuracy']:.3f} -> {s['rl']['accuracy']:.3f}" in block and "10 + 10 SFT steps" in block
    assert os.path.exists(out / "toy_model" / "tokenizer.json") and os.path.exists(out / "final" / "config.json")
    assert "query-language match" in r.stdout and "lang_match" in r.stdout
    # a second run reuses the toy model and the SFT result
    r2 = run_cli(["train_grpo.py", "--out", str(out), "--sft-steps", "10", "--max-steps", "1", "--reward", "grpo"])
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "examples, 1 rank(s)" not in r2.stdout  # train_sft did not run again (it prints this first)
    assert json.loads((out / "summary.json").read_text())["reward"] == "grpo"
