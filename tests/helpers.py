"""Tiny random models and tokenizers with the real architectures, built offline for tests."""

import torch

TINY = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, max_position_embeddings=256)

# (name, model_type, extra config): odd head counts, GQA ratios 1, 2, 3 and 5, tied and untied, bias on and off
VARIANTS = [
    ("qwen2-gqa2-tied", "qwen2", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    ("qwen2-gqa3-untied", "qwen2", dict(num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=False)),
    ("qwen3-gqa3-headdim", "qwen3", dict(num_attention_heads=3, num_key_value_heads=1, head_dim=20,
                                         tie_word_embeddings=False)),
    ("qwen3-mha-tied-bias", "qwen3", dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                                          attention_bias=True)),
    ("llama-mha-odd", "llama", dict(num_attention_heads=3, num_key_value_heads=3, tie_word_embeddings=False)),
    ("llama-gqa5-bias-llama3", "llama", dict(
        hidden_size=40, num_attention_heads=5, num_key_value_heads=1, attention_bias=True, mlp_bias=True,
        tie_word_embeddings=True,
        rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=16))),
]


def hf_config(model_type, **extra):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    cls = {"qwen2": Qwen2Config, "qwen3": Qwen3Config, "llama": LlamaConfig}[model_type]
    return cls(**{**TINY, **extra})


def save_tiny_hf(path, model_type, seed=0, **extra):
    """Save a random transformers model to `path` and return it (float32, eval mode)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = hf_config(model_type, **extra)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    with torch.no_grad():  # norms start at 1 and biases at 0: randomise them so a missed one shows
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def left_padded_batch(lengths, vocab, seed=0):
    """input_ids, mask, positions for sequences of the given lengths, left-padded to the longest."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        ids[i, T - n:] = torch.randint(0, vocab, (n,), generator=g)
        mask[i, T - n:] = True
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


from adamame.toy import CHAT_TEMPLATE  # noqa: E402  (the same chat template as the toy model)


def save_tiny_tokenizer(path, corpus=None, chat_template=CHAT_TEMPLATE, vocab_size=300):
    """Train a small BPE tokenizer with `tokenizers` and save it as a transformers fast tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = corpus or ["Combien font 3 plus 4 ? La réponse est \\boxed{7}.", "What is 2 + 2? <think> 4 </think>",
                        "3 足す 4 は？ 答えは 7 です。"] * 20
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    return fast


def cli_env(env=None):
    """(the environment a CLI of the project runs in, the project root): one thread, no inherited torchrun vars."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(k, None)
    return full_env, root


def run_cli(args, nproc=1, timeout=600, env=None):
    """Run a CLI of the project as a user would: `python X.py` or `torchrun --nproc_per_node N X.py`."""
    import subprocess
    import sys

    full_env, root = cli_env(env)
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    else:
        cmd = [sys.executable, *args]
    return subprocess.run(cmd, cwd=root, env=full_env, capture_output=True, text=True, timeout=timeout)


def write_sft_jsonl(path, n=12):
    import json

    langs = ["fr", "ja", "ko", "pt", "th"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            lang = langs[i % 5]
            f.write(json.dumps({"lang": lang, "question": f"What is {i} plus {i + 1}?" + " More words." * (i % 4),
                                "trace": f"{i} + {i + 1} = {2 * i + 1}", "answer": f"\\boxed{{{2 * i + 1}}}"},
                               ensure_ascii=False) + "\n")


def write_rl_jsonl(path, n=20, long_prompts=0):
    import json

    from adamame.data import localized_prompt

    langs = ["fr", "ja", "ko", "pt", "th"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n + long_prompts):
            lang = langs[i % 5]
            q = f"{i} + {i} ?" if i < n else "x" * 3000
            f.write(json.dumps({"id": f"q{i}", "lang": lang, "prompt": localized_prompt(lang, q), "answer": str(2 * i)},
                               ensure_ascii=False) + "\n")


def tiny_project(root):
    """A tiny Qwen3 model folder with its tokenizer (root/model), 20 RL prompts (root/rl.jsonl) and 12 SFT rows
    (root/sft.jsonl): what the trainers' CLI tests run on."""
    save_tiny_hf(root / "model", "qwen3", num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    save_tiny_tokenizer(root / "model", vocab_size=300)
    write_rl_jsonl(root / "rl.jsonl", n=20)
    write_sft_jsonl(root / "sft.jsonl", n=12)
    return root


def paged_copy(cache, seed=0):
    """A PagedKVCache holding a (prefilled) KVCache's rows, their blocks in a shuffled order in the pool (block 0, the
    scratch, held by none): the decode step's cache for tests that prefill with the model's forward."""
    import torch

    from adamame.model import PagedKVCache

    R, KV, S, D = cache.k[0].shape
    W = -(-S // 32)
    paged = PagedKVCache([torch.zeros((R * W + 1) * 32, KV, D, dtype=k.dtype) for k in cache.k],
                         [torch.zeros((R * W + 1) * 32, KV, D, dtype=k.dtype) for k in cache.v],
                         torch.zeros(R, W, dtype=torch.int32))
    paged.table.copy_(torch.randperm(R * W, generator=torch.Generator().manual_seed(seed)).view(R, W) + 1)
    at = paged.where(R, torch.arange(S).expand(R, S))
    for pool, c in zip(paged.k + paged.v, cache.k + cache.v):
        pool[at] = c.transpose(1, 2)
    return paged


def training_grads(monkeypatch, *, device="cpu", T=9, lora=False, **config):
    """{ADAMAME_KERNELS mode: (logits, the gradient of every parameter that gets one)} of one training forward and
    backward of a 2-layer model (`config`: config.json fields), PyTorch's layers ("torch") against the layer kernels
    ("triton"), fp32. The norms' weights are moved off 1 so their gradient means something; with `lora`, trained
    adapters and the second layer under activation checkpointing."""
    import torch

    from adamame.dist import _checkpoint_forward
    from adamame.lora import apply_lora
    from adamame.model import ModelConfig, Transformer

    cfg = ModelConfig.from_dict(dict(num_hidden_layers=2, **config))
    torch.manual_seed(0)
    model = Transformer(cfg).to(device)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.3 * torch.randn_like(p))
    if lora:
        apply_lora(model, 4, 8)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("lora_B"):
                    p.normal_(0, 0.1)
        _checkpoint_forward(model.model.layers[1])
    ids = torch.randint(0, cfg.vocab_size, (2, T), device=device)
    seed = torch.randn(2, T, cfg.vocab_size, device=device)
    out = {}
    for mode in ("torch", "triton"):
        monkeypatch.setenv("ADAMAME_KERNELS", mode)
        model.zero_grad(set_to_none=True)
        logits = model(ids)
        (logits * seed).sum().backward()
        out[mode] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    return out
