"""Nothing a user does loses work or silently gives other numbers: a run into a folder that holds an earlier one
stops before writing; an interrupted evaluation resumes to the files an uninterrupted one writes; one process and
two draw the same candidates; a file outside --benchmark's languages is an error; Ctrl-C says how to continue."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import cli_env, run_cli, tiny_project


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tiny_project(tmp_path_factory.mktemp("tiny"))
    qs = [{"id": f"q{i}", "lang": ("fr", "de", "th")[i % 3], "question": f"{i} + {i} ?", "answer": str(2 * i)}
          for i in range(18)]
    (root / "eval.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs), encoding="utf-8")
    return root


def _digests(folder):
    out = {}
    for base, _, files in os.walk(folder):
        for f in files:
            if f != ".lock":
                path = os.path.join(base, f)
                out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def _grpo(tiny, out, *extra):
    return run_cli(["train_grpo.py", "--model", str(tiny / "model"), "--data", str(tiny / "rl.jsonl"), "--out",
                    str(out), "--batch-prompts", "5", "--mini-batch-prompts", "5", "--group-size", "2",
                    "--max-response-tokens", "6", "--lora-rank", "0", "--save-every", "1", *extra])


def _eval(tiny, out, *extra, nproc=1):
    return run_cli(["evaluate.py", "--model", str(tiny / "model"), "--data", str(tiny / "eval.jsonl"), "--k", "2",
                    "--max-new-tokens", "6", "--temperature", "1.0", "--out", str(out), *extra], nproc=nproc)


def test_a_second_training_run_into_a_finished_folder_stops_and_changes_nothing(tiny, tmp_path):
    out = tmp_path / "run"
    assert _grpo(tiny, out, "--max-steps", "2").returncode == 0
    before = _digests(out)
    r = _grpo(tiny, out, "--max-steps", "1", "--reward", "grpo")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert f"{out} holds an earlier run (checkpoint.pt, metrics.jsonl, final)" in line and "--resume" in line
    assert _digests(out) == before  # every file byte-identical
    r = _grpo(tiny, out, "--max-steps", "1", "--reward", "grpo", "--overwrite")  # the explicit way on
    assert r.returncode == 0, r.stderr[-2000:]
    assert sum(1 for _ in open(out / "metrics.jsonl")) == 1
    sft = tmp_path / "sft"
    args = ["train_sft.py", "--model", str(tiny / "model"), "--data", str(tiny / "sft.jsonl"), "--out", str(sft),
            "--max-steps", "1", "--lora-rank", "0", "--batch-size", "4"]
    assert run_cli(args).returncode == 0
    before = _digests(sft)
    r = run_cli(args)
    assert r.returncode == 2 and "holds an earlier run" in r.stderr and _digests(sft) == before


def test_a_second_evaluation_into_a_finished_folder_stops_and_changes_nothing(tiny, tmp_path):
    out = tmp_path / "ev"
    assert _eval(tiny, out).returncode == 0
    before = _digests(out)
    r = _eval(tiny, out, "--seed", "3")
    assert r.returncode == 2 and "holds an earlier run (generations.jsonl, summary.json)" in r.stderr
    assert _digests(out) == before
    assert _eval(tiny, out, "--seed", "3", "--overwrite").returncode == 0 and _digests(out) != before


def test_one_and_two_ranks_draw_the_same_candidates(tiny, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert _eval(tiny, one).returncode == 0
    r = _eval(tiny, two, nproc=2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (one / "generations.jsonl").read_bytes() == (two / "generations.jsonl").read_bytes()
    assert (one / "summary.json").read_bytes() == (two / "summary.json").read_bytes()
    other = tmp_path / "other"  # the seed is honoured
    assert _eval(tiny, other, "--seed", "1").returncode == 0
    assert (other / "generations.jsonl").read_bytes() != (one / "generations.jsonl").read_bytes()


def test_an_interrupted_evaluation_resumes_to_the_uninterrupted_files(tiny, tmp_path, monkeypatch):
    """The evaluation is stopped after its first chunk of questions (the second generate call raises, as Ctrl-C
    would), then resumed: the finished questions are not drawn again and every file equals an uninterrupted run's."""
    import evaluate
    from adamame import dist, evaluation

    full, cut = tmp_path / "full", tmp_path / "cut"
    common = ["--model", str(tiny / "model"), "--data", str(tiny / "eval.jsonl"), "--k", "2", "--max-new-tokens", "6",
              "--temperature", "1.0"]
    monkeypatch.setattr(evaluation, "EVAL_CHUNK", 5)  # 18 questions: 4 chunks

    def main(*args):  # a fresh one-process group each time, as a new `python evaluate.py` would have
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            monkeypatch.delenv(var, raising=False)
        try:
            return evaluate.main([*common, *args])
        finally:
            dist.cleanup(barrier=False)

    main("--out", str(full))
    real, calls = evaluation.generate_records, []

    def stop_at_second(*a, **kw):
        calls.append(len(a[2]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(evaluation, "generate_records", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        main("--out", str(cut))
    assert not (cut / "generations.jsonl").exists()
    assert sum(1 for _ in open(cut / "partial" / "rank0.jsonl")) == 5  # the first chunk is on disk
    calls.clear()
    monkeypatch.setattr(evaluation, "generate_records", lambda *a, **kw: (calls.append(len(a[2])), real(*a, **kw))[1])
    with pytest.raises(Exception, match="holds an earlier run"):  # without --resume: refused
        main("--out", str(cut))
    with pytest.raises(Exception, match=r"ran with --seed 0 \(now 5\)"):  # records of other settings are not mixed
        main("--out", str(cut), "--resume", "--seed", "5")
    main("--out", str(cut), "--resume")
    assert sum(calls) == 13  # only the 13 unfinished questions were generated
    for f in ("generations.jsonl", "summary.json", "summary.csv", "paper_summary.csv"):
        assert (cut / f).read_bytes() == (full / f).read_bytes(), f
    assert not (cut / "partial").exists()


def test_a_file_outside_the_benchmarks_languages_is_an_error(tiny, tmp_path):
    ru = tmp_path / "ru.jsonl"
    ru.write_text(json.dumps({"id": "1", "lang": "ru", "question": "Сколько будет 2 + 2?", "answer": "4"}) + "\n",
                  encoding="utf-8")
    r = run_cli(["evaluate.py", "--model", str(tiny / "model"), "--data", str(ru), "--benchmark", "msvamp",
                 "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{ru}: language ru is not among --benchmark msvamp's languages (ar en es fr ja ko pt th vi zh)" in r.stderr
    assert not (tmp_path / "o").exists()
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"lang": "ru", "answer": "4", "candidates": ["\\boxed{4}"] * 4}) + "\n", encoding="utf-8")
    r = run_cli(["evaluate.py", "--score", str(gen), "--benchmark", "msvamp", "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and f"{gen}: language ru is not among" in r.stderr
    assert run_cli(["evaluate.py", "--score", str(gen), "--benchmark", "mgsm", "--out", str(tmp_path / "o")]
                   ).returncode == 0


def test_ctrl_c_names_the_checkpoint_and_the_resume_command(tiny, tmp_path):
    out = tmp_path / "run"
    env, root = cli_env()
    p = subprocess.Popen([sys.executable, "train_grpo.py", "--model", str(tiny / "model"), "--data",
                          str(tiny / "rl.jsonl"), "--out", str(out), "--batch-prompts", "5", "--mini-batch-prompts",
                          "5", "--group-size", "2",
                          "--max-response-tokens", "6", "--lora-rank", "0", "--save-every", "1", "--max-steps", "500"],
                         cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert f"interrupted: the last checkpoint is {out / 'checkpoint.pt'}; the same command with --resume" in err
