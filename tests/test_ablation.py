"""bench/ablation.py at a tiny size: one variant, one seed, two steps; the JSON has every field and the README's
table renders from it."""

import json

from tests.helpers import run_cli


def test_tiny_ablation_writes_every_field(tmp_path):
    out = tmp_path / "abl"
    r = run_cli(["bench/ablation.py", "--out", str(out), "--seeds", "1", "--variants", "adamame", "--steps",
                 "2", "--sft-steps", "10", "--eval-per-language", "6", "--nproc", "1"], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "ablation.json").read_text())
    assert {"settings", "sft", "variants", "seconds", "plot"} <= set(res)
    assert set(res["variants"]) == {"adamame"} and res["settings"]["rl_steps"] == 2
    for m in ("accuracy", "lang_match", "lcpr", "tokens"):
        assert 0 <= res["sft"][m] <= (100 if m == "tokens" else 1)
    for v in res["variants"].values():
        assert [r["seed"] for r in v["runs"]] == [0]
        for m in ("accuracy", "lang_match", "lcpr", "tokens"):
            assert set(v["summary"][m]) == {"mean", "std"} and v["summary"][m]["mean"] == v["runs"][0][m]
        for k in ("reward", "accuracy", "lang_match"):
            assert len(v["curves"][k]) == 1 and len(v["curves"][k][0]) == 2  # one seed, one value per step
    assert "SFT model" in r.stdout and "adamame" in r.stdout and "±" in r.stdout
    from bench.readme_table import ablation

    assert "pass@1 %" in ablation(res)
