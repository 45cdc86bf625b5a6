import json

from tests.helpers import run_cli

STEPS = ("tests", "grpo_smoke", "kernels", "generate", "grpo_step")


def test_cpu_mode_of_the_gpu_check_writes_every_field(tmp_path):
    r = run_cli(["bench/gpu_check.py", "--cpu", "--out", str(tmp_path)], timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    for key in ("gpu", "date", "commit", "torch", "mode", "steps"):
        assert key in res, key
    assert res["mode"] == "cpu" and set(res["steps"]) == set(STEPS)
    for name in STEPS:
        assert res["steps"][name]["status"] == "ok", (name, res["steps"][name].get("output_tail"))
    rows = res["steps"]["kernels"]["result"]["rows"]
    assert {(r["impl"], r["kernel"]) for r in rows} >= {("ours", "logprob_fwd"), ("eager", "loss_fwd_bwd")}
    for row in rows:
        for key in ("time_ms", "gb_per_s", "frac_peak_bw", "peak_extra_bytes", "time_vs_eager", "N", "V", "dtype"):
            assert key in row
    case = res["steps"]["generate"]["result"]["cases"][0]
    assert case["ours"]["tokens_per_s"] > 0 and case["transformers"]["tokens_per_s"] > 0
    assert "speedup_vs_transformers" in case
    step = res["steps"]["grpo_step"]["result"]
    for key in ("time_rollout", "time_logprobs", "time_update", "rollout_tokens_per_s", "update_mfu"):
        assert key in step
    from bench.readme_table import table

    text = table(res)  # the README table renders from a results file
    assert "logprob_fwd 32 x 1009" in text and "generate" in text and "GRPO step" in text
