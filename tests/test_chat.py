import pytest

from adamame.chat import PLAIN_TEMPLATE, encode_prompt, load_tokenizer, render_prompt
from tests.helpers import save_tiny_tokenizer


def test_chat_template_renders_generation_prompt_with_think(tmp_path):
    save_tiny_tokenizer(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    text = render_prompt(tok, "Combien font 3 plus 4 ?")
    assert text == "<|im_start|>user\nCombien font 3 plus 4 ?<|im_end|>\n<|im_start|>assistant\n<think>\n"
    ids = encode_prompt(tok, "Combien font 3 plus 4 ?")
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids("<think>") in ids


def test_plain_fallback_without_template(tmp_path):
    save_tiny_tokenizer(tmp_path, chat_template=None)
    tok = load_tokenizer(str(tmp_path))
    assert render_prompt(tok, "What is 2 + 2?") == PLAIN_TEMPLATE.format(prompt="What is 2 + 2?")


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_tokenizer(str(tmp_path / "nope"))
