"""Every module copies into another project with the siblings its docstring names, and works there.

Each module's docstring has an "Imports:" line; after "adamame:" it names the sibling modules the module imports (an
optional one followed by "(optional"). `test_imports_lines_name_exactly_the_sibling_imports` holds those lines to the
code, read with ast: every sibling import is named, every named sibling is imported, and sibling imports sit at the
top of the file (an optional one inside a top-level try), relative (`from .x import y`), so that a copy works in a
package of any name. `test_a_copied_unit_works` copies a module with the closure of the required siblings the lines
name into an empty folder, as a package named `mylib`, and runs a documented use (its `adamame` read as `mylib`) in a
fresh process whose path holds only that folder and the installed packages (no TRITON_INTERPRET: a CPU machine as a
copier has it). Extend USES when a module gains a use worth showing; every module's unit is at least imported.
"""
import ast
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "adamame")
MODULES = sorted(f[:-3] for f in os.listdir(PKG) if f.endswith(".py") and f != "__init__.py")

USES = {
    "rewards": """
import sys
from adamame.rewards import advantages
adv = advantages(correct=[1, 1, 0, 1], langs=["th", "en", "th", "en"], query_langs=["th"] * 4,
                 group_ids=[7, 7, 7, 7], step=45, total_steps=90)
# s = [1 + 2 * 0.5, 1, 0, 1] = [2, 1, 0, 1]: mean 1, unbiased std sqrt(2/3)
assert abs(adv[0] - 1 / (2 / 3) ** 0.5) < 1e-5 and adv[1] == 0 and abs(adv[2] + adv[0]) < 1e-12, adv
assert "sympy" not in sys.modules and "langid" not in sys.modules
""",
    "grpo_kernels": """
import torch
from adamame.grpo_kernels import policy_loss, token_logprobs
logits, targets = torch.randn(2, 3, 11), torch.randint(0, 11, (2, 3))
lp = token_logprobs(logits, targets)
assert torch.allclose(lp, torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0], atol=1e-6)
loss, stats = policy_loss(lp, torch.tensor([1.0, -1.0]), torch.ones(2, 3, dtype=torch.bool), ref_logprobs=lp - 0.1)
assert torch.isfinite(loss) and stats["kl"] > 0
""",
    "decode_attention": """
import torch
from adamame.decode_attention import decode_attention, decode_attention_torch
q, k, v = torch.randn(3, 4, 16), torch.randn(7 * 32, 2, 16), torch.randn(7 * 32, 2, 16)  # a pool of 7 blocks
table = torch.tensor([[3, 1], [0, 6], [2, 4]], dtype=torch.int32)  # each row's blocks
start, end = torch.tensor([0, 5, 0], dtype=torch.int32), torch.tensor([40, 17, 0], dtype=torch.int32)
out = decode_attention(q, k, v, table, start, end, 0.25)  # CPU tensors outside the Triton interpreter: the reference
assert torch.equal(out, decode_attention_torch(q, k, v, table, start, end, 0.25)) and out[2].abs().max() == 0
""",
    "paging": """
from adamame.paging import Scheduler
sched = Scheduler([40, 3], n=2, limits=[10, 10, 5, 5], blocks=8, check_every=4, max_rows=8)
look = sched.look(0, set())
assert look.prefill == [0, 1] and len(look.admitted) == 4 and not sched.waiting
assert sched.table_row(look.admitted[0])[:2] == sched.table_row(look.admitted[1])[:2]  # the shared prompt blocks
""",
    "sampler": """
import torch
from adamame.sampler import sample, sample_torch, seed_tensor
z = torch.randn(3, 5000)
inv_t, seed, ids, index = torch.tensor([1.25]), seed_tensor(7, "cpu"), torch.arange(3), torch.zeros(3, dtype=torch.long)
tok, lp = sample(z, inv_t, seed, ids, index, False)  # a CPU tensor outside the Triton interpreter: the reference
assert torch.equal(tok, sample_torch(z, inv_t, seed, ids, index, False)[0])
assert torch.allclose(lp, torch.log_softmax(z * 1.25, -1).gather(1, tok[:, None])[:, 0], atol=1e-5)
assert torch.equal(sample(z, inv_t, seed, ids, index, True)[0], z.argmax(1))
""",
    "answer": """
from adamame.answer import extract_answer, verify
assert verify(extract_answer("so \\\\boxed{\\\\frac{1}{2}}"), "0.5") and not verify("0.4", "0.5")
""",
    "lora": """
import torch
from adamame.lora import apply_lora, merged_state_dict, lora_scales
net = torch.nn.Module()
net.q_proj = torch.nn.Linear(8, 8)
apply_lora(net, 2, 4)
assert [n for n, p in net.named_parameters() if p.requires_grad] == ["q_proj.lora_A", "q_proj.lora_B"]
assert set(merged_state_dict(net.state_dict(), lora_scales(net))) == {"q_proj.weight", "q_proj.bias"}
""",
    "language": """
from adamame.language import reward_language, split_response
assert reward_language("Marie a trois pommes et en achète deux de plus, donc elle en a cinq.") == "fr"
assert split_response("<think>deux et trois </think> ok") == ("deux et trois", "ok")
""",
    "model": """
import torch
from adamame.model import ModelConfig, Transformer
cfg = ModelConfig.from_dict(dict(model_type="qwen3", vocab_size=97, hidden_size=48, intermediate_size=80,
                                 num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, head_dim=8))
model, ids = Transformer(cfg), torch.randint(0, 97, (2, 5))
logits = model(ids)
assert logits.shape == (2, 5, 97)
assert torch.allclose(model.merge_projections()(ids), logits, atol=1e-5)  # the rollout copy's layout
""",
    "layer_kernels": """
import torch
from adamame.layer_kernels import add_rmsnorm, add_rmsnorm_torch, silu_mul
x, r, w = torch.randn(3, 40), torch.randn(3, 40), torch.rand(40)
out, s = add_rmsnorm(x, r, w, 1e-6)  # a CPU tensor outside the Triton interpreter: the reference
assert torch.equal(s, x + r) and torch.equal(out, add_rmsnorm_torch(x, r, w, 1e-6)[0])
assert torch.allclose(silu_mul(x, r), torch.nn.functional.silu(x) * r)
""",
    "hf": """
import os, tempfile, torch
from adamame.hf import load_model, save_model
from adamame.model import ModelConfig, Transformer
cfg = ModelConfig.from_dict(dict(model_type="qwen2", vocab_size=97, hidden_size=48, intermediate_size=80,
                                 num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2))
model, folder = Transformer(cfg), tempfile.mkdtemp()
save_model(model, folder, max_shard_bytes=50_000)
assert sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))[0].startswith("model-00001-of-")
again = load_model(folder)
assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
""",
    "scoring": """
from adamame.scoring import score_record, summarize
rec = score_record({"lang": "fr", "answer": "5", "candidates": [
    "Marie a trois pommes et en reçoit deux de plus, donc elle en a cinq.\\n</think>\\n\\\\boxed{5}",
    "Mary has three apples and gets two more.\\n</think>\\n\\\\boxed{6}"]})
m = summarize([rec], 2)["languages"]["fr"]
assert m["pass@1"] == 0.5 and m["lang_match"] == 0.5, m
""",
    "data": """
import json, os, tempfile
from adamame.data import DataError, read_questions
path = os.path.join(tempfile.mkdtemp(), "q.jsonl")
open(path, "w").write(json.dumps({"id": "1", "lang": "ru", "question": "2 + 2?", "answer": "4"}) + "\\n{bad\\n")
try:
    read_questions(path)
    raise SystemExit("a malformed line was read")
except DataError as e:
    assert str(e).startswith(path + ":2: malformed JSON"), e
""",
    "memory": """
from adamame.memory import grpo_plan
from adamame.model import ModelConfig
cfg = ModelConfig.from_dict(dict(model_type="qwen3", vocab_size=97, hidden_size=48, intermediate_size=80,
                                 num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, head_dim=8))
plan = grpo_plan(cfg, world=1, total=2**30, device="cpu", prompts_per_step=4, group_size=4, max_prompt_tokens=16,
                 max_response_tokens=16, micro_batch_tokens=256, lora_rank=4, beta=0.001)
assert plan.fits and plan.rollout_rows == 16, plan
""",
    "checkpoint": """
import os, tempfile, torch
from adamame.checkpoint import atomic_save, load
path = os.path.join(tempfile.mkdtemp(), "state", "checkpoint.pt")
atomic_save({"step": 3, "w": torch.arange(4)}, path)
assert load(path)["step"] == 3 and os.listdir(os.path.dirname(path)) == ["checkpoint.pt"]
""",
    "toy": """
from adamame import toy
rows = toy.rl_rows("train")
assert {r["lang"] for r in rows} == set(toy.LANGS) and all(r["prompt"] and r["answer"] for r in rows)
""",
    "generate": """
import torch
from adamame.generate import generate
from adamame.model import ModelConfig, Transformer
cfg = ModelConfig.from_dict(dict(model_type="qwen3", vocab_size=97, hidden_size=48, intermediate_size=80,
                                 num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, head_dim=8))
torch.manual_seed(0)
model = Transformer(cfg).eval()
samples = generate(model, [[1, 2, 3], [4]], max_new_tokens=5, n=2, temperature=0.8, seed=0)
assert len(samples) == 4 and all(len(s.tokens) == 5 for s in samples)
small = generate(model, [[1, 2, 3], [4]], max_new_tokens=5, n=2, temperature=0.8, seed=0, cache_blocks=3)
assert [s.tokens for s in small] == [s.tokens for s in samples]  # a cache of 2 blocks: the same samples
""",
}


def imports_line(module: str, pkg: str = PKG) -> tuple[set, set]:
    """(required, optional) siblings named by the module's "Imports:" line."""
    doc = ast.get_docstring(ast.parse(open(os.path.join(pkg, module + ".py"), encoding="utf-8").read())) or ""
    m = re.search(r"^Imports:(.*?)(?:\n\n|\Z)", doc, re.S | re.M)
    assert m, f"adamame/{module}.py has no Imports: line"
    named = m.group(1).replace("\n", " ").split("adamame:", 1)
    required, optional = set(), set()
    if len(named) == 2:
        for part in re.split(r",\s*(?![^()]*\))", named[1].strip().rstrip(".")):  # commas outside parentheses
            (optional if "(optional" in part else required).add(re.match(r"\s*(\w+)", part).group(1))
    return required, optional


def sibling_imports(module: str, pkg: str = PKG) -> tuple[set, set, list]:
    """(top-level sibling imports, those inside a top-level try, line numbers of sibling imports anywhere else)."""
    tree = ast.parse(open(os.path.join(pkg, module + ".py"), encoding="utf-8").read())

    def siblings(node):
        if isinstance(node, ast.ImportFrom) and node.level == 1:  # from . import x / from .x import y
            return {a.name for a in node.names} if node.module is None else {node.module.split(".")[0]}
        if isinstance(node, ast.ImportFrom) and node.module == "adamame":
            return {a.name for a in node.names}
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("adamame."):
            return {node.module.split(".")[1]}
        if isinstance(node, ast.Import):
            return {a.name.split(".")[1] for a in node.names if a.name.startswith("adamame.")}
        return set()

    top, optional, late = set(), set(), []
    for node in tree.body:
        top |= siblings(node)
        if isinstance(node, ast.Try):
            for sub in node.body:
                optional |= siblings(sub)
    seen_top = {id(n) for n in tree.body} | {id(s) for n in tree.body if isinstance(n, ast.Try) for s in n.body}
    late = [n.lineno for n in ast.walk(tree) if siblings(n) and id(n) not in seen_top]
    return top, optional, late


@pytest.mark.parametrize("module", MODULES)
def test_imports_lines_name_exactly_the_sibling_imports(module):
    required, optional = imports_line(module)
    top, top_optional, late = sibling_imports(module)
    text = open(os.path.join(PKG, module + ".py"), encoding="utf-8").read()
    assert not re.search(r"^\s*(from adamame\b|import adamame\b)", text, re.M), (
        f"adamame/{module}.py imports a sibling by the package's name: a copy into another package cannot find it")
    assert not late, f"adamame/{module}.py imports siblings inside functions, at lines {late}"
    assert (required, optional) == (top, top_optional), (
        f"adamame/{module}.py: its Imports: line names {sorted(required)} (optional {sorted(optional)}), the code "
        f"imports {sorted(top)} (optional {sorted(top_optional)})")


def closure(module: str, pkg: str = PKG) -> set:
    unit, todo = {module}, [module]
    while todo:
        for sibling in imports_line(todo.pop(), pkg)[0] - unit:
            unit.add(sibling)
            todo.append(sibling)
    return unit


# The modules a reader most often copies alone, and the most siblings each may need (issue #46: data.py pulled 7
# modules and language.py the 905-line answer checker).
SMALL_UNITS = {"data": 1, "language": 0, "rewards": 0, "paging": 0, "lora": 0, "chat": 0}


@pytest.mark.parametrize("module", sorted(SMALL_UNITS))
def test_small_modules_copy_with_few_siblings(module):
    siblings = closure(module) - {module}
    assert len(siblings) <= SMALL_UNITS[module], f"adamame/{module}.py now needs {sorted(siblings)} to be copied"


def run_copied(unit: set, code: str, tmp_path, src: str = PKG, name: str = "mylib") -> subprocess.CompletedProcess:
    """The unit copied into tmp_path/<name>/ (a package of another name than adamame), `code` run against it."""
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for module in unit:
        (pkg / f"{module}.py").write_bytes(open(os.path.join(src, module + ".py"), "rb").read())
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH", "ADAMAME_KERNELS")}
    prelude = f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
    code = re.sub(r"\badamame\b", name, code)
    return subprocess.run([sys.executable, "-I", "-c", prelude + code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("module", sorted(USES))
def test_a_copied_unit_works(module, tmp_path):
    unit = closure(module)
    r = run_copied(unit, USES[module], tmp_path)
    assert r.returncode == 0, f"{sorted(unit)}: {r.stderr[-3000:]}"


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_from_its_copied_unit(module, tmp_path):
    """Modules without a use above: their copied unit (the module and the closure of its named siblings) imports."""
    unit = closure(module)
    r = run_copied(unit, f"import adamame.{module}\n", tmp_path)
    assert r.returncode == 0, f"{sorted(unit)}: {r.stderr[-3000:]}"


def test_the_copy_test_fails_when_a_unit_needs_an_unnamed_sibling(tmp_path):
    """rewards.py re-importing answer.py (the re-export this test was written against), run through the same
    machinery: its Imports: line no longer matches the code, and its copied unit fails its use."""
    src = tmp_path / "src"
    src.mkdir()
    text = open(os.path.join(PKG, "rewards.py"), encoding="utf-8").read()
    assert "from adamame.answer import" not in text
    (src / "rewards.py").write_text(text.replace("import numpy as np\n", "import numpy as np\n\n"
                                                 "from .answer import verify  # noqa: F401\n", 1))
    assert imports_line("rewards", str(src)) != sibling_imports("rewards", str(src))[:2]
    r = run_copied(closure("rewards", str(src)), USES["rewards"], tmp_path, str(src))
    assert r.returncode != 0 and "No module named 'mylib.answer'" in r.stderr
