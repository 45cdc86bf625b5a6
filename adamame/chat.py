"""Tokenizer loading and prompt rendering: the one place the chat template is applied.

Why: the recipe's prompt is "localized instruction + \\n\\n + question" rendered with the model's own chat
template, and reasoning-model templates end the generation prompt with `<think>\\n`, so the trace the model
writes starts right after the prompt. A tokenizer folder without a template (a bare base model) gets a plain
"Question/Answer" rendering instead, so nothing fails for lack of a template.

Imports: transformers (AutoTokenizer; templates are rendered by its jinja2 engine).
"""

import os

PLAIN_TEMPLATE = "Question: {prompt}\nAnswer: "  # used only when the tokenizer has no chat template


def load_tokenizer(path: str):
    """The tokenizer saved in a model folder, read from local files only (no hub access)."""
    from transformers import AutoTokenizer  # ~0.7 s to import: only when a tokenizer is loaded, not for --help

    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: model folder not found")
    files = [os.path.join(path, f) for f in ("tokenizer.json", "tokenizer_config.json")]
    if not any(os.path.isfile(f) for f in files):
        raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer_config.json")
    for f in files:
        if os.path.isfile(f) and os.path.getsize(f) == 0:
            raise ValueError(f"{f}: empty file (the tokenizer cannot be read)")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # a corrupt or foreign tokenizer file: name the folder, not a stack trace
        raise ValueError(f"{path}: the tokenizer cannot be read ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''})") from None


def render_prompt(tokenizer, prompt: str) -> str:
    """The text the model sees before its response: the user turn plus the generation prompt."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return PLAIN_TEMPLATE.format(prompt=prompt)


def encode_prompt(tokenizer, prompt: str) -> list:
    """Token ids of the rendered prompt. A chat template already holds any BOS token, so none is added again."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    return tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=not has_template)["input_ids"]


def tokenize_sft(tokenizer, ex) -> tuple:
    """(input_ids, n_prompt): the rendered prompt followed by the target and the end-of-turn token.

    The target starts inside `<think>` when the chat template's generation prompt already opened it;
    otherwise `<think>\\n` is put at the start of the target.
    """
    target = ex.target
    if "<think>" not in render_prompt(tokenizer, ex.prompt)[-20:] and not target.lstrip().startswith("<think>"):
        target = "<think>\n" + target
    p_ids = encode_prompt(tokenizer, ex.prompt)
    t_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        t_ids = t_ids + [tokenizer.eos_token_id]
    return p_ids + t_ids, len(p_ids)
