"""No file the project runs as a script may shadow an installed module.

`python bench/X.py` puts `bench/` first on `sys.path`, so a `bench/kernels.py` is what `import kernels` finds, even
when the import happens deep inside transformers (which imports the `kernels` package since 5.x). The same holds for
the root (`python train_grpo.py`), `tests/` (`python tests/paper_eval.py`) and `tests/scripts/`. The check is against what is installed *now*, so a new
dependency of a dependency that takes one of our names fails here, not in a user's run.
"""
import importlib.metadata
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT_FOLDERS = ["", "bench", "tests", os.path.join("tests", "scripts")]  # every folder with files run as `python F`
ACCEPTED = {("", "evaluate")}  # the design card fixes evaluate.py's name; it shadows Hugging Face's `evaluate`


def importable_names(folder: str) -> set[str]:
    """What `import NAME` finds in `folder` when it is first on sys.path: modules and regular packages."""
    names = set()
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        if entry.endswith(".py") and os.path.isfile(path):
            names.add(entry[:-3])
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            names.add(entry)
    return names


def clashes(root: str) -> list[str]:
    taken = set(importlib.metadata.packages_distributions()) | set(sys.stdlib_module_names)
    return sorted(os.path.join(folder, name) for folder in SCRIPT_FOLDERS
                  for name in importable_names(os.path.join(root, folder))
                  if name in taken and (folder, name) not in ACCEPTED)


def test_no_script_folder_shadows_an_installed_module():
    found = clashes(ROOT)
    assert not found, f"rename these: run as scripts, they shadow installed modules: {found}"


def test_the_check_finds_a_clash(tmp_path):
    """A bench script named like an installed package, a root module named like a stdlib one, and a package folder
    named like one are all found; evaluate.py is the one accepted name."""
    for folder in SCRIPT_FOLDERS:
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / "bench" / "torch.py").write_text("")
    (tmp_path / "json.py").write_text("")
    (tmp_path / "evaluate.py").write_text("")
    (tmp_path / "tests" / "scripts" / "numpy").mkdir(parents=True)
    (tmp_path / "tests" / "scripts" / "numpy" / "__init__.py").write_text("")
    (tmp_path / "bench" / "not_a_module_name_anyone_uses.py").write_text("")
    assert clashes(str(tmp_path)) == sorted(["bench/torch", "json", "tests/scripts/numpy"])


def test_no_library_module_shadows_an_installed_one():
    """A module of adamame/ copied flat beside a user's script (rewards.py, grpo_kernels.py) is what `import NAME`
    finds there, even inside transformers: no module may have the name of an installed top-level module (kernels.py
    shadowed Hugging Face's `kernels` package that transformers 5 imports)."""
    taken = set(importlib.metadata.packages_distributions()) | set(sys.stdlib_module_names)
    found = sorted(importable_names(os.path.join(ROOT, "adamame")) & taken)
    assert not found, f"rename these adamame/ modules: copied flat, they shadow installed modules: {found}"
