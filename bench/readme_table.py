"""The READMEs' measured blocks, rendered from the files the runs write, so a README never quotes an older run.

    python bench/readme_table.py gpu [RESULTS_FILE] [--write]      # the GPU check (default: newest bench/results/)
    python bench/readme_table.py demo runs/grpo/summary.json [--write]        # the toy demo (train_grpo.py)
    python bench/readme_table.py ablation runs/ablation/ablation.json [--write]   # bench/ablation.py

--write replaces the block between the markers (<!-- NAME-results --> ... <!-- /NAME-results -->): of bench/README.md
for gpu, of the top-level README.md for demo and ablation.
"""

import glob
import json
import os
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _f(v, fmt, none="-"):
    return none if v is None else fmt.format(v)


def table(res: dict) -> str:
    steps = res["steps"]
    lines = [f"{res['gpu']} ({res.get('mode')} mode), {res['date']}, commit {str(res['commit'])[:10]}, torch "
             f"{res.get('torch')}, CUDA {res.get('cuda')}, Triton {res.get('triton')}; the whole check "
             f"{res.get('seconds')} s", "",
             "| step | measurement | result | reference |", "|---|---|---|---|"]
    for name, c in steps.get("preflight", {}).get("checks", {}).items():
        detail = c.get("error", "")[:80] if c["status"] == "failed" else ""
        if name == "sdpa" and c.get("sites"):
            detail = "; ".join(f"{site}: {'/'.join(v.get('backend', [])) or v.get('error', '')[:40]}"
                               for site, v in c["sites"].items())
        lines.append(f"| preflight | {name} | {c['status']}{': ' + detail if detail else ''} | "
                     f"{c.get('hatch', '-')} |")
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
    for a in g.get("attention", []):
        frac = _f(a.get("frac_of_copy_bw") and 100 * a["frac_of_copy_bw"], ", {:.0f}% of copy bandwidth", "")
        lines.append(f"| generate | decode attention, {a['rows']} rows x {a['slots']} slots, {a['dtype']} (the engine "
                     f"uses the Triton kernel on CUDA) | Triton {a['ours_ms']:.3f} ms{frac} | SDPA {a['sdpa_ms']:.3f} "
                     f"ms: {a['sdpa_vs_ours']:.2f}x the time of ours |")
    for c in g.get("cases", []):
        o, h = c["ours"], c["transformers"]
        frac = _f(c.get("frac_of_bound") and 100 * c["frac_of_bound"], ", {:.0f}% of the bandwidth bound", "")
        cap = f", {o['graphs_captured']} graphs in {o['capture_seconds']:.1f} s" if o.get("graphs_captured") else ""
        lines.append(f"| generate | {c['rows']} rows x {c['new_tokens']} new tokens, prompts {c['context']} | "
                     f"{o['tokens_per_s']:.0f} tok/s{frac}{cap} | transformers {h['tokens_per_s']:.0f} tok/s: "
                     f"{c['speedup_vs_transformers']:.2f}x |")
    sm = g.get("sampler")
    if sm:
        frac = _f(sm.get("frac_of_copy_bw") and 100 * sm["frac_of_copy_bw"], ", {:.0f}% of copy bandwidth", "")
        lines.append(f"| generate | sampler, {sm['rows']} rows x {sm['vocab']:,} {sm['dtype']} logits | fused "
                     f"{sm['fused_ms']:.3f} ms{frac} | PyTorch {sm['torch_ms']:.3f} ms: {sm['torch_vs_fused']:.2f}x the "
                     f"time of the fused one |")
    rf = g.get("refill")
    if rf and rf.get("predicted_s"):
        lines.append(f"| generate | paged rollout: {rf['prompts']} prompts x {rf['n']} in {rf['rows']} rows' KV memory, "
                     f"{rf['tokens']:,} tokens (lengths forced) | {rf['measured_s']:.2f} s, {rf['decode_steps']} "
                     f"steps | "
                     f"step-time model {rf['predicted_s']:.2f} s: measured {rf['measured_vs_predicted']:.2f}x |")
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


def demo(res: dict) -> str:
    """The toy demo's two tables and its one-line summary, from train_grpo.py's summary.json."""
    from adamame.scoring import format_table
    from adamame.toy import DEMO_METRICS

    out = ["```"]
    for name in ("sft", "rl"):
        out += [f"{name.upper()} model on {res['held_out_prompts']} held-out toy prompts ({res['k']} samples each, "
                f"temperature {res['temperature']}):", format_table(res[name]["summary"], metrics=DEMO_METRICS), ""]
    sft, rl = res["sft"], res["rl"]
    out += [f"reward {res['reward']}: accuracy {sft['accuracy']:.3f} -> {rl['accuracy']:.3f}, query-language match "
            f"{sft['lang_match']:.3f} -> {rl['lang_match']:.3f}", "```", ""]
    q, e = sft["summary"]["in_domain"], rl["summary"]["in_domain"]
    qo, eo = sft["summary"]["out_of_domain"], rl["summary"]["out_of_domain"]
    sel = res["rl_prompts"]
    out += textwrap.wrap(
            f"The run: {res['world']} ranks on this project's 2-core CPU machine, {res['seconds'] / 60:.1f} min in "
            f"all. It took {res['base_steps']} + {res['sft_steps']} SFT steps: the base stage, then Stage 1 on "
            f"query-language traces. The RL data stage kept {sel['kept']} of {sel['pool']} pool prompts, those solved "
            f"1 to 7 times of 8. In the first 10 RL steps, {100 * res['mixed_groups_first_10_steps']:.0f}% of the "
            f"groups are of mixed correctness. Then came {res['rl_steps']} RL steps of {res['batch_prompts']} prompts "
            f"x {res['group_size']} rollouts at temperature {res['rl_temperature']}, and two evaluations. The same "
            f"seed gives the same numbers on one machine. On the previous toy, another machine with the same packages "
            f"moved them by about a point. In domain, the SFT model is right {100 * q['pass@1']:.1f}% of the time "
            f"(pass@4 {100 * q['pass@k']:.1f}%). It reasons in the query language {100 * q['lang_match']:.1f}% of "
            f"the time. After {res['reward']} RL, these are {100 * e['pass@1']:.1f}% ({100 * e['pass@k']:.1f}%) and "
            f"{100 * e['lang_match']:.1f}%. Out of domain (es, de: seen in the base stage only), the models are right "
            f"{100 * qo['pass@1']:.1f}% -> {100 * eo['pass@1']:.1f}% of the time, and in the query language "
            f"{100 * qo['lang_match']:.1f}% -> {100 * eo['lang_match']:.1f}%.", 116)
    return "\n".join(out)


def ablation(res: dict) -> str:
    """bench/ablation.py's tables (mean ± 95% interval over seeds, paired differences from grpo; the control after
    them) and its settings, from ablation.json."""
    from bench.ablation import table as ablation_table

    st, m = res["settings"], res["main"]
    tables = [ablation_table(res, "main")]
    if "control" in res:
        tables += ["", "control: the same toy with no competence gap (every cell taught step by step)",
                   ablation_table(res, "control")]
    return "\n".join(["```", *tables, "```", ""] + textwrap.wrap(
        f"Held-out toy prompts, {m['held_out_prompts'] // 7} per language, {st['k']} samples each at temperature "
        f"{st['eval_temperature']}. A variant's figure is the mean over {st['seeds']} RL seeds of "
        f"{st['rl']['max_steps']} steps each, ± the half-width of its 95% t-interval. All seeds start from one SFT "
        f"model and its {m['rl_prompts']} selected RL prompts. 'X - grpo' is the difference paired by seed. "
        f"Rates are in %, and "
        f"tokens are the tokenizer's. `python bench/ablation.py` took {res['seconds'] / 60:.0f} min on this "
        f"project's 2-core CPU machine.", 116))


def newest() -> str | None:
    return max(glob.glob(os.path.join(HERE, "results", "*.json")), default=None, key=os.path.getmtime)


README = os.path.join(HERE, "..", "README.md")  # demo, ablation
BENCH_README = os.path.join(HERE, "README.md")  # gpu


def write_readme(name: str, text: str, readme=README) -> None:
    begin, end = f"<!-- {name}-results -->", f"<!-- /{name}-results -->"
    with open(readme, encoding="utf-8") as f:
        s = f.read()
    if begin not in s or end not in s:
        raise SystemExit(f"{readme}: no {begin} ... {end} block to replace")
    head, rest = s.split(begin, 1)
    with open(readme, "w", encoding="utf-8") as f:
        f.write(head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    words = [a for a in argv if not a.startswith("--")]
    if not words or words[0] not in ("gpu", "demo", "ablation"):
        raise SystemExit("usage: readme_table.py gpu|demo|ablation [FILE] [--write]")
    kind = words[0]
    path = words[1] if len(words) > 1 else (newest() if kind == "gpu" else None)
    if path is None:
        raise SystemExit(f"no results file for {kind}" + (" in bench/results yet" if kind == "gpu" else ""))
    with open(path) as f:
        res = json.load(f)
    text = {"gpu": table, "demo": demo, "ablation": ablation}[kind](res)
    if kind == "gpu":
        text = f"From `{os.path.relpath(path, os.path.join(HERE, '..'))}`:\n\n{text}"
    if "--write" in argv:
        write_readme(kind, text, BENCH_README if kind == "gpu" else README)
    print(text)


if __name__ == "__main__":
    main()
