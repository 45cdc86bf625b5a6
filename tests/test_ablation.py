"""bench/ablation.py at a tiny size: two variants, two seeds, two steps, no control; the JSON has every field, the
intervals and the paired differences are what the runs' own figures give by hand, and the README's table renders."""

import json
import math
import statistics

from tests.helpers import run_cli


def test_tiny_ablation_writes_every_field(tmp_path):
    out = tmp_path / "abl"
    r = run_cli(["bench/ablation.py", "--out", str(out), "--seeds", "2", "--variants", "grpo", "adamame", "--steps",
                 "2", "--sft-steps", "5", "--eval-per-language", "4", "--nproc", "1", "--no-control"], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "ablation.json").read_text())
    assert {"settings", "main", "seconds", "plot"} <= set(res) and "control" not in res
    main = res["main"]
    assert set(main["variants"]) == {"grpo", "adamame"} and res["settings"]["rl"]["max_steps"] == 2
    assert main["held_out_prompts"] == 4 * 7  # five in-domain and two out-of-domain languages
    for dom in ("in_domain", "out_of_domain"):
        for k in ("pass@1", "pass@k", "lcpr", "code_switch", "model_tokens"):
            assert main["sft"][dom][k] is not None
    g, a = (main["variants"][v] for v in ("grpo", "adamame"))
    for dom in ("in_domain", "out_of_domain"):
        for k in ("pass@1", "pass@k", "lcpr"):
            xs = [run[dom][k] for run in a["runs"]]
            ref = [run[dom][k] for run in g["runs"]]
            half = 12.706 * statistics.stdev(xs) / math.sqrt(2)  # t(0.975, 1 degree of freedom)
            assert a["summary"][dom][k]["mean"] == statistics.fmean(xs)
            assert math.isclose(a["summary"][dom][k]["ci95"], half, abs_tol=1e-12)
            assert math.isclose(a["summary"][dom][k]["diff"]["mean"], statistics.fmean(x - y for x, y in zip(xs, ref)),
                                abs_tol=1e-12)
            assert "diff" not in g["summary"][dom][k]
    for key in ("accuracy", "lang_match", "mixed_groups", "alignment_factor"):
        assert len(a["curves"][key]) == 2 and len(a["curves"][key][0]) == 2  # two seeds, one value per step
    assert "adamame - grpo" in r.stdout and "out-of-domain" in r.stdout and "±" in r.stdout
    from bench.readme_table import ablation

    block = ablation(res)
    assert "adamame - grpo" in block and "temperature 0.6" in block
