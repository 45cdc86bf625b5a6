"""The readability rules the code keeps (issue #46), read with ast so that they hold as the code changes.

- No library function takes more than 6 positional parameters (self aside): the rest are keyword-only. Exempt: Triton
  kernels and jit helpers, torch.library ops and their registrations (launchers), a `<op>_torch` reference that
  mirrors such an op's signature, autograd.Function and nn.Module forward/backward.
- At most 12 imports sit inside functions (optional packages, heavy ones, the demo's entry script), each with a
  comment on its line saying why it is there.
- The update reads like the loss: train_grpo.ppo_update <= 45 lines; generate.py, the engine only, <= 520 lines.
- The README's prose averages at most 20 words a sentence, with sentences split at semicolons (bench/prose.py).
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(os.path.join("adamame", f) for f in os.listdir(os.path.join(ROOT, "adamame")) if f.endswith(".py")) \
    + ["train_grpo.py", "train_sft.py", "evaluate.py"]
OP_DECORATORS = ("jit", "custom_op", "register_fake", "register_kernel", "register_autograd")


def functions(path):
    """(function node, enclosing class or None) for every function of a file, nested ones included."""
    def walk(node, cls):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield child, cls
            yield from walk(child, child if isinstance(child, ast.ClassDef) else cls)
    return list(walk(ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read()), None))


def positional(fn) -> int:
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    return len(names) - (names[:1] in (["self"], ["cls"]))


def test_no_library_function_takes_more_than_6_positional_parameters():
    over = []
    for path in FILES:
        fns = functions(path)
        ops = {fn.name for fn, _ in fns
               if any(d in ast.unparse(dec) for dec in fn.decorator_list for d in OP_DECORATORS)}
        for fn, cls in fns:
            exempt = (fn.name in ops or fn.name.startswith("_launch") or fn.name.removesuffix("_torch") in ops
                      or any(d in ast.unparse(dec) for dec in fn.decorator_list for d in OP_DECORATORS)
                      or (cls is not None and fn.name in ("forward", "backward", "setup_context")))
            if positional(fn) > 6 and not exempt:
                over.append(f"{path}:{fn.lineno} {fn.name} ({positional(fn)})")
    assert not over, "more than 6 positional parameters (make the rest keyword-only): " + ", ".join(over)


def test_imports_inside_functions_are_few_and_say_why():
    inside, silent = [], []
    for path in FILES:
        lines = open(os.path.join(ROOT, path), encoding="utf-8").read().splitlines()
        for fn, _ in functions(path):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and node not in inside:
                    inside.append(node)
                    if "#" not in lines[node.end_lineno - 1]:
                        silent.append(f"{path}:{node.lineno}")
    assert len(inside) <= 12, f"{len(inside)} imports inside functions (at most 12): move the others to the top"
    assert not silent, "an import inside a function needs a comment saying why: " + ", ".join(silent)


def test_the_update_and_the_engine_stay_short():
    fn = next(fn for fn, _ in functions("train_grpo.py") if fn.name == "ppo_update")
    assert fn.end_lineno - fn.lineno + 1 <= 45, "ppo_update grew past 45 lines"
    with open(os.path.join(ROOT, "adamame", "generate.py"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) <= 520, "generate.py grew past 520 lines"


def test_the_readme_reads_in_short_sentences():
    from bench.prose import END, prose, sentences

    body = prose(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read())
    words = sum(1 for t in body.split() if any(c.isalnum() for c in t))
    assert words / sentences(body) <= 20, f"README: {words / sentences(body):.1f} words a sentence"
    assert body.count(";") <= words / 200, "README: split sentences at semicolons"
    # the counter can fail: one long sentence is one sentence, a semicolon ends one
    assert sentences(prose("One two three, four five six. Seven eight; nine.")) == 3
    assert sentences(prose("A run of `a.b; c.d` code. And e.g. this."), END) == 2
