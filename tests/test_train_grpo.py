import json
import math
import os

import pytest

from adamame.data import DataError, balanced_batches, read_questions
from tests.helpers import run_cli, save_tiny_hf, save_tiny_tokenizer, write_rl_jsonl

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    save_tiny_hf(root / "model", "qwen3", num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    save_tiny_tokenizer(root / "model", vocab_size=300)
    write_rl_jsonl(root / "rl.jsonl", n=20, long_prompts=2)
    return root


SMALL = ["--batch-prompts", "4", "--mini-batch-prompts", "2", "--group-size", "4", "--max-response-tokens", "8",
         "--lora-rank", "4", "--beta", "0.01", "--max-prompt-tokens", "400", "--log-rollouts", "100",
         "--temperature", "1.0"]


def _grpo(tiny, out, *extra, nproc=1):
    r = run_cli(["train_grpo.py", "--model", str(tiny / "model"), "--data", str(tiny / "rl.jsonl"), "--out", str(out),
                 *SMALL, *extra], nproc=nproc)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return rows, r


def test_two_rank_run_completes_and_logs_every_field(tiny, tmp_path):
    rows, r = _grpo(tiny, tmp_path / "two", "--max-steps", "3", nproc=2)
    assert "dropped 2 prompts longer than 400 tokens" in r.stdout
    assert [row["step"] for row in rows] == [1, 2, 3]
    for key in ("step", "reward", "accuracy", "lang_match", "alignment_factor", "kl", "clip_frac", "logprob_diff",
                "response_tokens", "time_rollout", "time_update", "lang_match_by_lang"):
        assert key in rows[0], key
    assert rows[0]["logprob_diff"] < 1e-4  # sampler and trainer agree (same code, same dtype)
    assert os.path.exists(tmp_path / "two" / "final" / "model.safetensors")


def test_one_step_on_two_ranks_equals_one_process(tiny, tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    r1 = run_cli([os.path.join(SCRIPTS, "grpo_step.py"), str(one), str(tiny / "model")])
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = run_cli([os.path.join(SCRIPTS, "grpo_step.py"), str(two), str(tiny / "model")], nproc=2)
    assert r2.returncode == 0, r2.stderr[-2000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert len(a["losses"]) == 4  # 2 PPO epochs x 2 mini-batches
    assert a["losses"] == pytest.approx(b["losses"], abs=1e-6)
    assert a["grad_norms"] == pytest.approx(b["grad_norms"], rel=1e-5)
    diff = max(abs(x - y) for k in a["weights"] for x, y in zip(a["weights"][k], b["weights"][k]))
    assert diff <= 1e-6  # SGD with lr 1: equal weights = equal gradients


def test_micro_batches_and_chunked_logits_leave_the_update_unchanged(tiny, tmp_path):
    """Length-sorted micro-batches of 20 tokens, one micro-batch for everything, and the chunked hidden-state
    log-prob path (3 tokens at a time) must give the same update (float32)."""
    runs = {}
    for name, extra in (("sorted", ["20"]), ("whole", ["100000"]), ("chunked", ["20", "3"])):
        out = tmp_path / f"{name}.json"
        r = run_cli([os.path.join(SCRIPTS, "grpo_step.py"), str(out), str(tiny / "model"), *extra])
        assert r.returncode == 0, r.stderr[-2000:]
        runs[name] = json.loads(out.read_text())
    a = runs["whole"]
    for b in (runs["sorted"], runs["chunked"]):
        assert a["losses"] == pytest.approx(b["losses"], abs=1e-6)
        diff = max(abs(x - y) for k in a["weights"] for x, y in zip(a["weights"][k], b["weights"][k]))
        assert diff <= 1e-6


def test_fused_loss_kernel_gives_the_update_of_the_reference_on_two_ranks(tiny, tmp_path):
    """The update with the fused GRPO loss kernel (ADAMAME_KERNELS=triton, the interpreter: the log-prob kernel too)
    on 2 ranks in micro-batches, full and chunked logits, against one process on the PyTorch reference path."""
    runs = {}
    for name, extra, nproc, kernels in (("ref", ["100000"], 1, "torch"), ("fused", ["20"], 2, "triton"),
                                        ("fused_chunked", ["20", "3"], 2, "triton")):
        out = tmp_path / f"{name}.json"
        r = run_cli([os.path.join(SCRIPTS, "grpo_step.py"), str(out), str(tiny / "model"), *extra], nproc=nproc,
                    env={"ADAMAME_KERNELS": kernels, "TRITON_INTERPRET": "1"})
        assert r.returncode == 0, r.stderr[-2000:]
        runs[name] = json.loads(out.read_text())
    a = runs["ref"]
    for b in (runs["fused"], runs["fused_chunked"]):
        assert a["losses"] == pytest.approx(b["losses"], abs=1e-6)
        assert a["grad_norms"] == pytest.approx(b["grad_norms"], rel=1e-5)
        diff = max(abs(x - y) for k in a["weights"] for x, y in zip(a["weights"][k], b["weights"][k]))
        assert diff <= 1e-6


@pytest.mark.parametrize("nproc", [1, 2])
def test_first_mini_batch_pi_old_from_the_update_forward_gives_the_same_update(tiny, tmp_path, nproc):
    """pi_old of the first mini-batch taken from the update's own forward (detached) instead of a separate pass: the
    same losses, gradients and weights over 2 PPO epochs x 2 mini-batches (epoch 2 reads the written-back values)."""
    runs = {}
    for mode in ("recompute", "own"):
        out = tmp_path / f"{mode}.json"
        r = run_cli([os.path.join(SCRIPTS, "grpo_step.py"), str(out), str(tiny / "model"), "--old", mode], nproc=nproc)
        assert r.returncode == 0, r.stderr[-2000:]
        runs[mode] = json.loads(out.read_text())
    a, b = runs["recompute"], runs["own"]
    assert len(a["losses"]) == 4 and a["losses"] == pytest.approx(b["losses"], abs=1e-6)
    assert a["grad_norms"] == pytest.approx(b["grad_norms"], rel=1e-6)
    diff = max(abs(x - y) for k in a["weights"] for x, y in zip(a["weights"][k], b["weights"][k]))
    assert diff <= 1e-6 and any(abs(x) > 1e-3 for w in a["weights"].values() for x in w)
    # every rollout's pi_old, as logprob_diff and the rollout records read it after the update: the same numbers
    assert len(a["old"]) == len(b["old"]) > 0 and a["old"] == pytest.approx(b["old"], abs=1e-6)


def test_trivial_reward_is_learned_and_not_with_lr_zero(tiny):
    def rewards(lr):
        r = run_cli([os.path.join(SCRIPTS, "grpo_learn.py"), str(tiny / "model"), str(lr), "30"])
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    learned, frozen = rewards(1e-2), rewards(0.0)
    first, last = sum(learned[:5]) / 5, sum(learned[-5:]) / 5
    assert last > first + 0.3 and last > 0.8, learned
    assert abs(sum(frozen[-5:]) / 5 - sum(frozen[:5]) / 5) < 0.15 and max(frozen) < 0.6, frozen


def _advantage_by_hand(scores):
    n = len(scores)
    mean = sum(scores) / n
    if n == 1:
        return list(scores)
    if max(scores) == min(scores):
        return [0.0] * n
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
    return [(s - mean) / (sd + 1e-6) for s in scores]


def test_logged_step_matches_independent_recomputation(tiny, tmp_path):
    out = tmp_path / "log"
    rows, _ = _grpo(tiny, out, "--max-steps", "2", "--mini-batch-prompts", "4", "--reward", "adamame",
                    "--bonus", "2.0")
    rolls = [json.loads(line) for line in open(out / "rollouts.jsonl")]
    T = 2
    for step in (1, 2):
        mine = [r for r in rolls if r["step"] == step]
        assert len(mine) == 16  # 4 prompts x 4 rollouts, all logged
        t = step - 1
        alpha = max(0.5 * (1 - math.cos(math.pi * t / T)), 0.1)
        assert rows[step - 1]["alignment_factor"] == pytest.approx(alpha)
        groups = {}
        for r in mine:
            groups.setdefault(r["group"], []).append(r)
        for g in groups.values():
            s = [r["correct"] * (1 + 2.0 * alpha * (r["lang"] == r["query_lang"] != "unknown")) for r in g]
            assert [r["score"] for r in g] == pytest.approx(s)
            assert [r["advantage"] for r in g] == pytest.approx(_advantage_by_hand(s), abs=1e-9)
    # step 1: one mini-batch, the LoRA adapter starts at zero so pi = pi_ref (KL 0) and pi = pi_old (ratio 1):
    # Dr. GRPO loss = -(1/N) sum_i A_i |o_i| / L_max
    first = [r for r in rolls if r["step"] == 1]
    want = -sum(r["advantage"] * r["tokens"] for r in first) / (len(first) * 8)
    assert rows[0]["losses"][0] == pytest.approx(want, abs=1e-5)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)


def test_resume_reproduces_the_uninterrupted_logs(tiny, tmp_path):
    full, _ = _grpo(tiny, tmp_path / "full", "--max-steps", "4", "--save-every", "2")
    part, _ = _grpo(tiny, tmp_path / "part", "--max-steps", "4", "--save-every", "2", "--stop-after", "2")
    assert len(part) == 2
    resumed, r = _grpo(tiny, tmp_path / "part", "--max-steps", "4", "--save-every", "2", "--resume")
    assert "resumed" in r.stdout
    keys = ("reward", "accuracy", "lang_match", "alignment_factor", "loss", "kl", "response_tokens")
    for a, b in zip(full, resumed):
        assert a["step"] == b["step"]
        for k in keys:
            assert a[k] == pytest.approx(b[k], abs=1e-6), (a["step"], k)


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tiny, tmp_path):
    import torch

    out = tmp_path / "nan"
    _grpo(tiny, out, "--max-steps", "4", "--stop-after", "1", "--save-every", "1")
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    name = next(k for k in state["model"] if k.endswith("lora_B"))
    state["model"][name].fill_(float("nan"))  # weights that diverged: the next loss is NaN
    torch.save(state, out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    r = run_cli(["train_grpo.py", "--model", str(tiny / "model"), "--data", str(tiny / "rl.jsonl"), "--out", str(out),
                 *SMALL, "--max-steps", "4", "--save-every", "1", "--resume"])
    assert r.returncode == 2, r.stderr[-2000:]
    assert "step 2: loss is [nan" in r.stderr and "last good checkpoint" in r.stderr
    assert "Traceback" not in r.stderr
    assert (out / "checkpoint.pt").read_bytes() == before  # nothing was written over it


def test_batches_are_balanced_over_languages(tiny):
    qs = read_questions(str(tiny / "rl.jsonl"))
    for batch in balanced_batches(qs, 5, seed=0, epoch=0):
        assert sorted(qs[i].lang for i in batch) == ["fr", "ja", "ko", "pt", "th"]
    assert balanced_batches(qs, 5, 0, 0) == balanced_batches(qs, 5, 0, 0) != balanced_batches(qs, 5, 0, 1)


@pytest.mark.parametrize("content,match", [
    ('{"id": "a", "lang": "fr", "prompt": "p"}\n', r"rl.jsonl:1: missing field 'answer'"),
    ('{"id": "a", "lang": "zz", "prompt": "p", "answer": "1"}\n', r"rl.jsonl:1: field 'lang': unknown language"),
    ('{"id": "a", "lang": "fr", "prompt": "p", "answer": "1"}\nnot json\n', r"rl.jsonl:2: malformed JSON"),
])
def test_bad_rl_data_names_file_line_and_field(tmp_path, content, match):
    (tmp_path / "rl.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        read_questions(str(tmp_path / "rl.jsonl"))


def test_recomputed_old_logprobs_agree_with_the_sampler(tiny, tmp_path):
    rows, _ = _grpo(tiny, tmp_path / "re", "--max-steps", "1", "--old-logprobs", "recompute")
    assert rows[0]["logprob_diff"] < 1e-4 and rows[0]["ratio"] == pytest.approx(1.0, abs=1e-4)


def test_export_lora_scale_sets_the_merged_update(tiny, tmp_path):
    """final/ carries W + s B A: s = alpha / r by default, 1.0 with --export-lora-scale 1.0 (the released merge)."""
    import torch
    from safetensors.torch import load_file

    from adamame import dist
    from adamame.chat import load_tokenizer
    from adamame.checkpoint import export_hf
    from adamame.lora import apply_lora
    from adamame.hf import load_model

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        model = load_model(str(tiny / "model"))
        apply_lora(model, 4, 8)  # scale 2
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("lora_B"):
                    p.normal_()
        base = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("q_proj.weight")}
        dist.shard_model(model, torch.device("cpu"))
        tok = load_tokenizer(str(tiny / "model"))
        export_hf(model, tok, str(tmp_path / "train_scale"))
        export_hf(model, tok, str(tmp_path / "scale_1"), lora_scale=1.0)
    finally:
        torch.distributed.destroy_process_group()
    a, b = load_file(str(tmp_path / "train_scale" / "model.safetensors")), load_file(str(tmp_path / "scale_1" /
                                                                                          "model.safetensors"))
    for name, w in base.items():
        d2, d1 = a[name].float() - w, b[name].float() - w
        assert d1.abs().max() > 1e-3
        torch.testing.assert_close(d2, 2 * d1, rtol=1e-4, atol=1e-5)


def test_two_launchers_on_one_machine_equal_one_launcher_with_two_ranks(tiny, tmp_path):
    """Two torchrun launchers (--nnodes 2, one rank each, on 127.0.0.1): the same metrics and weights as one launcher
    with two ranks (a multi-node launch, with a file system both "nodes" see)."""
    import socket
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    from tests.helpers import cli_env

    extra = ["--max-steps", "2", "--reward", "binary-lang"]  # a random model answers nothing: the language term gives
    args = ["train_grpo.py", "--model", str(tiny / "model"), "--data", str(tiny / "rl.jsonl"), *SMALL, *extra]
    one, _ = _grpo(tiny, tmp_path / "one", *extra, nproc=2)  # advantages, so the update is not only the KL's
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env, root = cli_env()
    launchers = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(r),
                                   "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                                   *args, "--out", str(tmp_path / "two")], cwd=root, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=600) for p in launchers]
    assert all(p.returncode == 0 for p in launchers), [o[1][-2000:] for o in outs]
    two = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl")]

    def same(row):
        return {k: v for k, v in row.items() if not k.startswith("time") and k != "rollout_tokens_per_s"}

    assert [same(r) for r in one] == [same(r) for r in two] and any(r["loss"] != 0 for r in one)
    a, b = (load_file(str(tmp_path / d / "final" / "model.safetensors")) for d in ("one", "two"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_gather_only_the_trainable_parameters(tiny):
    """On 2 FSDP2 ranks: the trainable-only state dict equals the filtered full one, and the collectives it runs
    move only the trainable parameters (world x shard >= the parameter), not the whole model."""
    r = run_cli([os.path.join(SCRIPTS, "gather_trainable.py"), str(tiny / "model")], nproc=2)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["equal"]
    assert got["trainable"] <= got["new"] <= got["trainable"] + 64 * got["world"]  # shards pad to equal sizes
    assert got["old"] >= got["total"] > 5 * got["trainable"]


def test_prompts_in_a_language_outside_the_released_fourteen_extend_the_reward_identifier(tiny, tmp_path):
    """Russian prompts: the run says it adds ru to the reward's 14 languages, so a Russian rollout can be read as ru."""
    from adamame.data import localized_prompt

    data = tmp_path / "ru.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "lang": lang, "prompt": localized_prompt(lang, f"{i} + {i} ?"),
                                        "answer": str(2 * i)}, ensure_ascii=False) + "\n"
                            for i, lang in enumerate(["ru", "fr"] * 4)), encoding="utf-8")
    r = run_cli(["train_grpo.py", "--model", str(tiny / "model"), "--data", str(data), "--out", str(tmp_path / "o"),
                 *SMALL, "--max-steps", "1", "--save-every", "100"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "identifies among 14 languages without ru; this run's training prompts have them" in r.stdout
    assert "over fr ja ko th pt ar en es vi zh bn sw te de ru;" in r.stdout


def test_help_shows_every_default():
    """Each flag with a default shows it in --help, as the parser holds it (a flag without one explains itself)."""
    import re

    for script in ("train_grpo.py", "train_sft.py", "evaluate.py"):
        r = run_cli([script, "--help"])
        assert r.returncode == 0 and "paper: " not in r.stdout
        options = r.stdout.split("\noptions:\n", 1)[1]
        entries = {e.split()[0]: " ".join(e.split()) for e in re.split(r"\n  (?=--)", options) if e.strip()}
        paper = [] if script == "evaluate.py" else ["--model", "m", "--data", "d"]  # not the toy's own settings
        for name, value in vars(__import__(script[:-3]).parse_args(paper)).items():
            if value is not None and value is not False and name not in ("model", "data"):
                flag = "--" + name.replace("_", "-")
                assert f"(default: {value})" in entries[flag], (script, flag, entries[flag])
