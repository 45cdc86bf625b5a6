import json
import os

import pytest
import torch

from adamame.hf import load_model, save_model
from adamame.model import ModelConfig
from tests.helpers import VARIANTS, left_padded_batch, paged_copy, save_tiny_hf


@pytest.mark.parametrize("name,model_type,extra", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_logits_match_transformers_on_left_padded_batch(tmp_path, name, model_type, extra):
    hf = save_tiny_hf(tmp_path, model_type, **extra)
    ours = load_model(str(tmp_path)).eval()
    ids, mask, pos = left_padded_batch([7, 3, 11, 1], hf.config.vocab_size)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask.long(), position_ids=pos).logits
        got = ours(ids, positions=pos, mask=mask)
    assert got.shape == ref.shape
    assert torch.isfinite(got).all()  # padded rows stay finite
    diff = (got - ref).abs()[mask].max().item()
    assert diff <= 1e-4, diff


@pytest.mark.parametrize("name,model_type,extra", VARIANTS[:3], ids=[v[0] for v in VARIANTS[:3]])
def test_unpadded_forward_matches_and_public_api(tmp_path, name, model_type, extra):
    hf = save_tiny_hf(tmp_path, model_type, **extra)
    ids = torch.randint(0, hf.config.vocab_size, (2, 9))
    with torch.no_grad():
        assert (load_model(str(tmp_path))(ids) - hf(ids).logits).abs().max() <= 1e-4


def test_head_gets_the_lm_head_input_and_weight(tmp_path):
    save_tiny_hf(tmp_path, "qwen3", num_attention_heads=4, num_key_value_heads=2)
    m = load_model(str(tmp_path))
    ids = torch.randint(0, 97, (2, 5))
    at = torch.tensor([[False, True, True, False, True], [True, False, False, False, True]])
    with torch.no_grad():
        h, w = m(ids, logits_at=at, head=lambda hidden, weight: (hidden, weight))
        assert h.shape == (5, 48) and w is m.lm_head.weight
        torch.testing.assert_close(h @ w.t(), m(ids)[at])


@pytest.mark.parametrize("decode_step", [False, True], ids=["forward", "decode-step"])
def test_kv_cache_incremental_equals_full_forward(tmp_path, decode_step):
    from adamame.model import KVCache

    save_tiny_hf(tmp_path, "qwen2", num_attention_heads=6, num_key_value_heads=2)
    m = load_model(str(tmp_path)).eval()
    ids, mask, pos = left_padded_batch([6, 2, 4], 97, seed=3)
    extra = torch.randint(0, 97, (3, 4))
    full_ids = torch.cat([ids, extra], 1)
    full_mask = torch.cat([mask, torch.ones_like(extra, dtype=torch.bool)], 1)
    full_pos = (full_mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = KVCache.allocate(m.config, 3, full_ids.shape[1], torch.float32, "cpu")
    with torch.no_grad():
        ref = m(full_ids, positions=full_pos, mask=full_mask)
        steps = [m(ids, positions=pos, mask=mask, cache=cache, start=0)[:, -1:]]
        T = ids.shape[1]
        paged = paged_copy(cache)  # the generator's cache: blocks through a table
        for j in range(extra.shape[1]):
            if decode_step:  # the generator's step: slot on the device, attention over the whole cache
                steps.append(m.decode_step(extra[:, j], full_pos[:, T + j], paged, torch.full((3,), T + j), 3,
                                           full_ids.shape[1])[:, None])
            else:
                steps.append(m(extra[:, j:j + 1], positions=full_pos[:, T + j:T + j + 1], cache=cache, start=T + j))
    inc = torch.cat(steps, 1)
    assert (inc - ref[:, T - 1:]).abs().max() <= 1e-4


def test_bfloat16_load_keeps_rope_in_float32(tmp_path):
    save_tiny_hf(tmp_path, "llama", num_attention_heads=4, num_key_value_heads=2)
    m = load_model(str(tmp_path), dtype=torch.bfloat16)
    assert m.inv_freq.dtype == torch.float32
    assert m.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    ref = load_model(str(tmp_path))
    torch.testing.assert_close(m.inv_freq, ref.inv_freq)


def test_old_style_rope_fields_parse_like_new_ones():
    base = dict(model_type="llama", vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2)
    scaling = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)
    old = ModelConfig.from_dict({**base, "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", **scaling}})
    new = ModelConfig.from_dict({**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **scaling}})
    assert (old.rope_theta, old.rope_scaling) == (new.rope_theta, new.rope_scaling) == (5e5, scaling)


@pytest.mark.parametrize("name,model_type,extra", [VARIANTS[0], VARIANTS[2], VARIANTS[5]],
                         ids=[VARIANTS[i][0] for i in (0, 2, 5)])
def test_save_model_round_trips_through_transformers(tmp_path, name, model_type, extra):
    from transformers import AutoModelForCausalLM

    save_tiny_hf(tmp_path / "src", model_type, **extra)
    ours = load_model(str(tmp_path / "src"))
    save_model(ours, str(tmp_path / "out"))
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), attn_implementation="eager").float().eval()
    ids = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max() <= 1e-5
        assert (load_model(str(tmp_path / "out"))(ids) - ours(ids)).abs().max() == 0


def test_sharded_checkpoint_saves_and_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    save_tiny_hf(tmp_path / "src", "qwen2", num_attention_heads=4, num_key_value_heads=2)
    ours = load_model(str(tmp_path / "src"))
    save_model(ours, str(tmp_path / "out"), max_shard_bytes=20_000)
    files = sorted(os.listdir(tmp_path / "out"))
    assert "model.safetensors.index.json" in files and "model.safetensors" not in files
    assert sum(f.endswith(".safetensors") for f in files) > 2
    ids = torch.randint(0, 97, (1, 6))
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).float().eval()
    with torch.no_grad():
        assert (load_model(str(tmp_path / "out"))(ids) - ours(ids)).abs().max() == 0
        assert (hf(ids).logits - ours(ids)).abs().max() <= 1e-5


def test_transformers_sharded_checkpoint_loads(tmp_path):
    hf = save_tiny_hf(tmp_path / "a", "qwen3", num_attention_heads=4, num_key_value_heads=2)
    hf.save_pretrained(tmp_path / "b", max_shard_size="20KB")
    assert os.path.exists(tmp_path / "b" / "model.safetensors.index.json")
    ids = torch.randint(0, 97, (1, 6))
    with torch.no_grad():
        assert (load_model(str(tmp_path / "b"))(ids) - hf(ids).logits).abs().max() <= 1e-4


# ---- bad input: one clear error naming the file and the tensor ----

def test_missing_config_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))


def test_unsupported_model_type(tmp_path):
    save_tiny_hf(tmp_path, "qwen2", num_attention_heads=4, num_key_value_heads=2)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config.json.*unsupported model_type 'gpt2'"):
        load_model(str(tmp_path))


def test_missing_weights_file(tmp_path):
    save_tiny_hf(tmp_path, "qwen2", num_attention_heads=4, num_key_value_heads=2)
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_model(str(tmp_path))


def _rewrite(tmp_path, edit):
    from safetensors.torch import load_file, save_file

    fn = str(tmp_path / "model.safetensors")
    sd = load_file(fn)
    edit(sd)
    save_file(sd, fn, metadata={"format": "pt"})
    return fn


def test_missing_tensor_is_named(tmp_path):
    save_tiny_hf(tmp_path, "qwen2", num_attention_heads=4, num_key_value_heads=2)
    _rewrite(tmp_path, lambda sd: sd.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(ValueError, match=r"missing tensor 'model.layers.1.self_attn.k_proj.bias'"):
        load_model(str(tmp_path))


def test_extra_tensor_is_named(tmp_path):
    save_tiny_hf(tmp_path, "qwen3", num_attention_heads=4, num_key_value_heads=2)
    fn = _rewrite(tmp_path, lambda sd: sd.__setitem__("model.layers.0.mlp.extra.weight", torch.zeros(2)))
    with pytest.raises(ValueError, match=rf"{fn}: unexpected tensor 'model.layers.0.mlp.extra.weight'"):
        load_model(str(tmp_path))


def test_misshapen_tensor_is_named(tmp_path):
    save_tiny_hf(tmp_path, "llama", num_attention_heads=4, num_key_value_heads=2)
    fn = _rewrite(tmp_path, lambda sd: sd.__setitem__("model.norm.weight", torch.zeros(47)))
    with pytest.raises(ValueError, match=rf"{fn}: tensor 'model.norm.weight' has shape \[47\], expected \[48\]"):
        load_model(str(tmp_path))


def test_meta_build_loads_nothing_until_materialised(tmp_path):
    from adamame.hf import load_weights

    save_tiny_hf(tmp_path, "qwen3", num_attention_heads=4, num_key_value_heads=2)
    m = load_model(str(tmp_path), meta=True)
    assert all(p.is_meta for p in m.parameters())
    m.to_empty(device="cpu")
    load_weights(m, str(tmp_path))
    ids = torch.randint(0, 97, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(m(ids), load_model(str(tmp_path))(ids), rtol=0, atol=0)


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_exported_files_follow_the_umask(tmp_path, umask):
    """Every file of an export (weights, shards, index, config, tokenizer) and the checkpoint gets 0o666 & ~umask,
    as `open()` gives: safetensors >= 0.8 alone would make the weights 0600, unreadable to a shared cluster's team."""
    from adamame.checkpoint import atomic_save
    from tests.helpers import save_tiny_tokenizer

    save_tiny_hf(tmp_path / "src", "qwen3")
    model = load_model(str(tmp_path / "src"))
    old = os.umask(umask)
    try:
        save_model(model, str(tmp_path / "one"))
        save_tiny_tokenizer(tmp_path / "one")  # the tokenizer's save_pretrained, as export_hf calls it
        save_model(model, str(tmp_path / "sharded"), max_shard_bytes=20_000)
        atomic_save({"model": model.state_dict()}, str(tmp_path / "ckpt" / "checkpoint.pt"))
    finally:
        os.umask(old)
    files = [p for d in ("one", "sharded", "ckpt") for p in (tmp_path / d).iterdir()]
    assert any(p.name.endswith(".safetensors") for p in files) and any(p.name == "tokenizer.json" for p in files)
    assert len([p for p in files if p.parent.name == "sharded" and p.suffix == ".safetensors"]) > 1
    modes = {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
