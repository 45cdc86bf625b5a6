"""The README's measured GPU table, rendered from a results file of the GPU check (bench/results/*.json).

    python bench/readme_table.py [RESULTS_FILE]            # print it (default: the newest bench/results/*.json)
    python bench/readme_table.py [RESULTS_FILE] --write    # replace the block between the README's markers
"""

import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- gpu-results -->", "<!-- /gpu-results -->"


def _f(v, fmt, none="-"):
    return none if v is None else fmt.format(v)


def table(res: dict) -> str:
    steps = res["steps"]
    lines = [f"{res['gpu']} ({res.get('mode')} mode), {res['date']}, commit {str(res['commit'])[:10]}, torch "
             f"{res.get('torch')}, CUDA {res.get('cuda')}, Triton {res.get('triton')}; the whole check "
             f"{res.get('seconds')} s", "",
             "| step | measurement | result | reference |", "|---|---|---|---|"]
    t = steps.get("tests", {})
    if t.get("status") in ("ok", "failed"):
        lines.append(f"| tests | GPU tests | {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
                     f"{t.get('skipped', 0)} skipped | - |")
    k = steps.get("kernels", {})
    for r in k.get("rows", []):
        if r["kernel"] == "setup":
            continue
        res_ = _f(r["time_ms"], "{:.2f} ms", r.get("error") or "-")
        if r["time_ms"]:
            res_ += f", {r['gb_per_s']:.0f} GB/s ({_f(r.get('frac_copy_bw') and 100 * r['frac_copy_bw'], '{:.0f}%')} " \
                    f"of copy bandwidth), +{_f(r['peak_extra_bytes'] and r['peak_extra_bytes'] / 2**20, '{:.0f}')} MiB"
        lines.append(f"| kernels | {r['impl']} {r['kernel']} {r['N']} x {r['V']} bf16 | {res_} | "
                     f"{_f(r.get('time_vs_ours'), '{:.2f}x the time of ours')} |")
    g = steps.get("generate", {})
    for c in g.get("cases", []):
        o, h = c["ours"], c["transformers"]
        frac = _f(c.get("frac_of_bound") and 100 * c["frac_of_bound"], ", {:.0f}% of the bandwidth bound", "")
        cap = f", {o['graphs_captured']} graphs in {o['capture_seconds']:.1f} s" if o.get("graphs_captured") else ""
        lines.append(f"| generate | {c['rows']} rows x {c['new_tokens']} new tokens, prompts {c['context']} | "
                     f"{o['tokens_per_s']:.0f} tok/s{frac}{cap} | transformers {h['tokens_per_s']:.0f} tok/s: "
                     f"{c['speedup_vs_transformers']:.2f}x |")
    if g.get("host_ms_per_step"):
        hs = g["host_ms_per_step"]
        lines.append(f"| generate | host time per decode step, batch 1 | {hs['graphs_1_row']:.3f} ms (CUDA graphs) | "
                     f"{hs['eager_1_row']:.3f} ms (eager) |")
    r = steps.get("rollout_memory", {})
    if r.get("plan_bytes"):
        lines.append(f"| rollout_memory | {r['rows']} rows x {r['prompt_tokens']} + up to {r['max_new_tokens']} "
                     f"tokens | peak {_f(r.get('peak_bytes') and r['peak_bytes'] / 2**30, '{:.1f} GiB')}, "
                     f"{r['tokens_per_s']:.0f} tok/s | plan {r['plan_bytes'] / 2**30:.1f} GiB"
                     f"{_f(r.get('peak_vs_plan'), ' (peak / plan {:.2f})', '')} |")
    for c in steps.get("update_memory", {}).get("cases", []):
        what = f"{c['tokens']} tokens, checkpointing {'on' if c['activation_checkpointing'] else 'off'}"
        if c.get("error"):
            lines.append(f"| update_memory | {what} | {c['error'][:60]} | - |")
            continue
        lines.append(f"| update_memory | {what} | peak {_f(c['peak_bytes'] and c['peak_bytes'] / 2**30, '{:.1f} GiB')}, "
                     f"{c['seconds']:.2f} s, MFU {_f(c.get('mfu') and 100 * c['mfu'], '{:.0f}%')} | plan "
                     f"{c['plan_bytes'] / 2**30:.1f} GiB{_f(c.get('peak_vs_plan'), ' (peak / plan {:.2f})', '')} |")
    s = steps.get("grpo_smoke", {})
    if s.get("steps"):
        lines.append(f"| grpo_smoke | train_grpo.py, {s['steps']} steps of a tiny model | logprob_diff "
                     f"{s['logprob_diff']:.2e}, rollout {s['rollout_tokens_per_s']:.0f} tok/s | - |")
    bad = [f"{name}: {v['status']}" + (f" ({v['reason']})" if v.get("reason") else "")
           for name, v in steps.items() if v.get("status") != "ok"]
    if bad:
        lines += ["", "Not ok: " + "; ".join(bad)]
    return "\n".join(lines)


def newest() -> str | None:
    return max(glob.glob(os.path.join(HERE, "results", "*.json")), default=None, key=os.path.getmtime)


def write_readme(text: str, readme=os.path.join(HERE, "..", "README.md")) -> None:
    with open(readme, encoding="utf-8") as f:
        s = f.read()
    if BEGIN not in s or END not in s:
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} block to replace")
    head, rest = s.split(BEGIN, 1)
    with open(readme, "w", encoding="utf-8") as f:
        f.write(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    files = [a for a in argv if not a.startswith("--")]
    path = files[0] if files else newest()
    if path is None:
        print("no results in bench/results yet")
        return
    with open(path) as f:
        text = table(json.load(f))
    if "--write" in argv:
        write_readme(f"From `{os.path.relpath(path, os.path.join(HERE, '..'))}`:\n\n{text}")
    print(text)


if __name__ == "__main__":
    main()
