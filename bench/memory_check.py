"""The memory plan against the card: peak memory of one rollout and of one update micro-batch at the paper's shapes.

    python bench/memory_check.py rollout --json out.json   # 512 rows x (512-token prompts + up to 4,096 new tokens)
    python bench/memory_check.py update --json out.json    # a 32,768-token micro-batch, LoRA r=32, ckpt on and off
    python bench/memory_check.py rollout --tiny            # CPU smoke mode (tiny shapes; no peak memory on CPU)

rollout: random Qwen2.5-1.5B-shaped weights in bf16 (the plain rollout copy), 64 prompts x 8 samples with 512-token
prompts and up to 4,096 new tokens; a stop set of ~V/800 token ids ends rows at spread-out lengths (mean ~800), so
admission and the row buckets are exercised. Reports peak allocated bytes next to the plan's figure for the same
phase (the rollout copy + generate's buffers), tokens/s, decode steps and CUDA-graph captures.
update: DeepSeek-R1-Distill-Qwen-1.5B shapes (untied), float32 masters under FSDP2 on one GPU, LoRA r=32 on every
linear layer, one forward + backward of the trainer's own code (response-position logits, Triton log-probs, the
GRPO loss) on 8 sequences x 4,096 tokens (3,584 response tokens each) with activation checkpointing, and on
2 x 4,096 tokens without it (32,768 tokens without it need ~84 GiB of activations: tried, and reported if it runs
out of memory). Peak bytes next to the plan's update phase for the same knobs, time, and model FLOP utilisation
(4 N FLOPs per token: forward 2N, input gradients 2N; LoRA's frozen weights get no weight gradient).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

QWEN25_15B = dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                  num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
                  rope_theta=1e6, torch_dtype="bfloat16")  # stored as the paper's checkpoints: frozen weights in bf16
DISTILL_15B = {**QWEN25_15B, "tie_word_embeddings": False, "rope_theta": 1e4}
TINY = dict(model_type="qwen2", vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, torch_dtype="bfloat16")
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12}


def random_model(shape, device, dtype):
    """Our Transformer with random weights, made on the device (no CPU copy)."""
    import torch

    from adamame.model import ModelConfig, Transformer

    with torch.device("meta"):
        model = Transformer(ModelConfig.from_dict(shape)).to(dtype)
    model.to_empty(device=device)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0.0, 0.02)
    return model


def rollout(tiny: bool, save):
    import torch

    from adamame.generate import generate
    from adamame.memory import GiB, grpo_plan

    cuda = torch.cuda.is_available() and not tiny
    dev, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    shape = TINY if tiny else QWEN25_15B
    P, G, prompt_len, new = (2, 2, 8, 16) if tiny else (64, 8, 512, 4096)
    model = random_model(shape, dev, dtype).eval()
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, V, (prompt_len,), generator=g).tolist() for _ in range(P)]
    stops = torch.randperm(V, generator=g)[:max(1, V // 800)].tolist()
    plan = grpo_plan(model.config, world=8, total=80 * GiB, device="cuda" if cuda else "cpu", prompts_per_step=P * 8,
                     group_size=G, max_prompt_tokens=prompt_len, max_response_tokens=new, micro_batch_tokens=32768,
                     lora_rank=32, beta=0.001, rollout_rows=P * G)
    planned = plan.phases["rollout"] - plan.phases["weights"]  # the copy + generate's buffers (no masters here)
    stats = {}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    samples = generate(model, prompts, max_new_tokens=new, n=G, temperature=1.0, seed=0, eos_token_ids=stops,
                       max_rows=plan.rollout_rows, stats=stats)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else None
    lengths = sorted(len(s.tokens) for s in samples)
    save({"device": torch.cuda.get_device_name() if cuda else "cpu", "rows": P * G, "prompt_tokens": prompt_len,
          "max_new_tokens": new, "peak_bytes": peak, "plan_bytes": planned,
          "peak_vs_plan": peak / planned if peak else None, "generate_seconds": dt,
          "tokens_per_s": sum(lengths) / dt, "new_tokens": sum(lengths), "decode_steps": stats.get("steps"),
          "graphs_captured": stats.get("graphs"), "capture_seconds": stats.get("capture_seconds"),
          "length_quartiles": [lengths[len(lengths) * q // 4] for q in (1, 2, 3)], "stopped": sum(
              s.finish_reason == "stop" for s in samples)})


def update(tiny: bool, save):
    import torch

    from adamame import dist
    from adamame.grpo_kernels import aggregate
    from adamame.lora import apply_lora
    from adamame.memory import grpo_plan
    from bench.step import Pricer
    from train_grpo import response_terms

    rank, world, device = dist.setup()
    cuda = device.type == "cuda" and not tiny
    shape = TINY if tiny else DISTILL_15B
    seq, resp = (32, 24) if tiny else (4096, 3584)
    gpu = torch.cuda.get_device_name() if cuda else "cpu"
    peak_flops = next((v for k, v in PEAK_BF16_FLOPS.items() if k in gpu), None)
    total = torch.cuda.get_device_properties(0).total_memory if cuda else 64 * 2**30
    out = {"device": gpu, "sequence_tokens": seq, "response_tokens": resp, "cases": []}
    for ckpt, n_seq in ((True, 8), (False, 2), (False, 8)):
        case = {"activation_checkpointing": ckpt, "tokens": n_seq * seq}
        model = optimizer = None
        try:
            model = random_model(shape, device, torch.float32)
            n_base = sum(p.numel() for p in model.parameters())
            apply_lora(model, 32, 64)
            dist.shard_model(model, device, activation_checkpointing=ckpt)
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-5)
            plan = grpo_plan(model.config, world=1, total=total, device="cuda" if cuda else "cpu", prompts_per_step=8,
                             group_size=8, max_prompt_tokens=seq - resp, max_response_tokens=resp,
                             micro_batch_tokens=n_seq * seq, lora_rank=32, beta=0.001,
                             activation_checkpointing="on" if ckpt else "off")
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(0, shape["vocab_size"], (n_seq, seq), generator=g).to(device)
            mask = torch.zeros(n_seq, seq, dtype=torch.bool, device=device)
            mask[:, seq - resp - 1:seq - 1] = True
            targets = torch.cat([ids[:, 1:], torch.zeros(n_seq, 1, dtype=torch.long, device=device)], 1)
            old = torch.full(mask.shape, -12.0, device=device)

            def step():  # the trainer's: the fused loss terms at the response positions, then the aggregation
                adv = torch.randn(n_seq, device=device)[:, None].expand(mask.shape)
                terms = response_terms(model, ids, targets, mask, plan.logits_chunk, advantages=adv[mask],
                                       old_logprobs=old[mask], ref_logprobs=old[mask], temperature=0.8)
                full = [torch.zeros(mask.shape, dtype=v.dtype, device=device).masked_scatter(mask, v) for v in terms]
                loss, _ = aggregate(*full, mask, old_logprobs=old, beta=0.001, max_tokens=resp)
                loss.backward()

            step()  # warm-up: Triton compilation, allocator
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() if cuda else None
            case.update(seconds=dt, peak_bytes=peak, plan_bytes=plan.phases["update"],
                        peak_vs_plan=peak / plan.phases["update"] if peak else None, logits_chunk=plan.logits_chunk,
                        tokens_per_s=n_seq * seq / dt,
                        mfu=4 * n_base * n_seq * seq / dt / peak_flops if peak_flops else None, error=None,
                        predicted_seconds=Pricer(model.config).micro_batch(  # bench/step.py's model, H100 constants
                            n_seq, seq, n_seq * resp, kernels=cuda, train=True, ckpt=ckpt, chunk=plan.logits_chunk))
        except torch.OutOfMemoryError as e:
            case.update(seconds=None, peak_bytes=None, plan_bytes=None, peak_vs_plan=None, logits_chunk=None,
                        tokens_per_s=None, mfu=None, error=f"out of memory: {str(e)[:120]}", predicted_seconds=None)
        del model, optimizer
        if cuda:
            torch.cuda.empty_cache()
        out["cases"].append(case)
        save(out)
    dist.cleanup()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=("rollout", "update"))
    ap.add_argument("--tiny", action="store_true", help="CPU smoke mode")
    ap.add_argument("--json", help="write the results here (rewritten after every case)")
    args = ap.parse_args(argv)

    def save(res):
        print(json.dumps(res, indent=1), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2)

    (rollout if args.phase == "rollout" else update)(args.tiny, save)


if __name__ == "__main__":
    main()
