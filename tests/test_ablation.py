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
    assert res["settings"]["eval_temperature"] == 0.6 and "temperature 0.6" in ablation(res)
    # another temperature re-scores the same runs (no training: their folders are reused) into its own file
    trained = (out / "adamame-seed0" / "final" / "model.safetensors").stat().st_mtime_ns
    r2 = run_cli(["bench/ablation.py", "--out", str(out), "--seeds", "1", "--variants", "adamame", "--steps", "2",
                  "--sft-steps", "10", "--eval-per-language", "6", "--nproc", "1", "--eval-temperature", "0.8"],
                 timeout=900)
    assert r2.returncode == 0, r2.stderr[-3000:]
    hot = json.loads((out / "ablation-T0.8.json").read_text())
    assert hot["settings"]["eval_temperature"] == 0.8 and "temperature 0.8" in r2.stdout
    assert (out / "adamame-seed0" / "final" / "model.safetensors").stat().st_mtime_ns == trained
    assert json.loads((out / "ablation.json").read_text()) == res  # the default file is left as it was
    assert "Re-scored at temperature 0.8" in ablation(res, [hot])
    # re-scoring runs trained with other settings is refused, naming the file
    r3 = run_cli(["bench/ablation.py", "--out", str(out), "--seeds", "1", "--variants", "adamame", "--steps", "3",
                  "--sft-steps", "10", "--eval-per-language", "6", "--nproc", "1", "--eval-temperature", "1.0"])
    assert r3.returncode != 0 and "ablation.json: its runs were trained with other settings" in r3.stderr
