"""Hub ids for --model / --tokenizer (resolved through the hub cache, offline here) and --report-to."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from adamame.report import Reporter, flatten, require_reporter
from tests.helpers import cli_env, run_cli, save_tiny_hf, save_tiny_tokenizer, write_rl_jsonl

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache(home, repo_id, src):
    """A hub cache (HF_HOME/hub) holding `src`'s files as the snapshot of repo_id, laid out as huggingface_hub does
    (models--org--name/refs/main, snapshots/<commit>/...)."""
    repo = os.path.join(home, "hub", "models--" + repo_id.replace("/", "--"))
    snap = os.path.join(repo, "snapshots", COMMIT)
    shutil.copytree(src, snap)
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(COMMIT)
    return snap


def test_a_cached_hub_id_resolves_offline_for_the_plan_and_a_missing_one_names_both_readings(tmp_path):
    home = tmp_path / "hf"
    _cache(str(home), "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", os.path.join(FIXTURES, "deepseek-r1-distill-qwen-1.5b"))
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    r = run_cli(["train_grpo.py", "--plan", "--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "--nproc-per-node",
                 "8", "--gpu-memory-gib", "80"], env=env)
    assert r.returncode == 0 and r.stdout.strip().endswith(": fits"), r.stdout + r.stderr
    r = run_cli(["train_grpo.py", "--plan", "--model", "acme/not-cached"], env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--model acme/not-cached: not a folder, and as a hub id neither in the cache" in r.stderr
    assert str(home / "hub") in r.stderr and "HF_HUB_OFFLINE is set" in r.stderr
    reason = r.stderr.strip().split("(HF_HUB_OFFLINE is set): ", 1)[1]  # the hub client's own reason, whole
    assert len(reason) > 200 and reason.endswith("."), reason
    r = run_cli(["train_grpo.py", "--plan", "--model", "./no/such/folder"], env=env)
    assert r.returncode == 2 and "no such folder" in r.stderr


def test_a_two_rank_run_reads_model_and_tokenizer_from_the_hub_cache(tmp_path):
    """torchrun, 2 ranks: the first local rank resolves the id, the other waits and reads the cache."""
    src = tmp_path / "src"
    save_tiny_hf(src, "qwen3", num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    save_tiny_tokenizer(src, vocab_size=300)
    home = tmp_path / "hf"
    _cache(str(home), "acme/tiny-qwen3", str(src))
    write_rl_jsonl(tmp_path / "rl.jsonl", n=8)
    r = run_cli(["train_grpo.py", "--model", "acme/tiny-qwen3", "--data", str(tmp_path / "rl.jsonl"), "--out",
                 str(tmp_path / "out"), "--batch-prompts", "2", "--mini-batch-prompts", "2", "--group-size", "2",
                 "--max-response-tokens", "4", "--lora-rank", "4", "--max-steps", "1"], nproc=2,
                env={"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.exists(tmp_path / "out" / "final" / "model.safetensors")


def test_flatten_keeps_every_scalar_and_names_nested_ones():
    row = {"step": 3, "loss": 0.5, "ok": True, "losses": [1.0, 2.0], "lang_match_by_lang": {"fr": 0.25, "ja": 1},
           "note": "text", "nan": float("nan")}
    assert flatten(row) == {"step": 3.0, "loss": 0.5, "ok": 1.0, "lang_match_by_lang/fr": 0.25,
                            "lang_match_by_lang/ja": 1.0}


def test_report_to_a_missing_package_is_one_clear_error(tmp_path):
    script = ("import sys; sys.modules['tensorboard'] = None; sys.modules['wandb'] = None\n"
              "from adamame.report import require_reporter\n"
              "for kind in ('tensorboard', 'wandb'):\n"
              "    try:\n        require_reporter(kind)\n    except ValueError as e:\n        print(e)\n")
    env, root = cli_env()
    r = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert "pip install tensorboard" in r.stdout and "pip install wandb" in r.stdout, r.stdout + r.stderr
    with pytest.raises(ValueError, match="choose from"):
        require_reporter("mlflow")
    require_reporter("none")
    Reporter("none", str(tmp_path), {}).log({"step": 1, "loss": 1.0})  # a no-op


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_receives_every_scalar_at_its_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rep = Reporter("tensorboard", str(tmp_path), {"lr": 1e-5})
    for step in (1, 2):
        rep.log({"step": step, "loss": 1.0 / step, "lang_match_by_lang": {"fr": 0.1 * step}})
    rep.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["lang_match_by_lang/fr", "loss"]
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 0.5)]


def test_plot_draws_one_png_for_several_runs(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.plot import main as plot

    for name, slope in (("a", 0.01), ("b", 0.02)):
        (tmp_path / name).mkdir()
        with open(tmp_path / name / "metrics.jsonl", "w") as f:
            for step in range(1, 6):
                f.write(json.dumps({"step": step, "reward": slope * step, "accuracy": 0.5, "lang_match": slope * step,
                                    "alignment_factor": 0.1, "kl": 0.0, "response_tokens": 20}) + "\n")
    out = plot([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c.png")])
    assert out == str(tmp_path / "c.png") and os.path.getsize(out) > 10_000
    with pytest.raises(SystemExit, match="metrics.jsonl: not found"):
        plot([str(tmp_path / "nothing")])
