"""The kernels of one decode step, counted and priced: what the CUDA graph of a decode step replays.

A decode step is recorded with a TorchDispatchMode as the rollout runs it on a GPU (adamame.generate.Decoder: the
rollout copy's merged weights, the Triton kernels, the fused sampler): every aten op it dispatches but views and
empties (neither launches a kernel), and each `adamame::` op as the launches it makes (one, or two when its key range
or vocabulary is split: decode attention's combine, the sampler's merge; tests/test_layer_kernels.py holds every
adamame op to that under the interpreter, where it counts the real Triton launches and any aten op inside). Each entry
keeps its tensors' bytes (a cache view's bytes are left out: the attention kernel's KV reads are priced from the
schedule, a cache write is its source's bytes) and a GEMM its FLOPs, so bench/generate.py's step-time model prices
every kernel at max(bytes / bandwidth, FLOPs / peak, KERNEL_FLOOR).

    python bench/kernel_count.py            # the paper's two models: kernels a layer, outside the layers, a step
    python bench/kernel_count.py --record ROOT > F.json
                                            # record the step of the adamame/ under ROOT (the "before" fixture:
                                            # bench/fixtures/decode_step_b2bc083.json, from commit b2bc083)

The paper's models are recorded on the meta device at their real shapes (config.json in tests/fixtures), so nothing
is computed; the count does not depend on the shapes except through the splits.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
MODELS = ("deepseek-r1-distill-qwen-1.5b", "qwen3-4b")
EMPTIES = {"aten.empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty", "aten.new_empty_strided"}
GEMMS = {"aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm"}
CACHE_OPS = {"adamame.decode_attention", "adamame.rope_cache"}


def launches(name: str, args) -> int:
    """Kernel launches of one recorded adamame op: two where its work is split (adamame/decode_attention.py's combine,
    adamame/sampler.py's merge), else one; decode attention with the cascade three (prompts, rows, merge)."""
    if name == "adamame.decode_attention":
        from adamame.decode_attention import BLOCK_S, num_splits

        q, k, table = args[0], args[1], args[3]
        cascade = len(args) > 7 and args[7] is not None  # the shared prompts' pass first, a merge last
        return 1 + cascade + (cascade or num_splits(q.shape[0], k.shape[1], table.shape[1] * BLOCK_S) > 1)
    if name == "adamame.sample":
        from adamame.sampler import num_splits

        return 1 + (num_splits(*args[0].shape) > 1)
    return 1


def _bytes(x, skip) -> int:
    import torch

    if isinstance(x, torch.Tensor):
        return 0 if tuple(x.shape) in skip else x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_bytes(y, skip) for y in x)
    return 0


def recorder(cache_shape=None, expand=False):
    """A TorchDispatchMode whose `.ops` lists (name, kernels, bytes, FLOPs) per op dispatched, views and empties left
    out; tensors of `cache_shape` (a cache view) count no bytes. An adamame op counts launches(): on the meta device
    (nothing runs), or with expand=True (CPU tensors under TRITON_INTERPRET=1) its body runs under the recorder, so
    the aten ops inside it are recorded too (named "adamame.op>aten.op", before the op's own entry), and its kernels
    are the Triton launches it really makes."""
    import torch
    from torch._library.custom_ops import OPDEFS
    from torch.utils._python_dispatch import TorchDispatchMode

    skip = {tuple(cache_shape)} if cache_shape else set()

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops, self.launched, self.launching, self.inside = [], 0, False, None

        def __enter__(self):
            self.depth = getattr(self, "depth", 0) + 1
            if expand and self.depth == 1:  # count the interpreter's launches (once: the body re-enters the mode)
                from triton.runtime.interpreter import InterpretedFunction

                self._run = run = InterpretedFunction.run

                def counted(fn, *a, **k):  # what the interpreter dispatches to move the data is not recorded
                    self.launched += 1
                    self.launching = True
                    try:
                        return run(fn, *a, **k)
                    finally:
                        self.launching = False

                InterpretedFunction.run = counted
            return super().__enter__()

        def __exit__(self, *exc):
            self.depth -= 1
            if expand and self.depth == 0:
                from triton.runtime.interpreter import InterpretedFunction

                InterpretedFunction.run = self._run
            return super().__exit__(*exc)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func._schema.name.replace("::", ".")
            if name.startswith("adamame.") and expand:
                before, self.inside = self.launched, name
                try:
                    with self:  # the body, recorded (the mode is off inside its own handler)
                        out = OPDEFS[func._schema.name]._init_fn(*args, **kwargs)
                finally:
                    self.inside = None
                kernels = self.launched - before
            else:
                out = func(*args, **kwargs)
                kernels = launches(name, args) if name.startswith("adamame.") else 1
            if func.is_view or name in EMPTIES or name == "aten._unsafe_view" or self.launching:
                return out
            if name.endswith("_") and not name.startswith("adamame."):  # in place: what it reads and writes
                nbytes = 2 * _bytes(args[1:], skip) + _bytes(list(kwargs.values()), skip)
            else:
                nbytes = _bytes(args, skip) + _bytes(list(kwargs.values()), skip) + _bytes(out, skip)
            if name == "aten.embedding":  # a gather: the rows it reads, then writes
                nbytes = 2 * _bytes(out, skip)
            if name == "adamame.rope_cache":  # k and v written into the cache
                nbytes += _bytes(args[1:3], skip)
            flops = 0
            if name in GEMMS:
                a, b = (args[1], args[2]) if name.startswith("aten.add") else (args[0], args[1])
                flops = 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if a.dim() == 3 else 1)
            self.ops.append((f"{self.inside}>{name}" if self.inside else name, kernels, nbytes, flops))
            return out

    return Recorder()


def paper_config(name: str, layers: int | None = None):
    from adamame.hf import read_config

    cfg = read_config(os.path.join(FIXTURES, name))
    if layers is not None:
        cfg.num_hidden_layers = layers
    return cfg


def record_step(cfg, rows: int, slots: int, device="meta", dtype=None, model=None, cascade=True) -> list:
    """The ops of one decode step with the fused sampler, as a CUDA graph captures it (Decoder._run), for `rows` rows
    over `slots` cache slots, of `model`, or of a new one in the rollout copy's layout (merged projections) in bf16 on
    `device`: the meta device (nothing runs), or the CPU (run, adamame ops expanded: TRITON_INTERPRET=1 needed).
    The kernels are forced (ADAMAME_KERNELS=triton) while it records."""
    import torch

    from adamame.generate import Decoder
    from adamame.model import PagedKVCache, Transformer

    dtype = dtype or torch.bfloat16
    if model is None:
        with torch.device(device):
            model = Transformer(cfg).to(dtype)
            if hasattr(model, "merge_projections"):  # the rollout copy's layout (absent before it existed)
                model.merge_projections()
    dev = next(model.parameters()).device
    cache = PagedKVCache.static(cfg, rows, slots, dtype, dev)
    dec = Decoder(model, cache, cuda_graphs=False)
    dec.positions.fill_(1)
    dec.slot.fill_(slots - 1)
    dec.active.fill_(True)
    dec.groups = () if cascade else None  # the cascade: each row its own group here (the same kernels)
    if cascade and dev.type != "meta":
        dec.members[:, 0] = torch.arange(rows, dtype=torch.int32)
        dec.pend.fill_(1)
    rec = recorder(tuple(cache.k[0].shape), expand=dev.type != "meta")
    mode = os.environ.get("ADAMAME_KERNELS")
    os.environ["ADAMAME_KERNELS"] = "triton"  # the GPU's path
    try:
        with rec, torch.no_grad():
            dec._run(rows, slots, False)
    finally:
        os.environ.pop("ADAMAME_KERNELS") if mode is None else os.environ.update(ADAMAME_KERNELS=mode)
    return rec.ops


def per_layer(cfg, rows: int, slots: int, **kw) -> dict:
    """{'layer': ops of one layer, 'outside': the rest}, from steps recorded with 1 and 2 layers (the second layer's
    ops are the first's)."""
    one = record_step(_layers(cfg, 1), rows, slots, **kw)
    two = record_step(_layers(cfg, 2), rows, slots, **kw)
    n = len(two) - len(one)
    # the layers run one after another: the second layer's ops follow the first's, found where the lists part
    at = next((i for i, (a, b) in enumerate(zip(one, two)) if a != b), len(one))
    assert two[:at] + two[at + n:] == one, "the two recordings differ outside a layer"
    return {"layer": two[at:at + n], "outside": one}


def _layers(cfg, n):
    import dataclasses

    return dataclasses.replace(cfg, num_hidden_layers=n)


def summary(parts: dict, layers: int) -> dict:
    k_layer = sum(k for _, k, _, _ in parts["layer"])
    k_out = sum(k for _, k, _, _ in parts["outside"]) - k_layer  # `outside` is the one-layer step
    return {"layer": k_layer, "outside": k_out, "step": k_layer * layers + k_out}


REGIMES = {"unsplit": ((264, 528), 256), "split": ((1, 2), 4608)}  # rows recorded, slots


def record(root: str) -> dict:
    """The fixture: per paper model, the ops of a layer and outside the layers in two regimes, each at two row counts
    (bytes and FLOPs are linear in the rows): "unsplit" at 264 and 528 rows x 256 slots (neither the attention nor
    the sampler splits), "split" at 1 and 2 rows x 4,608 slots (both split). Run on the CPU with the adamame ops
    expanded, so what runs inside them in PyTorch is recorded too. Needs TRITON_INTERPRET=1."""
    sys.path.insert(0, root)
    os.environ.setdefault("ADAMAME_KERNELS", "triton")
    out = {}
    for name in MODELS:
        cfg = paper_config(name)
        out[name] = {"layers": cfg.num_hidden_layers, **{
            regime: {str(r): per_layer(cfg, r, slots, device="cpu") for r in rows}
            for regime, (rows, slots) in REGIMES.items()}}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", metavar="ROOT", help="print the recorded step of ROOT/adamame as JSON")
    args = ap.parse_args(argv)
    if args.record:
        print(json.dumps({"root_commit": os.popen(f"git -C {args.record} rev-parse HEAD").read().strip(),
                          **record(os.path.abspath(args.record))}))
        return
    sys.path.insert(0, ROOT)
    for name in MODELS:
        cfg = paper_config(name)
        for rows, slots in ((512, 4608), (2, 4608)):
            s = summary(per_layer(cfg, rows, slots), cfg.num_hidden_layers)
            print(f"{name}: {rows} rows x {slots} slots: {s['layer']} kernels a layer, {s['outside']} outside the "
                  f"layers, {s['step']} a step ({cfg.num_hidden_layers} layers)")


if __name__ == "__main__":
    main()
