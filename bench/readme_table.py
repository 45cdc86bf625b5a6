"""Print the README's "Measured performance" table from the newest bench/results/*.json (a gpu_check.json copy).

    python bench/readme_table.py [RESULTS_FILE]
"""

import glob
import json
import os
import sys


def table(res: dict) -> str:
    lines = [f"GPU: {res['gpu']}, date {res['date']}, commit {str(res['commit'])[:10]}, torch {res.get('torch')}", "",
             "| measurement | ours | baseline | ours / baseline | fraction of peak |", "|---|---|---|---|---|"]
    steps = res["steps"]
    for r in steps.get("kernels", {}).get("result", {}).get("rows", []):
        if r["impl"] != "ours" or r["time_ms"] is None:
            continue
        base = next((b for b in steps["kernels"]["result"]["rows"] if b["impl"] == "eager" and
                     b["kernel"] == r["kernel"] and b["N"] == r["N"]), None)
        frac = f"{100 * r['frac_peak_bw']:.0f}% of HBM" if r.get("frac_peak_bw") else "-"
        base_ms = f"{base['time_ms']:.2f} ms" if base and base["time_ms"] else (base or {}).get("error") or "-"
        ratio = f"{r['time_vs_eager']:.2f}" if r.get("time_vs_eager") else "-"
        lines.append(f"| {r['kernel']} {r['N']} x {r['V']} {r['dtype']} | {r['time_ms']:.2f} ms | {base_ms} (eager) "
                     f"| {ratio} | {frac} |")
    for c in steps.get("generate", {}).get("result", {}).get("cases", []):
        frac = f"{100 * c['frac_of_bound']:.0f}% of bandwidth bound" if c.get("frac_of_bound") else "-"
        lines.append(f"| generate {c['prompts']} prompts x {c['n']} x {c['new_tokens']} tok, ctx {c['context']}"
                     f"{' CUDA graphs' if c['cuda_graphs'] else ''} | {c['ours']['tokens_per_s']:.0f} tok/s | "
                     f"{c['transformers']['tokens_per_s']:.0f} tok/s (transformers) | "
                     f"{c['speedup_vs_transformers']:.2f}x | {frac} |")
    g = steps.get("grpo_step", {}).get("result")
    if g:
        mfu = f"update MFU {100 * g['update_mfu']:.0f}%" if g.get("update_mfu") else "-"
        lines.append(f"| GRPO step {g['prompts']} x {g['group_size']} x {g['new_tokens']} tok: rollout / log-probs / "
                     f"update | {g['time_rollout']:.1f} / {g['time_logprobs']:.1f} / {g['time_update']:.1f} s | - | - "
                     f"| {mfu} |")
    failed = [f"{k}: {v['status']}" for k, v in steps.items() if v["status"] != "ok"]
    if failed:
        lines += ["", "Not ok: " + ", ".join(failed)]
    return "\n".join(lines)


def main():
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    path = sys.argv[1] if len(sys.argv) > 1 else max(glob.glob(os.path.join(here, "*.json")), default=None,
                                                     key=os.path.getmtime)
    if path is None:
        print("no results in bench/results yet")
        return
    with open(path) as f:
        print(table(json.load(f)))


if __name__ == "__main__":
    main()
