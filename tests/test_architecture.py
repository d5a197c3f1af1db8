"""The architecture holds: the import contracts of .importlinter (layers, no cycles, a Paddle-free
deployment side), short functions, and every sub-package described where a newcomer looks."""
import ast
import configparser
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

MAX_FUNCTION_LINES = 80
CONTRACTS = os.path.join(ROOT, ".importlinter")


def lint_imports(root):
    """`lint-imports` on the `utils` package under `root`, with the repository's contracts."""
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())", "--config", CONTRACTS, "--no-cache"],
                          cwd=root, env=dict(os.environ, PYTHONPATH=root), capture_output=True, text=True)


def sub_packages():
    return sorted(os.path.basename(os.path.dirname(path)) for path in glob.glob(os.path.join(ROOT, "utils", "*",
                                                                                           "__init__.py")))


def test_the_import_contracts_hold():
    pytest.importorskip("importlinter")
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and result.stdout.count("KEPT") == 3, result.stdout[-2000:]


@pytest.mark.parametrize("importer, line", [
    ("utils/task/decoding.py", "from ..training import run  # an upward import"),
    ("utils/dataset/labels.py", "from .folder import load_dataset_dir  # folder imports labels: a cycle"),
    ("utils/deploy/format.py", "import paddle  # the deployment side loads Paddle"),
], ids=["upward", "cycle", "paddle"])
def test_the_contracts_catch_an_upward_import_a_cycle_and_paddle_in_deployment(tmp_path, importer, line):
    """The check can fail: the same contracts on a copy of utils/ with one bad import added."""
    pytest.importorskip("importlinter")
    shutil.copytree(os.path.join(ROOT, "utils"), tmp_path / "utils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / importer, "a", encoding="utf-8") as fp:
        fp.write("\n" + line + "\n")
    result = lint_imports(str(tmp_path))
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout[-2000:]


def test_every_sub_package_is_in_the_layers_contract():
    """A new sub-package cannot escape the layering: the contract names each one."""
    config = configparser.ConfigParser()
    config.read(CONTRACTS)
    layered = {name.strip().split(".")[1] for layer in config["importlinter:contract:layers"]["layers"].split("\n")
               for name in layer.split("|") if name.strip()}
    assert set(sub_packages()) <= layered, set(sub_packages()) - layered
    modules = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "utils", "*.py"))} - {"__init__"}
    assert modules <= layered, modules - layered


def test_no_product_function_is_longer_than_80_lines():
    long = []
    for path in sorted(glob.glob(os.path.join(ROOT, "utils", "**", "*.py"), recursive=True)
                       + glob.glob(os.path.join(ROOT, "*.py"))):
        with open(path, encoding="utf-8") as fp:
            tree = ast.parse(fp.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "\n".join(long)


def test_every_sub_package_says_what_it_is_and_architecture_md_has_its_row():
    with open(os.path.join(ROOT, "ARCHITECTURE.md"), encoding="utf-8") as fp:
        architecture = fp.read()
    for name in sub_packages():
        with open(os.path.join(ROOT, "utils", name, "__init__.py"), encoding="utf-8") as fp:
            assert ast.get_docstring(ast.parse(fp.read())), f"utils/{name}/__init__.py: no docstring"
        assert f"| `{name}/`" in architecture, f"ARCHITECTURE.md: no row for utils/{name}/"


def test_test_files_have_unique_names_so_the_whole_suite_collects():
    """pytest imports test modules by basename (no __init__.py under tests/): two files of one name
    each pass alone and break the suite's collection."""
    seen = {}
    for path in sorted(Path(ROOT, "tests").rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]} share a name"
        seen[path.name] = path
