"""The memory plan against the tensors the code really allocates, and the plans of the paper's two models."""

import os

import pytest
import torch

from adamame.dist import rollout_copy
from adamame.generate import generate
from adamame.lora import apply_lora
from adamame.memory import (GiB, checkpointed_layer_bytes, grpo_plan, layer_activation_bytes, logits_tensor_bytes,
                            parameter_counts)
from adamame.hf import load_model
from adamame.model import ModelConfig, PagedKVCache, Transformer
from tests.helpers import run_cli, save_tiny_hf

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _cfg(model_type="qwen3", **extra):
    d = dict(model_type=model_type, vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
             num_attention_heads=6, num_key_value_heads=2, head_dim=8)
    return ModelConfig.from_dict({**d, **extra})


def _saved_bytes_per_token(layer, model, T, dtype):
    """Bytes of the distinct storages autograd saves in one decoder layer's forward, per token. The layer's input
    counts (in float32 the first norm saves it; in a model it is the previous layer's output, kept for this layer
    alone); the rotary tables (shared by all layers) and the parameters do not."""
    x = torch.randn(1, T, model.config.hidden_size, dtype=dtype, requires_grad=True)
    cos, sin = model.rope(torch.arange(T)[None], dtype)
    skip = {t.untyped_storage().data_ptr() for t in [cos, sin, *model.parameters()]}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, cos, sin, None)
    return sum(seen.values()) / T


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
@pytest.mark.parametrize("lora_rank", [0, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fused", [False, True], ids=["pytorch", "kernels"])
def test_activation_bytes_per_layer_are_what_autograd_saves(monkeypatch, model_type, lora_rank, dtype, fused):
    """The layer in PyTorch ops, and with the layer kernels (ADAMAME_KERNELS=triton, the interpreter), as on CUDA."""
    monkeypatch.setenv("ADAMAME_KERNELS", "triton" if fused else "torch")
    torch.manual_seed(0)
    cfg = _cfg(model_type)
    model = Transformer(cfg).to(dtype)
    if lora_rank:
        apply_lora(model, lora_rank, 2 * lora_rank)
    else:
        model.requires_grad_(False)  # frozen weights save no inputs; x still needs its gradient
    measured = _saved_bytes_per_token(model.model.layers[0], model, 16, dtype)
    assert measured == layer_activation_bytes(cfg, lora_rank, dtype, fused)
    from adamame.dist import _checkpoint_forward

    _checkpoint_forward(model.model.layers[1])  # under checkpointing a layer keeps only its input
    assert _saved_bytes_per_token(model.model.layers[1], model, 16, dtype) == checkpointed_layer_bytes(cfg, dtype)


def test_plan_sizes_are_the_bytes_really_allocated(tmp_path):
    save_tiny_hf(tmp_path, "qwen3", num_attention_heads=4, num_key_value_heads=2)
    model = load_model(str(tmp_path))
    apply_lora(model, 4, 8)
    G, prompt_len, new, tokens = 4, 9, 7, 30
    plan = grpo_plan(model.config, world=1, total=64 * GiB, device="cpu", prompts_per_step=3, group_size=G,
                     max_prompt_tokens=prompt_len, max_response_tokens=new, micro_batch_tokens=tokens, lora_rank=4,
                     beta=0.001)
    assert plan.fits and plan.rollout_rows == 3 * G
    # the rollout copy: every parameter once, in the compute dtype (float32 on CPU)
    copy = rollout_copy(model)
    assert plan.sizes["rollout_copy"] == sum(p.numel() * p.element_size() for p in copy.parameters())
    # the KV cache generate allocates for 3 prompts of the longest allowed length
    sizes = []
    real_allocate = PagedKVCache.allocate.__func__

    def spy(cls, *a, **k):
        cache = real_allocate(cls, *a, **k)
        sizes.append(sum(t.numel() * t.element_size() for t in cache.k + cache.v))
        return cache

    PagedKVCache.allocate = classmethod(spy)
    try:
        generate(copy, [[5] * prompt_len] * 3, max_new_tokens=new, n=G, temperature=1.0, seed=0,
                 max_rows=plan.rollout_rows)
    finally:
        PagedKVCache.allocate = classmethod(real_allocate)
    assert max(sizes) == plan.sizes["kv_cache"]
    # the logits: the plan's figure is the [tokens, V] tensor the model returns for `tokens` selected positions...
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[0, 2:17], mask[1, 5:20] = True, True
    with torch.no_grad():
        logits = copy(torch.randint(0, 97, (2, 20)), logits_at=mask)
    assert plan.sizes["logits"] == logits.numel() * logits.element_size() == logits_tensor_bytes(30, 97, torch.float32)
    # ... and no micro-batch the trainer forms from rollouts filling the budget has more: it is the worst case
    from adamame.rollout import Rollout
    from train_grpo import sequence_logprobs

    seen = []
    hook = copy.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.numel() * o.element_size()))
    g = torch.Generator().manual_seed(0)
    rolls = [Rollout(0, [3], torch.randint(1, 97, (int(k),), generator=g).tolist(), "", "length", None)
             for k in (14, 14, 9, 5, 3, 1)]
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        sequence_logprobs(copy, rolls, "cpu", 1.0, budget=tokens)
    finally:
        torch.distributed.destroy_process_group()
    hook.remove()
    assert len(seen) >= 2 and max(seen) <= plan.sizes["logits"]


def test_gathered_parameters_are_what_fsdp_unshards(tmp_path):
    """The parameters a forward under FSDP2 holds unsharded, measured inside it (a 1-rank group): the root's while
    the lm_head runs, one layer's while it runs. The plan's gathered row is built from exactly these counts."""
    from adamame import dist

    save_tiny_hf(tmp_path, "qwen2", num_attention_heads=4, num_key_value_heads=2)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        model = load_model(str(tmp_path))
        apply_lora(model, 4, 8)
        counts = parameter_counts(model.config, 4)
        dist.shard_model(model, torch.device("cpu"))
        seen = {}

        def nbytes(module):
            return sum(p.numel() * p.element_size() for p in module.parameters())

        def on_layer(m, args):
            seen["layer"] = nbytes(m)

        def on_head(m, args):
            seen["root"] = nbytes(m) + nbytes(model.model.embed_tokens) + nbytes(model.model.norm)

        model.model.layers[0].register_forward_pre_hook(on_layer)
        model.lm_head.register_forward_pre_hook(on_head)
        with torch.no_grad():
            model(torch.randint(0, 97, (1, 5)))
    finally:
        torch.distributed.destroy_process_group()
    assert seen["layer"] == 4 * (counts["layer"] + counts["lora_layer"])
    assert seen["root"] == 4 * counts["root"]


@pytest.mark.parametrize("name,limit,ckpt", [("deepseek-r1-distill-qwen-1.5b", 76, "off"), ("qwen3-4b", 76, "on")])
def test_the_papers_models_fit_eight_80_gib_gpus_at_the_papers_settings(name, limit, ckpt):
    r = run_cli(["train_grpo.py", "--plan", "--model", os.path.join(FIXTURES, name), "--nproc-per-node", "8",
                 "--gpu-memory-gib", "80"])
    assert r.returncode == 0, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("plan: peak ") and last.endswith(" GiB per GPU of 80.0 GiB: fits"), last
    assert float(last.split()[2]) <= limit
    # 32k tokens: with the layer kernels the 1.5B's activations fit without checkpointing (65 GiB; PyTorch's layers
    # would save 87), the 4B's do not (134 GiB)
    assert f"checkpointing {ckpt}" in r.stdout
    r = run_cli(["train_sft.py", "--plan", "--model", os.path.join(FIXTURES, name), "--nproc-per-node", "8",
                 "--gpu-memory-gib", "80"])
    assert r.returncode == 0 and r.stdout.strip().endswith(": fits"), r.stdout + r.stderr


def test_a_plan_that_does_not_fit_names_the_knob():
    model = os.path.join(FIXTURES, "deepseek-r1-distill-qwen-1.5b")
    r = run_cli(["train_grpo.py", "--plan", "--model", model, "--nproc-per-node", "1", "--gpu-memory-gib", "24",
                 "--micro-batch-tokens", "131072"])
    assert r.returncode == 3
    last = r.stdout.strip().splitlines()[-1]
    assert "does not fit (try --micro-batch-tokens " in last, last
    knob = int(last.split("--micro-batch-tokens ")[1].rstrip(")"))
    r = run_cli(["train_grpo.py", "--plan", "--model", model, "--nproc-per-node", "1", "--gpu-memory-gib", "24",
                 "--micro-batch-tokens", str(knob)])
    assert r.returncode == 0, r.stdout  # the advice is right: that value fits


def test_a_run_whose_plan_does_not_fit_stops_before_loading_weights(tmp_path):
    from tests.helpers import save_tiny_tokenizer, write_rl_jsonl

    save_tiny_hf(tmp_path / "model", "qwen3", num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    save_tiny_tokenizer(tmp_path / "model", vocab_size=300)
    os.remove(tmp_path / "model" / "model.safetensors")  # loading weights would fail with exit status 2
    write_rl_jsonl(tmp_path / "rl.jsonl")
    r = run_cli(["train_grpo.py", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "rl.jsonl"),
                 "--out", str(tmp_path / "out"), "--batch-prompts", "4", "--mini-batch-prompts", "4",
                 "--max-response-tokens", str(2**40)])
    assert r.returncode == 3, r.stderr[-2000:]
    assert "does not fit (try a smaller --max-response-tokens" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_micro_batch_is_planned_at_no_more_tokens_than_the_step_holds():
    """2 prompts x 2 rollouts of at most 512 + 256 tokens hold 3,072 tokens: the plan must not budget a 32k-token
    micro-batch the run never forms (it did, and refused this run on a 24 GiB machine)."""
    from adamame.memory import grpo_plan
    from adamame.hf import read_config

    cfg = read_config(os.path.join(FIXTURES, "deepseek-r1-distill-qwen-1.5b"))
    kw = dict(world=1, total=24 * GiB, device="cpu", group_size=2, max_prompt_tokens=512, max_response_tokens=256,
              micro_batch_tokens=32768, lora_rank=32, beta=0.001)
    small = grpo_plan(cfg, prompts_per_step=2, **kw)
    assert any("activations, 3072 tokens" in what for _, what, _ in small.items)
    assert small.fits, small
    big = grpo_plan(cfg, prompts_per_step=64, **kw)  # 128 rows x 768 tokens: the 32k micro-batch is formed
    assert any("activations, 32768 tokens" in what for _, what, _ in big.items)


def test_the_rollouts_gpu_only_terms_are_what_the_engine_allocates():
    """The sampler's [rows, V] buffers fit its term with room for the float64 copy CUDA's cumsum makes, and the plan's
    usable GPU memory is the card less the stated reserve and 3%."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from adamame.generate import sample_next
    from adamame.memory import RESERVE_GIB, sampler_bytes, usable_bytes

    rows = 16

    class Outputs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.out = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() == rows * 97 and func._schema.name != "aten::view":
                self.out.append((func._schema.name, out.dtype, out.numel() * out.element_size()))
            return out

    logits, u, rec = torch.randn(rows, 97), torch.rand(rows, dtype=torch.float64), Outputs()
    with rec:
        sample_next(logits, 0.8, uniforms=u)
    assert ("aten::cumsum", torch.float64, rows * 97 * 8) in rec.out
    # even if every buffer stayed alive at once, with room for the float64 copy of the probabilities that CUDA's
    # cumsum(dtype=float64) makes first (the CPU kernel casts as it goes: only the GPU check can see that one)
    assert sum(nb for _, _, nb in rec.out) + rows * 97 * 8 <= sampler_bytes(rows, 97)
    assert usable_bytes("cuda", 80 * GiB) == int(0.97 * 80 * GiB - RESERVE_GIB * GiB)


def test_a_lora_plan_counts_the_frozen_base_as_stored_and_never_advises_lora():
    """Qwen3-4B (bf16 checkpoint) with LoRA on one 24 GiB card: the frozen base at 2 bytes a parameter (not a 4-byte
    master), and advice without LoRA; without LoRA, a base too big for the card names LoRA."""
    cfg = ModelConfig.from_dict(__import__("json").load(open(os.path.join(FIXTURES, "qwen3-4b", "config.json"))))
    kw = dict(world=1, total=24 * GiB, device="cuda", prompts_per_step=512, group_size=8, max_prompt_tokens=512,
              max_response_tokens=4096, micro_batch_tokens=32768, beta=0.001)
    plan = grpo_plan(cfg, lora_rank=32, **kw)
    (what, nbytes), = [(w, b) for phase, w, b in plan.items if w.startswith("frozen base")]
    assert "bfloat16" in what and nbytes == 2 * parameter_counts(cfg)["total"]
    assert not plan.fits and "LoRA" not in plan.advice and plan.advice.startswith("--micro-batch-tokens")
    full = grpo_plan(cfg, lora_rank=0, **{**kw, "total": 16 * GiB})
    assert not full.fits and "LoRA (--lora-rank)" in full.advice
    fp32 = ModelConfig.from_dict({**cfg.raw, "torch_dtype": "float32"})  # not stored in bf16: a float32 copy is kept
    (nbytes,), = {(b,) for phase, w, b in grpo_plan(fp32, lora_rank=32, **kw).items if w.startswith("frozen base")}
    assert nbytes == 4 * parameter_counts(cfg)["total"]


def test_the_frozen_base_is_held_as_stored_and_computes_the_same(tmp_path, monkeypatch):
    """bf16 compute on the CPU (the GPU's mixed precision): a LoRA model from a bf16 checkpoint keeps its frozen
    weights in bf16 (the adapters float32), and its forward and the adapters' gradients equal those of the same model
    held in float32 masters (FSDP casts those to the same bf16 values), bit for bit."""
    from adamame import dist
    from adamame.hf import save_model

    monkeypatch.setenv("ADAMAME_COMPUTE_DTYPE", "bfloat16")
    save_tiny_hf(tmp_path / "f32", "qwen3", num_attention_heads=4, num_key_value_heads=2)
    save_model(load_model(str(tmp_path / "f32")), str(tmp_path / "bf16"), dtype=torch.bfloat16)
    ids = torch.randint(0, 97, (2, 7))
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        out = {}
        for name in ("bf16", "f32"):
            model = load_model(str(tmp_path / "bf16"))
            if name == "f32":
                model.config.raw["torch_dtype"] = "float32"  # the same bf16 values, held as float32 masters
            torch.manual_seed(0)
            apply_lora(model, 4, 8)
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n.endswith("lora_B"):
                        p.normal_()
            dist.shard_model(model, torch.device("cpu"))
            held = {n: p.dtype for n, p in model.named_parameters()}
            logits = model(ids)
            logits.float().square().mean().backward()
            out[name] = (held, logits.detach(), {n: p.grad.full_tensor() for n, p in model.named_parameters()
                                                  if p.requires_grad})
    finally:
        torch.distributed.destroy_process_group()
    held = out["bf16"][0]
    assert {held[n] for n in held if "lora_" in n} == {torch.float32}
    assert {held[n] for n in held if "lora_" not in n} == {torch.bfloat16}
    assert set(out["f32"][0].values()) == {torch.float32}
    assert torch.equal(out["bf16"][1], out["f32"][1])
    for n, g in out["bf16"][2].items():
        assert torch.equal(g, out["f32"][2][n]), n


def test_the_plan_in_memory_py_is_the_commands_output():
    """adamame/memory.py's docstring shows `--plan` for Qwen3-4B at the paper's settings: exactly what the command
    prints today (a change to the plan shows here, and the docstring is re-rendered from the run)."""
    import subprocess
    import sys

    from adamame import memory

    cmd = "python train_grpo.py --plan --model tests/fixtures/qwen3-4b --nproc-per-node 8 --gpu-memory-gib 80"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, *cmd.split()[1:]], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = memory.__doc__.split(f"$ {cmd}\n", 1)[1].split("\n\n", 1)[0]
    assert [line[4:] for line in doc.splitlines()] == r.stdout.rstrip().splitlines()
