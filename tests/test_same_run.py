"""bench/same_run.py, the check that a refactor leaves a run's outputs equal: wall times may differ, nothing else."""
import json

from bench.same_run import main


def write(folder, weights=b"\x00\x01", seconds=1.0, accuracy=0.5):
    (folder / "final").mkdir(parents=True)
    (folder / "final" / "model.safetensors").write_bytes(weights)
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "accuracy": accuracy, "time": seconds,
                                                      "time_rollout": seconds}) + "\n")
    (folder / "summary.json").write_text(json.dumps({"seconds": seconds, "rl": {"pass@1": accuracy}}))
    (folder / "checkpoint.pt").write_bytes(str(seconds).encode())  # skipped


def test_only_wall_times_may_differ(tmp_path, capsys):
    write(tmp_path / "a")
    write(tmp_path / "b", seconds=9.0)
    assert main(str(tmp_path / "a"), str(tmp_path / "b")) == 0
    write(tmp_path / "c", weights=b"\x00\x02")
    assert main(str(tmp_path / "a"), str(tmp_path / "c")) == 1
    write(tmp_path / "d", accuracy=0.75)
    assert main(str(tmp_path / "a"), str(tmp_path / "d")) == 1
    (tmp_path / "e").mkdir()
    assert main(str(tmp_path / "a"), str(tmp_path / "e")) == 1
    assert "missing final/model.safetensors" in capsys.readouterr().out
