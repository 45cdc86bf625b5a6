"""The GPU check's reduced CPU mode (what CI can run): every step ok, every figure field present, the README table
renders from the results file."""

import json

from tests.helpers import run_cli

STEPS = ("preflight", "tests", "kernels", "generate", "rollout_memory", "update_memory", "grpo_smoke")


def test_the_step_limits_add_up_to_the_budget():
    from bench.gpu_check import BUDGET_S, LIMITS_GPU, RERUN_BUDGET_S

    assert list(LIMITS_GPU) == list(STEPS) and sum(LIMITS_GPU.values()) == BUDGET_S <= 360
    assert LIMITS_GPU["preflight"] <= 30 and RERUN_BUDGET_S <= 150


def test_cpu_mode_of_the_gpu_check_writes_every_field(tmp_path):
    r = run_cli(["bench/gpu_check.py", "--cpu", "--out", str(tmp_path), "--budget", "900"], timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    for key in ("gpu", "date", "commit", "torch", "triton", "cuda", "nvidia_smi", "mode", "seconds", "steps"):
        assert key in res, key
    assert res["mode"] == "cpu" and list(res["steps"]) == list(STEPS)
    for name in STEPS:
        step = res["steps"][name]
        assert step["status"] == "ok", (name, step.get("reason"), step.get("log_tail", "")[-1500:])
        assert {"seconds", "log_tail", "command"} <= set(step)
    assert len(list(tmp_path.iterdir())) <= 8  # what the GPU machine sends back
    steps = res["steps"]
    assert steps["tests"]["passed"] > 0 and steps["tests"]["failed"] == 0
    checks = steps["preflight"]["checks"]
    assert [checks[c]["status"] for c in ("imports", "triton", "sdpa", "cuda_graph")] == ["ok", "ok", "ok", "skipped"]
    assert {"prefill (float32)", "decode step (bfloat16)", "training forward (bfloat16)"} <= set(checks["sdpa"]["sites"])
    rows = steps["kernels"]["rows"]
    assert {(r["impl"], r["kernel"]) for r in rows} >= {("ours", "logprob_fwd"), ("ours", "loss_fwd_bwd"),
                                                        ("eager", "logprob_fwd"), ("eager", "loss_fwd_bwd")}
    for row in rows:
        for key in ("time_ms", "gb_per_s", "frac_copy_bw", "frac_peak_bw", "peak_extra_bytes", "time_vs_ours", "N",
                    "V", "dtype", "error"):
            assert key in row, key
    case = steps["generate"]["cases"][0]
    assert case["ours"]["tokens_per_s"] > 0 and case["transformers"]["tokens_per_s"] > 0
    for key in ("speedup_vs_transformers", "rows", "new_tokens", "cuda_graphs"):
        assert key in case
    sampler = steps["generate"]["sampler"]  # the fused sampler against PyTorch's (512 x 151,936 bf16 on a GPU)
    for key in ("fused_ms", "torch_ms", "torch_vs_fused", "max_abs_logp_diff", "frac_of_copy_bw"):
        assert key in sampler, key
    assert sampler["max_abs_logp_diff"] < 1e-5
    refill = steps["generate"]["refill"]  # the paged schedule: its steps are the ones bench/schedule.py replays
    assert refill["decode_steps"] == refill["replayed_steps"] > 0 and 0 < refill["most_rows"] <= 3 * 2
    att = steps["generate"]["attention"][0]  # the decode kernel against SDPA (paper shapes on a GPU)
    for key in ("ours_ms", "sdpa_ms", "sdpa_vs_ours", "max_abs_diff", "useful_bytes", "splits"):
        assert key in att, key
    assert att["max_abs_diff"] < 1e-5  # float32 under the interpreter
    assert steps["preflight"]["checks"]["triton"]["decode_attention_err"] < 1e-5
    for key in ("peak_bytes", "plan_bytes", "peak_vs_plan", "tokens_per_s", "decode_steps", "graphs_captured"):
        assert key in steps["rollout_memory"], key
    assert steps["rollout_memory"]["plan_bytes"] > 0
    cases = steps["update_memory"]["cases"]
    assert [c["activation_checkpointing"] for c in cases] == [True, False, False]
    for c in cases:
        for key in ("tokens", "seconds", "peak_bytes", "plan_bytes", "peak_vs_plan", "mfu", "error"):
            assert key in c, key
    smoke = steps["grpo_smoke"]
    assert smoke["steps"] == 3 and smoke["exported"] and smoke["logprob_diff"] < 1e-4  # float32 on CPU
    from bench.readme_table import table

    text = table(res)  # the README table renders from a results file
    assert "ours logprob_fwd 32 x 1009" in text and "| generate |" in text and "grpo_smoke" in text
    assert "decode attention, 3 rows x 300 slots" in text
