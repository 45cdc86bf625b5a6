"""Time one GRPO step's phases on a given model shape: rollout, log-probs (reference forward), update.

Random weights (our Transformer, built directly on the device), LoRA on all linear layers as in the paper's RL
stage, random prompts; no FSDP (one device). Reports seconds per phase, generated tokens/s, and the model FLOP
utilisation of the update: a LoRA step costs about 4 N FLOPs per token (forward 2N, input gradients 2N; the frozen
base weights get no weight gradient), N = base parameters.

    python bench/grpo_step.py --gpu        # Qwen2.5-1.5B shapes, bf16
    python bench/grpo_step.py --tiny       # CPU smoke mode
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import torch

    from adamame.generate import generate
    from adamame.kernels import policy_loss, token_logprobs
    from adamame.lora import adapters_disabled, apply_lora
    from adamame.model import ModelConfig, Transformer
    from bench.generate import QWEN25_15B, TINY_MODEL

    dev = "cuda" if args.gpu else "cpu"
    dtype = torch.bfloat16 if args.gpu else torch.float32
    shape = QWEN25_15B if args.gpu else TINY_MODEL
    P, G, new = (args.prompts, args.group_size, args.new_tokens) if not args.tiny else (2, 2, 4)
    cfg = ModelConfig.from_dict({"model_type": "qwen2", **shape})
    torch.manual_seed(0)
    with torch.device(dev):
        model = Transformer(cfg).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    n_base = sum(p.numel() for p in model.parameters())
    apply_lora(model, 32, 64)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, cfg.vocab_size, (128 if args.gpu else 8,), generator=g).tolist() for _ in range(P)]

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        model.eval()
        samples = generate(model, prompts, max_new_tokens=new, n=G, temperature=0.8, seed=0, return_logprobs=True)
    sync()
    t_roll = time.perf_counter() - t0
    L = max(len(p) for p in prompts) + new
    ids = torch.zeros(P * G, L, dtype=torch.long, device=dev)
    mask = torch.zeros(P * G, L - 1, dtype=torch.bool, device=dev)
    for i, s in enumerate(samples):
        seq = prompts[i // G] + s.tokens
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, len(prompts[i // G]) - 1:len(seq) - 1] = True
    micro = 8 if args.gpu else P * G
    t1 = time.perf_counter()
    ref = []
    with torch.no_grad(), adapters_disabled(model):
        for m in range(0, P * G, micro):
            ref.append(token_logprobs(model(ids[m:m + micro])[:, :-1], ids[m:m + micro, 1:]))
    sync()
    t_lp = time.perf_counter() - t1
    t2 = time.perf_counter()
    model.train()
    adv = torch.randn(P * G, device=dev)
    for m in range(0, P * G, micro):
        logp = token_logprobs(model(ids[m:m + micro])[:, :-1], ids[m:m + micro, 1:], 0.8)
        loss, _ = policy_loss(logp, adv[m:m + micro], mask[m:m + micro], ref_logprobs=ref[m // micro], beta=1e-3,
                              max_tokens=new, num_seqs=P * G)
        loss.backward()
    opt.step()
    opt.zero_grad()
    sync()
    t_upd = time.perf_counter() - t2
    gen_tokens = sum(len(s.tokens) for s in samples)
    update_tokens = ids.numel()
    gpu = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in gpu), None)
    mfu = 4 * n_base * update_tokens / t_upd / peak if peak else None
    res = {"device": gpu, "dtype": str(dtype), "parameters": n_base, "prompts": P, "group_size": G,
           "new_tokens": new, "time_rollout": t_roll, "time_logprobs": t_lp, "time_update": t_upd,
           "rollout_tokens_per_s": gen_tokens / t_roll, "update_tokens": update_tokens, "update_mfu": mfu}
    print(f"{gpu} {dtype}: {n_base / 1e6:.0f}M params, {P} prompts x {G} x {new} tokens: rollout {t_roll:.2f} s "
          f"({gen_tokens / t_roll:.0f} tok/s), ref log-probs {t_lp:.2f} s, update {t_upd:.2f} s"
          + (f" (MFU {100 * mfu:.1f}%)" if mfu else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
