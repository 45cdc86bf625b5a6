"""Runs that share an output folder, launchers killed with SIGKILL, and broken input files, tried as a user would."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from adamame.data import DataError, read_jsonl
from tests.helpers import run_cli, tiny_project

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--batch-prompts", "4", "--mini-batch-prompts", "2", "--group-size", "4", "--max-response-tokens", "8",
         "--lora-rank", "4", "--beta", "0.01", "--max-prompt-tokens", "400", "--temperature", "1.0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_project(tmp_path_factory.mktemp("hard"))


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _start(args, nproc=1):
    cmd = [sys.executable, *args] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def _rows(path):
    try:
        return [json.loads(line) for line in open(path, encoding="utf-8")]
    except (OSError, ValueError):
        return []


def _wait_for_rows(path, n, proc, timeout=180):
    t0 = time.time()
    while len(_rows(path)) < n:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() - t0 < timeout, "the run made no progress"
        time.sleep(0.2)


def _processes_mentioning(text):
    """pids of live processes whose command line contains `text` (zombies excluded)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            out.append(int(pid))
    return out


def test_a_second_run_on_the_same_output_folder_is_refused(tiny, tmp_path):
    out = tmp_path / "shared"
    first = _start(["train_grpo.py", "--model", str(tiny / "model"), "--data", str(tiny / "rl.jsonl"), "--out",
                    str(out), *SMALL, "--max-steps", "100000"])  # still running when the test ends
    try:
        _wait_for_rows(out / "metrics.jsonl", 1, first)
        for args in (["train_grpo.py", "--model", str(tiny / "model"), "--data", str(tiny / "rl.jsonl"), *SMALL],
                     ["train_sft.py", "--model", str(tiny / "model"), "--data", str(tiny / "sft.jsonl")],
                     ["evaluate.py", "--model", str(tiny / "model"), "--data", str(tiny / "rl.jsonl")]):
            r = run_cli([*args, "--out", str(out)])
            assert r.returncode == 2, r.stderr[-2000:]
            assert f"error: {out} is in use by another run (pid {first.pid})" in r.stderr, r.stderr[-2000:]
            assert "Traceback" not in r.stderr
        assert first.poll() is None  # the first run goes on untouched
    finally:
        first.kill()
        first.wait()
    # once that process is gone (even killed with SIGKILL), the folder is free again: for its --resume (or an
    # explicit --overwrite; a plain run would stop at the killed run's files)
    r = run_cli(["train_grpo.py", "--model", str(tiny / "model"), "--data", str(tiny / "rl.jsonl"), "--out",
                 str(out), *SMALL, "--max-steps", "1", "--overwrite"])
    assert r.returncode == 0, r.stderr[-2000:]


def test_killing_the_launcher_kills_every_rank_and_resume_finishes_the_same_run(tiny, tmp_path):
    args = ["train_grpo.py", "--model", str(tiny / "model"), "--data", str(tiny / "rl.jsonl"), *SMALL,
            "--max-steps", "8", "--save-every", "1", "--log-rollouts", "0"]
    full = tmp_path / "full"
    r = run_cli([*args, "--out", str(full)], nproc=2)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "killed"
    launcher = _start([*args, "--out", str(out)], nproc=2)
    _wait_for_rows(out / "metrics.jsonl", 2, launcher)
    os.kill(launcher.pid, signal.SIGKILL)  # the launcher alone, as `kill -9 <torchrun pid>` does
    launcher.wait()
    t0 = time.time()  # at ~1 s a step, orphaned ranks would still be training 3 s later (6 steps to go)
    while _processes_mentioning(str(out)) and time.time() - t0 < 3:
        time.sleep(0.1)
    left = _processes_mentioning(str(out))
    for pid in left:  # do not leave them behind even if the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"ranks outlived their launcher: {left}"
    r = run_cli([*args, "--out", str(out), "--resume"], nproc=2)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _rows(full / "metrics.jsonl"), _rows(out / "metrics.jsonl")
    assert [x["step"] for x in b] == list(range(1, 9))
    for x, y in zip(a, b):
        for k in ("reward", "accuracy", "lang_match", "loss", "kl", "response_tokens"):
            assert x[k] == pytest.approx(y[k], abs=1e-6), (x["step"], k)
    from safetensors.torch import load_file

    wa, wb = load_file(str(full / "final" / "model.safetensors")), load_file(str(out / "final" / "model.safetensors"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def broken(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    shutil.copytree(tiny / "model", root / "truncated")
    weights = root / "truncated" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])
    rows = (tiny / "rl.jsonl").read_bytes().splitlines()
    (root / "bad_utf8.jsonl").write_bytes(b"\n".join(rows[:2] + [rows[2][:20] + b"\xff\xfe" + rows[2][20:]] + rows[3:]))
    sft = (tiny / "sft.jsonl").read_bytes().splitlines()
    (root / "bad_utf8_sft.jsonl").write_bytes(b"\n".join(sft[:2] + [b"\xff" + sft[2]] + sft[3:]))
    return root


@pytest.mark.parametrize("entry", ["train_sft", "train_grpo", "evaluate"])
def test_truncated_weights_are_one_error_line_naming_the_file(tiny, broken, tmp_path, entry):
    model = str(broken / "truncated")
    args = {"train_sft": ["train_sft.py", "--model", model, "--data", str(tiny / "sft.jsonl")],
            "train_grpo": ["train_grpo.py", "--model", model, "--data", str(tiny / "rl.jsonl"), *SMALL],
            "evaluate": ["evaluate.py", "--model", model, "--data", str(tiny / "rl.jsonl")]}[entry]
    r = run_cli([*args, "--out", str(tmp_path / "out")])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {model}/model.safetensors: unreadable safetensors file")


@pytest.mark.parametrize("entry", ["train_sft", "train_grpo", "evaluate", "evaluate-score"])
def test_a_line_that_is_not_utf8_is_one_error_line_naming_file_and_line(tiny, broken, tmp_path, entry):
    model, bad, bad_sft = str(tiny / "model"), str(broken / "bad_utf8.jsonl"), str(broken / "bad_utf8_sft.jsonl")
    args = {"train_sft": ["train_sft.py", "--model", model, "--data", bad_sft],
            "train_grpo": ["train_grpo.py", "--model", model, "--data", bad, *SMALL],
            "evaluate": ["evaluate.py", "--model", model, "--data", bad],
            "evaluate-score": ["evaluate.py", "--score", bad]}[entry]
    r = run_cli([*args, "--out", str(tmp_path / "out")])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = _error_lines(r.stderr)
    where = bad_sft if entry == "train_sft" else bad
    assert len(lines) == 1 and lines[0].startswith(f"error: {where}:3: not valid UTF-8 (byte 0x"), lines


def test_json_nested_too_deeply_names_file_and_line(tmp_path):
    p = tmp_path / "deep.jsonl"
    p.write_text('{"lang": "fr", "prompt": "p", "answer": "1"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError, match=rf"{p}:2: JSON nested too deeply"):
        read_jsonl(str(p))


def test_empty_or_missing_tokenizer_is_named(tiny, tmp_path):
    from adamame.chat import load_tokenizer

    shutil.copytree(tiny / "model", tmp_path / "m")
    (tmp_path / "m" / "tokenizer.json").write_text("")
    with pytest.raises(ValueError, match=r"tokenizer.json: empty file"):
        load_tokenizer(str(tmp_path / "m"))
    (tmp_path / "m" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'm'}: the tokenizer cannot be read"):
        load_tokenizer(str(tmp_path / "m"))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        os.remove(tmp_path / "m" / f)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path / "m"))


def test_a_lost_rank_stops_the_other_with_its_rank_and_step(tmp_path):
    """Two ranks started by hand (no launcher to clean up): rank 1 dies inside step 2's collective; rank 0 stops at
    once with an error naming itself and the step, instead of hanging."""
    script = tmp_path / "lose_rank.py"
    script.write_text(
        "import os, sys, torch\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "from adamame import dist\n"
        "rank, world, device = dist.setup()\n"
        "for step in (1, 2):\n"
        "    with dist.stop_if_a_rank_is_lost(rank, step):\n"
        "        if rank == 1 and step == 2:\n"
        "            os._exit(9)\n"
        "        torch.distributed.all_reduce(torch.ones(1))\n")
    env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29600 + os.getpid() % 300), "WORLD_SIZE": "2",
           "ADAMAME_DIST_TIMEOUT": "30"}
    procs = [subprocess.Popen([sys.executable, str(script)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    t0 = time.time()
    err0 = procs[0].communicate(timeout=60)[1]
    procs[1].wait(timeout=60)
    assert time.time() - t0 < 30  # it did not wait for the timeout
    assert "RankLost: rank 0, step 2: a collective failed" in err0, err0[-2000:]


@pytest.mark.parametrize("entry", ["train_sft", "train_grpo", "evaluate", "evaluate-score"])
def test_an_out_that_is_a_file_is_one_error_line(tiny, tmp_path, entry):
    model, gen = str(tiny / "model"), tmp_path / "gen.jsonl"
    gen.write_text('{"lang": "fr", "answer": "1", "candidates": ["a", "b", "c", "d"]}\n', encoding="utf-8")
    args = {"train_sft": ["train_sft.py", "--model", model, "--data", str(tiny / "sft.jsonl")],
            "train_grpo": ["train_grpo.py", "--model", model, "--data", str(tiny / "rl.jsonl"), *SMALL],
            "evaluate": ["evaluate.py", "--model", model, "--data", str(tiny / "rl.jsonl")],
            "evaluate-score": ["evaluate.py", "--score", str(gen)]}[entry]
    out = tmp_path / "a_file"
    out.write_text("keep me")
    r = run_cli([*args, "--out", str(out)])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert _error_lines(r.stderr) == [f"error: --out {out} is a file, not a folder"]
    assert out.read_text() == "keep me"


def test_under_torchrun_the_error_is_printed_once(tiny, tmp_path):
    out = tmp_path / "a_file"
    out.write_text("")
    r = run_cli(["train_grpo.py", "--model", str(tiny / "model"), "--data", str(tiny / "rl.jsonl"), *SMALL,
                 "--out", str(out)], nproc=2)
    assert r.returncode != 0
    assert _error_lines(r.stderr) == [f"error: --out {out} is a file, not a folder"], r.stderr[-3000:]


@pytest.mark.parametrize("entry,flag,value,want", [
    ("train_sft", "--batch-size", "0", "positive"), ("train_sft", "--warmup-ratio", "1.5", "in [0, 1]"),
    ("train_grpo", "--group-size", "0", "positive"), ("train_grpo", "--beta", "-1.0", "0 or more"),
    ("train_grpo", "--alpha-floor", "nan", "in [0, 1]"), ("evaluate", "--k", "0", "positive"),
    ("evaluate", "--top-p", "0.0", "in (0, 1]")])
def test_a_bad_flag_value_is_one_error_line_before_any_work(tmp_path, entry, flag, value, want):
    r = run_cli([f"{entry}.py", flag, value, "--out", str(tmp_path / "out")])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert _error_lines(r.stderr) == [f"error: {flag} must be {want}, got {value}"]
    assert not (tmp_path / "out").exists()


def test_malformed_json_is_reported_at_its_column(tmp_path):
    p = tmp_path / "cut.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"lang": "fr", "prompt": "p", "answer": "1"}\n{"lang": "fr", "answer": 1\n')
    with pytest.raises(DataError, match=rf"{p}:2: malformed JSON \(Expecting ',' delimiter at column 27\)"):
        read_jsonl(str(p))  # the line ends at column 26; a BOM on line 1 is no error
    p.write_bytes(b'{"lang": "fr",, "answer": 1}\r\n')
    with pytest.raises(DataError, match=rf"{p}:1: malformed JSON \(.* at column 15\)"):
        read_jsonl(str(p))


@pytest.mark.parametrize("local_rank,every_rank,printed", [("0", False, True), ("1", False, False), ("1", True, True)])
def test_exit_with_prints_once_per_node_unless_the_error_is_the_ranks_own(local_rank, every_rank, printed):
    """A node's first rank prints an error every rank of the node shares; a lost peer (every_rank) prints everywhere,
    since rank 0 may be the one that was lost."""
    code = f"from adamame.cli import exit_with; exit_with('error: boom', 2, every_rank={every_rank})"
    env = {**_env(), "RANK": "5", "LOCAL_RANK": local_rank}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and (r.stderr.strip() == "error: boom") == printed, r.stderr
