import json
import math

import pytest
import torch
from safetensors.torch import load_file

from adamame.checkpoint import atomic_save, load
from adamame.chat import tokenize_sft
from adamame.data import DataError, read_sft
from adamame.lora import adapters_disabled, apply_lora, lora_scales, merged_state_dict
from adamame.hf import load_model, save_model
from tests.helpers import run_cli, save_tiny_hf, save_tiny_tokenizer, write_sft_jsonl
from train_sft import collate, lr_at


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    save_tiny_hf(root / "model", "qwen3", num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=300)
    save_tiny_tokenizer(root / "model", vocab_size=300)
    write_sft_jsonl(root / "data.jsonl", n=12)
    return root


def _sft(tiny, out, *extra, nproc=1):
    args = ["train_sft.py", "--model", str(tiny / "model"), "--data", str(tiny / "data.jsonl"), "--out", str(out),
            "--batch-size", "4", "--micro-batch-size", "1", "--lora-rank", "4", "--lr", "1e-2", "--max-steps", "4",
            "--save-every", "2", *extra]
    r = run_cli(args, nproc=nproc)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return rows, r


def _final(out):
    return load_file(str(out / "final" / "model.safetensors"))


def test_two_ranks_equal_one_rank_step_by_step(tiny, tmp_path):
    one, _ = _sft(tiny, tmp_path / "one")
    two, r = _sft(tiny, tmp_path / "two", nproc=2)
    assert "2 rank(s)" in r.stdout
    assert [row["step"] for row in one] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4
    w1, w2 = _final(tmp_path / "one"), _final(tmp_path / "two")
    assert w1.keys() == w2.keys()
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5
    # training changed the weights, and the export loads in transformers
    base = load_file(str(tiny / "model" / "model.safetensors"))
    assert max((w1[k] - base[k]).abs().max().item() for k in w1) > 1e-4
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s"):
        assert key in one[0]


def test_resume_continues_exactly(tiny, tmp_path):
    full, _ = _sft(tiny, tmp_path / "full")
    part, r = _sft(tiny, tmp_path / "part", "--stop-after", "2")
    assert len(part) == 2 and not (tmp_path / "part" / "final").exists()
    resumed, r = _sft(tiny, tmp_path / "part", "--resume")
    assert "resumed" in r.stdout
    assert [row["step"] for row in resumed] == [1, 2, 3, 4]
    for a, b in zip(full, resumed):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["lr"] == b["lr"]
    wf, wr = _final(tmp_path / "full"), _final(tmp_path / "part")
    assert max((wf[k] - wr[k]).abs().max().item() for k in wf) <= 1e-6


def test_lora_merged_export_equals_adapter_model_and_loads_in_transformers(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = load_model(str(tiny / "model"))
    apply_lora(m, rank=4, alpha=8)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1)  # a trained adapter: B != 0
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        with_adapters = m(ids)
        with adapters_disabled(m):
            base = m(ids)
    assert (with_adapters - base).abs().max() > 1e-3
    merged = merged_state_dict(m.state_dict(), lora_scales(m))
    assert not any("lora" in k for k in merged)
    save_model(m, str(tmp_path / "merged"), state_dict=merged)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).float().eval()
    ours = load_model(str(tmp_path / "merged"))
    with torch.no_grad():
        assert (ours(ids) - with_adapters).abs().max() <= 1e-5
        assert (hf(ids).logits - with_adapters).abs().max() <= 1e-4


def test_loss_mask_covers_each_target_token_once(tiny):
    from adamame.chat import load_tokenizer

    tok = load_tokenizer(str(tiny / "model"))
    exs = read_sft(str(tiny / "data.jsonl"))[:3]
    enc = [tokenize_sft(tok, ex) for ex in exs]
    ids, targets, mask = collate(enc, pad_id=0)
    for i, (seq, n_prompt) in enumerate(enc):
        assert mask[i].sum().item() == len(seq) - n_prompt  # every target token once
        assert not mask[i, :n_prompt - 1].any()  # positions predicting prompt tokens carry no loss
        assert targets[i, mask[i]].tolist() == seq[n_prompt:]
        assert tok.decode(seq[n_prompt:]).endswith(tok.eos_token)
        assert "</think>" in tok.decode(seq[n_prompt:])
        assert tok.decode(seq[:n_prompt]).endswith("<think>\n")  # the template opened <think>


def test_lr_schedule_by_hand():
    assert lr_at(0, 100, 1.0, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 0.1) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, 0.1) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 0.1) == pytest.approx(0.5)
    assert lr_at(99, 100, 1.0, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))


# ---- bad input ----

@pytest.mark.parametrize("content,match", [
    ('{"lang": "fr", "question": "q", "trace": "t", "answer": "1"}\n{"lang": "fr", "question": \n',
     r"data.jsonl:2: malformed JSON"),
    ('{"lang": "fr", "question": "q", "answer": "1"}\n', r"data.jsonl:1: missing field 'response or trace'"),
    ('{"lang": "xx", "question": "q", "trace": "t", "answer": "1"}\n', r"data.jsonl:1: field 'lang': unknown language"),
    ('{"question": "q", "trace": "t", "answer": "1"}\n', r"data.jsonl:1: missing field 'lang'"),
    ("\n\n", r"data.jsonl: no examples"),
    ('[1, 2]\n', r"data.jsonl:1: expected a JSON object"),
])
def test_bad_sft_data_names_file_line_and_field(tmp_path, content, match):
    (tmp_path / "data.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        read_sft(str(tmp_path / "data.jsonl"))


def test_cli_reports_bad_input_without_traceback(tiny, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"lang": "fr", "question": "q", "trace": "t", "answer": "1"}\n{oops\n', encoding="utf-8")
    r = run_cli(["train_sft.py", "--model", str(tiny / "model"), "--data", str(bad), "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and f"{bad}:2: malformed JSON" in r.stderr and "Traceback" not in r.stderr
    empty_model = tmp_path / "noweights"
    empty_model.mkdir()
    (empty_model / "config.json").write_text((tiny / "model" / "config.json").read_text())
    save_tiny_tokenizer(empty_model)
    r = run_cli(["train_sft.py", "--model", str(empty_model), "--data", str(tiny / "data.jsonl"),
                 "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and "no weights found" in r.stderr and "Traceback" not in r.stderr


def test_kill_during_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    atomic_save({"step": 2, "w": torch.ones(3)}, path)

    def dying_save(obj, f):
        f.write(b"partial garbage")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"step": 4, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = load(path)
    assert state["step"] == 2 and torch.equal(state["w"], torch.ones(3))


def test_resume_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        load(str(tmp_path / "checkpoint.pt"))
