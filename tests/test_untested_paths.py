"""The paths no other test varied (issue: tests that catch the silent bugs). Each test here was checked to fail with
the bug it guards planted in a copy of the code (named in its docstring), and to pass without it."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import run_cli, save_tiny_hf, save_tiny_tokenizer, write_rl_jsonl

SMALL = ["--mini-batch-prompts", "4", "--group-size", "4", "--max-response-tokens", "8", "--lora-rank", "4",
         "--beta", "0.01", "--max-prompt-tokens", "400", "--log-rollouts", "100", "--temperature", "1.0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    save_tiny_hf(root / "model", "qwen3", num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    save_tiny_tokenizer(root / "model", vocab_size=300)
    write_rl_jsonl(root / "rl.jsonl", n=20)
    return root


def _grpo(tiny, out, *extra):
    r = run_cli(["train_grpo.py", "--model", str(tiny / "model"), "--data", str(tiny / "rl.jsonl"), "--out", str(out),
                 *SMALL, *extra])
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    rolls = [json.loads(line) for line in open(out / "rollouts.jsonl")]
    return rows, rolls


def test_t_follows_epochs_when_no_max_steps_is_given(tiny, tmp_path):
    """T = epochs x steps per epoch (20 prompts, 4 a step: 5 per epoch; 2 epochs: 10), every step logged and alpha(t)
    on that T. Planted: T = one epoch's steps (the run stops after 5, alpha reaches 1 at step 5)."""
    rows, _ = _grpo(tiny, tmp_path / "ep", "--batch-prompts", "4", "--epochs", "2")
    T = 10
    assert [r["step"] for r in rows] == list(range(1, T + 1))
    for r in rows:
        t = r["step"] - 1
        assert r["alignment_factor"] == pytest.approx(max(0.5 * (1 - math.cos(math.pi * t / T)), 0.1))


def test_each_step_draws_new_rollouts_and_the_seed_repeats_them(tiny, tmp_path):
    """One prompt, so both steps put it at the same place in their batch, and lr 1e-12 (the policy does not change,
    below float32 resolution): only the step's randomness can make step 2's rollouts differ from step 1's; the same
    seed draws them again. Planted: a rollout seed without the step (the two steps then draw the same rollouts)."""
    data = tmp_path / "one.jsonl"
    data.write_text((tiny / "rl.jsonl").read_text().splitlines()[0] + "\n", encoding="utf-8")
    args = ["train_grpo.py", "--model", str(tiny / "model"), "--data", str(data), *SMALL, "--batch-prompts", "1",
            "--mini-batch-prompts", "1", "--max-steps", "2", "--lr", "1e-12"]
    for out in ("a", "b"):
        r = run_cli([*args, "--out", str(tmp_path / out)])
        assert r.returncode == 0, r.stderr[-3000:]
    a, b = ([json.loads(line) for line in open(tmp_path / out / "rollouts.jsonl")] for out in ("a", "b"))
    step1, step2 = ([r["response"] for r in a if r["step"] == s] for s in (1, 2))
    assert len(step1) == len(step2) == 4 and step1 != step2
    assert [(r["step"], r["response"]) for r in a] == [(r["step"], r["response"]) for r in b]


def test_the_reference_is_scored_at_the_sampling_temperature(tiny, tmp_path):
    """At the paper's temperature 0.8, step 1's KL is 0 (the adapters start at zero: pi = pi_ref, both at 0.8) and
    the loss is the hand value. Planted: pi_ref's log-probs at temperature 1 (the KL is then far from 0)."""
    rows, rolls = _grpo(tiny, tmp_path / "t08", "--batch-prompts", "4", "--max-steps", "1", "--temperature", "0.8")
    first = [r for r in rolls if r["step"] == 1]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    want = -sum(r["advantage"] * r["tokens"] for r in first) / (len(first) * 8)
    assert rows[0]["losses"][0] == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("format_reward", [False, True])
def test_the_format_reward_enters_the_scores(format_reward):
    """score_phase, the trainer's own: with --format-reward, s_i = (correct + format_ok) (1 + B alpha match). Planted:
    the flag ignored (r_i = correct)."""
    import train_grpo
    from adamame.data import Question
    from adamame.language import get_detector
    from adamame.rollout import Rollout

    well_formed = "Je compte trois et quatre, ce qui fait sept.\n</think>\nLa réponse est \\boxed{7}."
    bare = "Je compte trois et quatre, ce qui fait sept. La réponse est \\boxed{7}."
    wrong = "Je compte trois et quatre, ce qui fait huit.\n</think>\nLa réponse est \\boxed{8}."
    texts = [well_formed, bare, wrong, well_formed]
    rolls = [Rollout(0, [1], [1, 2], t, "stop", None, t, "<|im_start|>assistant\n<think>\n") for t in texts]
    args = SimpleNamespace(lang_mode="prefix", verifier="builtin", format_reward=format_reward, reward="adamame",
                           bonus=2.0, lam=1.0, alpha_floor=0.1)
    run = SimpleNamespace(args=args, detector=get_detector(), T=90)
    batch = SimpleNamespace(rolls=rolls, qs=[Question("q", "fr", "Combien font 3 et 4 ?", "7")], step=45)
    sc = train_grpo.score_phase(run, batch)
    alpha = 0.5  # alpha(45 of 90)
    fmt = [1.0, 0.0, 1.0, 1.0] if format_reward else [0.0] * 4
    want = [(c + f) * (1 + 2.0 * alpha * (lang == "fr")) for c, f, lang in zip([1, 1, 0, 1], fmt, sc.langs)]
    assert sc.langs == ["fr"] * 4 and list(sc.shaped) == pytest.approx(want) and sc.alpha == pytest.approx(alpha)


def test_clip_fraction_by_hand():
    """Clipped: ratio above 1 + eps with A > 0, or below 1 - eps with A < 0; the other two sides are not. Six valid
    tokens, three clipped: 1/2 (with the sides swapped, 1/6). Planted: the sides swapped."""
    from adamame.grpo_kernels import policy_loss

    ratios = torch.tensor([[1.5, 1.5, 0.5, 1.0], [0.5, 1.0, 1.1, 9.0]])  # the last tokens are masked out
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0])  # row 0: both 1.5 clipped, 0.5 not; row 1: 0.5 clipped, 1.0 and 1.1 not
    _, stats = policy_loss(torch.zeros(2, 4), adv, mask, old_logprobs=-ratios.log(), beta=0)
    assert stats["clip_frac"].item() == pytest.approx(3 / 6)


def test_the_sft_export_merges_lora_with_alpha_over_r(tmp_path):
    """final/ = W + (alpha / r) B A for the trained A, B of the last checkpoint, computed by hand (r 4, alpha 8: 2).
    Planted: the merge at scale 1 (the released merge script's, a half update)."""
    from safetensors.torch import load_file

    from tests.helpers import tiny_project

    root = tiny_project(tmp_path)
    r = run_cli(["train_sft.py", "--model", str(root / "model"), "--data", str(root / "sft.jsonl"), "--out",
                 str(root / "sft"), "--max-steps", "2", "--lora-rank", "4", "--lora-alpha", "8", "--batch-size", "4",
                 "--save-every", "1", "--lr", "1e-2"])
    assert r.returncode == 0, r.stderr[-3000:]
    trained = torch.load(root / "sft" / "checkpoint.pt", weights_only=False)["model"]
    base, final = load_file(str(root / "model" / "model.safetensors")), load_file(str(root / "sft" / "final" /
                                                                                     "model.safetensors"))
    names = [n[:-len(".lora_A")] for n in trained if n.endswith(".lora_A")]
    assert names
    for n in names:
        delta = 2.0 * trained[n + ".lora_B"].float() @ trained[n + ".lora_A"].float()
        assert delta.abs().max() > 1e-4  # the adapters moved
        torch.testing.assert_close(final[n + ".weight"].float(), base[n + ".weight"].float() + delta,
                                   rtol=1e-5, atol=1e-6)


def test_sft_resume_with_lora_dropout_continues_exactly(tmp_path):
    """Dropout draws from the global generator on the training path, so a resume must restore its state: the resumed
    run's losses equal the uninterrupted one's. Planted: the checkpoint's RNG state not restored."""
    from tests.helpers import tiny_project

    root = tiny_project(tmp_path)
    args = ["train_sft.py", "--model", str(root / "model"), "--data", str(root / "sft.jsonl"), "--max-steps", "4",
            "--save-every", "2", "--lora-rank", "4", "--lora-dropout", "0.1", "--batch-size", "4", "--lr", "1e-2"]

    def rows(out, *extra):
        r = run_cli([*args, "--out", str(tmp_path / out), *extra])
        assert r.returncode == 0, r.stderr[-3000:]
        return [json.loads(line) for line in open(tmp_path / out / "metrics.jsonl")]

    full = rows("full")
    assert len(rows("part", "--stop-after", "2")) == 2
    resumed = rows("part", "--resume")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_the_plans_weights_rows_are_the_bytes_after_an_optimizer_step(lora_rank):
    """After one AdamW step (the trainers' optimizer) the trainable parameters, their gradients and the two moments,
    and the frozen base of a LoRA run, hold exactly the bytes the plan's weights rows count (one process). Planted: the
    AdamW moments left out of the plan (a fit promised that runs out of memory)."""
    from adamame.lora import apply_lora
    from adamame.memory import parameter_counts, persistent_bytes
    from adamame.model import ModelConfig, Transformer

    cfg = ModelConfig.from_dict(dict(model_type="qwen3", vocab_size=97, hidden_size=48, intermediate_size=80,
                                     num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, head_dim=8))
    torch.manual_seed(0)
    model = Transformer(cfg)
    if lora_rank:
        apply_lora(model, lora_rank, 2 * lora_rank)
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    model(torch.randint(0, 97, (2, 5))).float().square().mean().backward()
    opt.step()

    def nbytes(ts):
        return sum(t.numel() * t.element_size() for t in ts)

    moments = [v for st in opt.state.values() for k, v in st.items() if k in ("exp_avg", "exp_avg_sq")]
    trainable = nbytes(params) + nbytes(p.grad for p in params) + nbytes(moments)
    frozen = nbytes(p for p in model.parameters() if not p.requires_grad)
    rows = persistent_bytes(parameter_counts(cfg, lora_rank), 1, lora_rank, reference_copy=False,
                            frozen_dtype=torch.float32)
    assert len(moments) == 2 * len(params)
    if lora_rank:
        assert [nb for _, nb in rows] == [frozen, trainable]
    else:
        assert frozen == 0 and sum(nb for _, nb in rows) == trainable
