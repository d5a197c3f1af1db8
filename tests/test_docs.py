"""The docs cannot rot: every command in README.md and docs/**/*.md is run here, or parse-checked.

How a page is checked (docs/README.md, "Writing these pages", says the same for writers):

* Its ```bash and ```python blocks run in order in a sandbox directory of their own, laid out
  like the repository root (`make_sandbox`). Scripts and `python -m utils.X` run in-process
  (`run_cli(module.main, argv)`), `python serve.py` in its own process (in the background until
  the end of its block, then SIGTERM, which must exit 0), curl and a few shell tools as written.
  Every command must exit 0. A python block is executed, with one namespace per page.
* `<!-- docs-check: parse-only: REASON -->` right before a block: the block cannot run here (a
  GPU, a cluster, pip, make). Each command still goes through the real parser and checks of what
  it calls, so a renamed flag fails here: train.py's `parse_args` (as on a CUDA build of Paddle),
  the other scripts' parsers (utils.flags.parser), Paddle's launcher's parser, Ray Serve's `build_app`, `make -n`, the
  requirement files pip is given. A python block is compiled. Nothing runs.
* `<!-- docs-check: exit 2 -->` right before a block: each command must stop with exit code 2
  (the examples of errors).
* `<!-- docs-check: setup: trained [DIR] [no-export] -->` anywhere in a page: DIR (default
  ./checkpoints) starts as a copy of the suite's `trained` run (tests/conftest.py: train -> eval ->
  predict -> export on the keyword task, which is also the sandbox's ./data/tnews), with its
  export/ unless no-export.
* Every other fence names its language (```text for output, ```json, ```yaml, ...) and is not run;
  a fence without a language, or a command with no way to run, fails.

Commands are written for real use; `substitute` turns them into what runs here (SUBSTITUTIONS).
Pages that train are marked slow; `make docs-check` runs just this file.

`python tests/test_docs.py --write-reference` (`make docs-reference`) regenerates the flag
reference pages (docs/reference/cli/*.md) from the scripts' parsers; a test checks they are current.
"""
import argparse
import contextlib
import functools
import glob
import importlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import EXAMPLE_DATA, ROOT  # noqa: E402
from helpers import import_script  # noqa: E402

PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT)
                               for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
SCRIPTS = ("train", "export", "infer", "serve", "client", "explain", "ensemble", "pretrain", "multirun", "search", "annotate", "audit",
           "select")
SUBCOMMANDS = {"annotate": ("import", "export")}  # scripts whose first word is a command: a flag page per command
MODULES = ("utils.tiny_ernie", "utils.label_words")
# Scripts whose run trains or builds a model: a page that runs one is marked slow.
HEAVY = {"train", "export", "explain", "ensemble", "pretrain", "multirun", "search", "audit", "utils.label_words"}
SHELL_TOOLS = ("cut", "head", "cat", "echo", "printf", "wc", "ls", "mkdir", "cp")
# Run only with a parse-only marker (what they are checked with is in `parse_check`).
PARSE_ONLY_TOOLS = ("make", "pip", "ray", "serve", "kubectl")
FENCE_LANGUAGES = ("bash", "python", "text", "json", "yaml", "tsv")
MARKER = re.compile(r"<!--\s*docs-check:\s*(parse-only|exit|setup)\s*:?\s*(.*?)\s*-->")

SUBSTITUTIONS = """\
| written for real use                                  | run here                                           |
|-------------------------------------------------------|----------------------------------------------------|
| a built-in model name, `ernie-3.0-*-zh`               | the suite's tiny random ERNIE (`tiny_model_dir`)   |
| `--device gpu`                                        | `--device cpu`                                     |
| `--max_steps/--eval_steps/--save_steps/--logging_steps N` | N / 100, at least 1                            |
| `checkpoint-N` in a path                              | `checkpoint-(N / 100)`: the same point of the run  |
| `--num_train_epochs N`                                | 1                                                  |
| `--seeds a b c ...` (multirun.py)                     | the first one (each seed is a train.py process)    |
| `--n_trials N` (search.py)                            | 2 (each trial is a train.py process per seed)      |
| `--preset ernie-3.0-*` (utils.tiny_ernie)             | `--preset tiny`                                    |
| serve.py's `--port P` (or none: 8189)                 | `--port 0`: serve.py binds a free port, prints it  |
| `--port P` and `:P` in URLs of later commands         | the port that serve.py printed                     |
| `curl ...`                                            | `curl --fail ...`                                  |
"""
# And the sandbox's files stand in for the real data (`make_sandbox`).
BUILT_IN_MODEL = re.compile(r"^ernie-3\.0-(base|medium|mini|micro|nano|xbase)-zh$")
STEP_FLAGS = ("--max_steps", "--eval_steps", "--save_steps", "--logging_steps")
CHECKPOINT = re.compile(r"checkpoint-(\d+)")
PORT_IN_URL = re.compile(r"(?<=:)(\d{4,5})(?=/|$)")


def scaled(n: int) -> int:
    return max(1, n // 100)


# --- reading pages ----------------------------------------------------------------------------------------------


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    parse_only: Optional[str] = None  # the reason
    exit_code: int = 0

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass
class Page:
    path: str
    blocks: List[Block] = field(default_factory=list)
    setup: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)


def read_page(path: str) -> Page:
    page = Page(path)
    with open(os.path.join(ROOT, path), encoding="utf-8") as fp:
        lines = fp.read().split("\n")
    pending: Dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        for kind, value in MARKER.findall(line) if MARKER.fullmatch(line.strip()) else ():
            if kind == "setup":
                page.setup.append(value)
            else:
                pending[kind] = value
        fence = re.match(r"^(\s*)```(\S*)\s*$", line)
        if not fence:
            i += 1
            continue
        indent, language = fence.group(1), fence.group(2)
        body = []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        start = i - len(body)
        i += 1
        if language not in FENCE_LANGUAGES:
            page.problems.append(f"{path}:{start}: a fence must name its language, one of {FENCE_LANGUAGES} "
                                 f"(got {language!r}): commands in ```bash or ```python, output in ```text")
        block = Block(path, start, language, "\n".join(body))
        if "parse-only" in pending:
            block.parse_only = pending.pop("parse-only") or "?"
        if "exit" in pending:
            block.exit_code = int(pending.pop("exit"))
        if pending and language not in ("bash", "python"):
            page.problems.append(f"{path}:{start}: a docs-check marker before a ```{language} block")
        pending = {}
        page.blocks.append(block)
    return page


def logical_lines(block: Block):
    """The block's lines with continuation lines (ending in a backslash) joined."""
    current = ""
    for raw in block.text.split("\n"):
        current += raw
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        yield current
        current = ""


def commands(block: Block) -> List[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped, `&&` split."""
    out = []
    for line in logical_lines(block):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        command = []
        for word in words:
            if word == "&&":
                out.append(command)
                command = []
            else:
                command.append(word)
        out.append(command)
    return out


def raw_lines(block: Block) -> List[str]:
    """The block's command lines as written (for the shell tools), continuation lines joined."""
    return [line.strip() for line in logical_lines(block) if line.strip() and not line.strip().startswith("#")]


def env_prefix(argv: List[str]):
    """`VAR=value ... command args` -> `({VAR: value}, [command, args])`."""
    env = {}
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
        name, value = argv[0].split("=", 1)
        env[name] = value
        argv = argv[1:]
    return env, argv


def target(argv: List[str]):
    """What a command calls: `("script", name, args)`, `("module", name, args)`, `("launch", None, args)` or
    `("tool", name, args)`."""
    if argv[0] == "python":
        if len(argv) > 2 and argv[1] == "-m":
            if argv[2] == "paddle.distributed.launch":
                return "launch", None, argv[3:]
            return "module", argv[2], argv[3:]
        if len(argv) > 1 and argv[1].endswith(".py"):
            return "script", argv[1][:-3], argv[2:]
        return "python", None, argv[1:]
    return "tool", argv[0], argv[1:]


def page_is_slow(page: Page) -> bool:
    if page.setup:  # the `trained` fixture trains
        return True
    for block in page.blocks:
        if block.language != "bash" or block.parse_only:
            continue
        for argv in commands(block):
            kind, name, _ = target(env_prefix(argv)[1])
            if kind in ("script", "module") and name in HEAVY:
                return True
    return False


def page_params():
    params = []
    for path in PAGES:
        page = read_page(path)
        marks = [pytest.mark.slow] if page_is_slow(page) else []
        params.append(pytest.param(path, marks=marks, id=path))
    return params


# --- the sandbox ------------------------------------------------------------------------------------------------


def make_sandbox(base: str, tiny_model_dir: str, trained=None, setup=()) -> str:
    """A directory laid out like the repository root, with stand-ins for what the pages name:

    data/example, data/multilabel_example, data/hierarchical_example, data/label-studio-example   the repository's
    data/tnews/            the keyword task (utils.testing.synthetic) stands in for TNEWS, plus unlabeled.txt (texts
                           without labels) and splits/train_<i>.txt, dev_<i>.txt (i = 0, 1; FewCLUE's layout)
    data/*.txt             the keyword task again (upstream's `--data_dir ./data`)
    texts.txt              texts to classify (the keyword task's data.txt)
    checkpoints/           empty, or the suite's `trained` run (`setup: trained [DIR] [no-export]`: into DIR,
                           default checkpoints, without its export/ with no-export)
    ../shared/vocab/ernie-3.0-base-zh-vocab.txt   the tiny model's vocab
    """
    from utils.testing.synthetic import write_keyword_dataset

    root = os.path.join(base, "repo")
    os.makedirs(os.path.join(root, "checkpoints"))
    for name in ("example", "multilabel_example", "hierarchical_example", "label-studio-example"):
        shutil.copytree(os.path.join(os.path.dirname(EXAMPLE_DATA), name), os.path.join(root, "data", name))
    tnews = write_keyword_dataset(os.path.join(root, "data", "tnews"))
    write_keyword_dataset(os.path.join(root, "data"))
    more = write_keyword_dataset(os.path.join(base, "more"), seed=1)
    with open(os.path.join(more, "train.txt"), encoding="utf-8") as fp:
        texts = [line.split("\t")[0] for line in fp if line.strip()]
    with open(os.path.join(tnews, "unlabeled.txt"), "w", encoding="utf-8") as fp:
        fp.write("\n".join(texts) + "\n")
    with open(os.path.join(tnews, "train.txt"), encoding="utf-8") as fp:
        train = fp.read().splitlines()
    os.makedirs(os.path.join(tnews, "splits"))
    for i in range(2):
        with open(os.path.join(tnews, "splits", f"train_{i}.txt"), "w", encoding="utf-8") as fp:
            fp.write("\n".join(train[i::2]) + "\n")
        shutil.copy(os.path.join(tnews, "dev.txt"), os.path.join(tnews, "splits", f"dev_{i}.txt"))
    shutil.copy(os.path.join(tnews, "data.txt"), os.path.join(root, "texts.txt"))
    os.makedirs(os.path.join(base, "shared", "vocab"))
    shutil.copy(os.path.join(tiny_model_dir, "vocab.txt"),
                os.path.join(base, "shared", "vocab", "ernie-3.0-base-zh-vocab.txt"))
    for spec in setup:
        words = spec.split()
        if words[:1] != ["trained"] or len(words) > 3 or words.count("no-export") > 1:
            raise AssertionError(f"unknown docs-check setup {spec!r} (known: trained [DIR] [no-export])")
        ignore = [".ptuning.lock"] + (["export"] if "no-export" in words else [])
        dest = os.path.join(root, next((w for w in words[1:] if w != "no-export"), "checkpoints"))
        if os.path.isdir(dest) and not os.listdir(dest):
            os.rmdir(dest)
        shutil.copytree(trained[1], dest, ignore=shutil.ignore_patterns(*ignore))
    return root


# --- running ----------------------------------------------------------------------------------------------------


@dataclass
class Session:
    """A page's run: its sandbox, the python namespace, the servers started by the current block."""

    root: str
    tiny_model_dir: str
    namespace: dict = field(default_factory=dict)
    ports: Dict[str, str] = field(default_factory=dict)
    servers: list = field(default_factory=list)

    def substitute(self, argv: List[str], kind: str = "", name: Optional[str] = None) -> List[str]:
        """SUBSTITUTIONS, applied to one command's words."""
        out = []
        previous = None
        for i, word in enumerate(argv):
            if previous == "--preset" and name == "utils.tiny_ernie":
                word = "tiny"
            elif BUILT_IN_MODEL.match(word):
                word = self.tiny_model_dir
            elif previous == "--device" and word == "gpu":
                word = "cpu"
            elif previous in STEP_FLAGS and word.isdigit():
                word = str(scaled(int(word)))
            elif previous == "--num_train_epochs":
                word = "1"
            elif previous == "--port" and name == "serve":
                word = "0"  # any free port, bound by serve.py itself; start_server records which
            elif previous == "--port":
                word = self.port(word)
            word = CHECKPOINT.sub(lambda m: f"checkpoint-{scaled(int(m.group(1)))}", word)
            if "://" in word:
                word = PORT_IN_URL.sub(lambda m: self.port(m.group(1)), word)
            out.append(word)
            previous = argv[i]
        if name == "search" and "--n_trials" in out:
            out[out.index("--n_trials") + 1] = "2"
        if name == "multirun" and "--seeds" in out:
            start = out.index("--seeds") + 1
            end = start
            while end < len(out) and out[end].isdigit():
                end += 1
            out[start + 1:end] = []
        return out

    def port(self, written: str) -> str:
        """The port of the server the page started on `written` (serve.py binds port 0: no race)."""
        if written not in self.ports:
            raise AssertionError(f"port {written} is used before a serve.py of the page listens on it")
        return self.ports[written]


def run_in_process(module_name: str, argv: List[str], env: Dict[str, str]) -> int:
    from utils.errors import run_cli

    module = import_script(module_name)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        try:
            return run_cli(module.main, argv)
        except SystemExit as exc:  # --help
            return exc.code or 0


def start_server(session: Session, argv: List[str], where: str, written_port: str):
    """serve.py in its own process in the sandbox, returned once /ready answers 200."""
    import httpx

    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "serve.py"), *argv], cwd=session.root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = server.stdout.readline()  # serve.py prints {"url", "port", ...} once it listens, model loaded
    if not line:
        server.wait()
        raise AssertionError(f"{where}: serve.py {shlex.join(argv)} ended with {server.returncode} before it was "
                             f"ready:\n{server.stderr.read()}")
    listening = json.loads(line)
    session.servers.append((server, where))
    written = written_port
    session.ports[written] = str(listening["port"])
    assert httpx.get(listening["url"] + "/ready", timeout=None).status_code == 200, f"{where}: not ready"


def stop_servers(session: Session):
    """SIGTERM each server of the block: in-flight requests finish, then exit 0 (the documented shutdown)."""
    while session.servers:
        server, where = session.servers.pop()
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate()
        assert server.returncode == 0, f"{where}: serve.py exited {server.returncode} on SIGTERM:\n{err}"


def run_command(session: Session, argv: List[str], line: str, block: Block):
    env, argv = env_prefix(argv)
    kind, name, args = target(argv)
    where = block.where
    if any(word == "..." or word.startswith("...") for word in argv):
        raise AssertionError(f"{where}: `{line}`: write the whole command (`...` cannot run)")
    if kind == "script":
        assert name in SCRIPTS, f"{where}: unknown script {name}.py"
        written = args[args.index("--port") + 1] if "--port" in args[:-1] else "8189"  # serve.py's default
        args = session.substitute(args, kind, name)
        if name == "serve" and "--help" not in args:
            assert block.exit_code == 0, f"{where}: serve.py runs in the background; show its errors elsewhere"
            if "--port" not in args:
                args += ["--port", "0"]
            return start_server(session, args, where, written)
        code = run_in_process(name, args, env)
    elif kind == "module":
        assert name in MODULES, f"{where}: `python -m {name}` is not a documented module ({MODULES})"
        code = run_in_process(name, session.substitute(args, kind, name), env)
    elif kind == "tool" and name == "curl":
        words = session.substitute(args)
        code = subprocess.run(["curl", "--fail", *words], cwd=session.root, env=dict(os.environ, **env)).returncode
    elif kind == "tool" and name in SHELL_TOOLS:
        code = subprocess.run(["bash", "-c", line], cwd=session.root, env=dict(os.environ, **env)).returncode
    else:
        raise AssertionError(f"{where}: `{line}` has no way to run here: mark the block "
                             "`<!-- docs-check: parse-only: REASON -->` (see tests/test_docs.py)")
    assert code == block.exit_code, f"{where}: `{line}` exited {code}, expected {block.exit_code}"


def run_block(session: Session, block: Block):
    if block.language == "python":
        if block.parse_only:
            compile(block.text, block.where, "exec")
            return
        code = compile(block.text, block.where, "exec")
        exec(code, session.namespace)  # noqa: S102 (the docs' own examples)
        return
    if block.language != "bash":
        return
    try:
        for argv, line in zip(commands(block), split_lines(block)):
            if block.parse_only:
                parse_check(argv, line, block)
            else:
                run_command(session, argv, line, block)
    finally:
        stop_servers(session)


def split_lines(block: Block) -> List[str]:
    """The raw text of each command of `commands(block)` (for shell tools and messages)."""
    out = []
    for line in raw_lines(block):
        out.extend(part.strip() for part in line.split("&&"))
    return out


# --- parse-only ------------------------------------------------------------------------------------------------


class Parsed(BaseException):
    """Raised once a command's flags went through its parser and checks: nothing more runs."""


@contextlib.contextmanager
def stop_after_parsing():
    """Let the outermost parse (train.py's `parse_args`, any script's `Parser.parse`, an argparse parser) finish with
    its checks, then stop the command; Paddle counts as a CUDA build, as on the machines these commands are for."""
    import paddle

    import utils.flags.train
    from utils.flags.parser import Parser

    depth = [0]

    def stopping(original):
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            depth[0] += 1
            try:
                result = original(*args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                raise Parsed(result)
            return result

        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        for owner, name in ((argparse.ArgumentParser, "parse_args"), (Parser, "parse"),
                            (utils.flags.train, "parse_args")):
            mp.setattr(owner, name, stopping(getattr(owner, name)))
        mp.setattr(paddle, "is_compiled_with_cuda", lambda: True)
        yield


def parse_script(name: str, args: List[str], where: str):
    from utils.errors import run_cli

    module = import_script(name)
    err = io.StringIO()
    with stop_after_parsing(), contextlib.redirect_stderr(err):
        try:
            code = run_cli(module.main, args)
        except Parsed:
            return
    raise AssertionError(f"{where}: {name} {shlex.join(args)}: refused by its parser (exit {code}):\n{err.getvalue()}")


def parse_check(argv: List[str], line: str, block: Block):
    _, argv = env_prefix(argv)
    kind, name, args = target(argv)
    where = block.where
    if any(word == "..." or word.startswith("...") for word in argv):
        raise AssertionError(f"{where}: `{line}`: write the whole command (`...` cannot be checked)")
    if kind == "script":
        assert name in SCRIPTS, f"{where}: unknown script {name}.py"
        return parse_script(name, args, where)
    if kind == "module":
        assert name in MODULES, f"{where}: `python -m {name}` is not a documented module ({MODULES})"
        return parse_script(name, args, where)
    if kind == "launch":
        from paddle.distributed.launch.context.args_envs import parse_args as launch_args

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "argv", ["launch", *args])
            known, unknown = launch_args()
        assert not unknown, f"{where}: paddle.distributed.launch does not know {unknown}"
        script = os.path.basename(known.training_script)
        assert script.endswith(".py") and script[:-3] in SCRIPTS, f"{where}: launches {known.training_script}"
        return parse_script(script[:-3], known.training_script_args, where)
    if kind == "tool" and name == "make":
        for goal in args:
            result = subprocess.run(["make", "-n", "-C", ROOT, goal], capture_output=True, text=True)
            assert result.returncode == 0, f"{where}: make {goal}: {result.stderr}"
        return
    if kind == "tool" and name == "pip":
        for flag, value in zip(args, args[1:]):
            if flag in ("-r", "-c"):
                assert os.path.isfile(os.path.join(ROOT, value)), f"{where}: pip {flag} {value}: no such file"
        return
    if kind == "tool" and os.path.basename(name) == "label-studio":
        return parse_label_studio(args, where)
    if kind == "tool" and name == "serve" and args[:1] == ["run"]:
        return parse_serve_run(args[1:], where)
    if kind == "tool" and name == "ray" and "--" in args:  # ray job submit ... -- python infer.py ...
        return parse_check(args[args.index("--") + 1:], line, block)
    if kind == "tool" and name in PARSE_ONLY_TOOLS:
        assert shutil.which(name) or name in ("kubectl",) or shutil.which(os.path.join(os.path.dirname(
            sys.executable), name)), f"{where}: {name} is not installed with the Ray extra"
        return
    raise AssertionError(f"{where}: `{line}`: no parser to check it with (tests/test_docs.py `parse_check`)")


def parse_label_studio(args: List[str], where: str):
    """`label-studio COMMAND --flag ...` (docs/how-to/label-studio.md): every flag is one that the Label
    Studio environment's `label-studio COMMAND --help` lists (`make install-labelstudio` builds it)."""
    venv = os.path.join(ROOT, os.environ.get("PTUNING_LABEL_STUDIO_VENV", ".venv-labelstudio"))
    program = os.path.join(venv, "bin", "label-studio")
    assert os.access(program, os.X_OK), f"{where}: no Label Studio at {venv}: `make install-labelstudio` builds it"
    env = dict(os.environ, LATEST_VERSION_CHECK="false", COLLECT_ANALYTICS="false", SENTRY_DSN="")
    usage = subprocess.run([program, args[0], "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert usage.returncode == 0, f"{where}: label-studio {args[0]} --help: {usage.stderr[-2000:]}"
    for flag in (a.split("=", 1)[0] for a in args[1:] if a.startswith("-")):
        assert re.search(rf"(^|[\s,]){re.escape(flag)}([\s,=]|$)", usage.stdout, re.M), \
            f"{where}: label-studio {args[0]} has no {flag}"


def parse_serve_run(args: List[str], where: str):
    """`serve run [options] module:builder key=value ...`: the builder exists and takes the arguments."""
    path = next((a for a in args if re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", a)), None)
    assert path, f"{where}: serve run names no import path"
    module, attr = path.split(":")
    builder = getattr(importlib.import_module(module), attr)
    builder(dict(a.split("=", 1) for a in args[args.index(path) + 1:] if "=" in a))


# --- tests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", page_params())
def test_every_command_in_the_page_runs(path, tiny_model_dir, request, tmp_path, monkeypatch):
    page = read_page(path)
    assert not page.problems, "\n".join(page.problems)
    trained = request.getfixturevalue("trained") if page.setup else None
    root = make_sandbox(str(tmp_path), tiny_model_dir, trained, page.setup)
    monkeypatch.chdir(root)
    session = Session(root, tiny_model_dir)
    for block in page.blocks:
        run_block(session, block)


def test_every_block_is_run_or_parse_checked():
    """Fences name their language, and each bash command is one this file can run or parse-check."""
    problems = []
    for path in PAGES:
        page = read_page(path)
        problems += page.problems
        for block in page.blocks:
            if block.language != "bash":
                continue
            for argv in commands(block):
                kind, name, _ = target(env_prefix(argv)[1])
                runnable = (kind in ("script", "module") or (kind == "tool" and name in ("curl",) + SHELL_TOOLS))
                if not block.parse_only and not runnable:
                    problems.append(f"{block.where}: `{shlex.join(argv)}` cannot run here: mark the block parse-only")
                if kind == "python":
                    problems.append(f"{block.where}: `{shlex.join(argv)}`: run a script or a documented module")
    assert not problems, "\n".join(problems)


def test_the_index_links_every_page_and_every_link_resolves():
    with open(os.path.join(ROOT, "docs", "README.md"), encoding="utf-8") as fp:
        index = fp.read()
    problems = []
    for path in PAGES:
        if path.startswith("docs/") and path != "docs/README.md":
            if f"]({os.path.relpath(path, 'docs')})" not in index:
                problems.append(f"docs/README.md does not link {path}")
        with open(os.path.join(ROOT, path), encoding="utf-8") as fp:
            text = fp.read()
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", link) or link.startswith("#"):
                continue
            target_path = os.path.normpath(os.path.join(ROOT, os.path.dirname(path), link.split("#")[0]))
            if not os.path.exists(target_path):
                problems.append(f"{path}: broken link {link}")
    assert not problems, "\n".join(problems)


# --- the generated flag reference ------------------------------------------------------------------------------

CLI = [(f"{name}.py", name) for name in SCRIPTS] + [(f"python -m {name}", name) for name in MODULES] + \
    [(f"{name}.py {sub}", name) for name, subs in SUBCOMMANDS.items() for sub in subs]
CLI_DIR = os.path.join(ROOT, "docs", "reference", "cli")
HELP_COLUMNS = "100"


def cli_page_name(module: str, title: str = "") -> str:
    words = title.split()
    if len(words) == 2 and not title.startswith("python"):  # a subcommand: annotate.py import
        return f"{module}-{words[1]}.md"
    return module.replace("utils.", "") + ".md"


def help_page(title: str, module: str) -> str:
    from utils.errors import run_cli

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", HELP_COLUMNS)
        mp.setattr(sys, "argv", [title.split()[-1] if title.startswith("python -m") else title])  # paddlenlp's prog
        with contextlib.redirect_stdout(out):
            try:
                run_cli(import_script(module).main, [*title.split()[1:2], "--help"]
                        if cli_page_name(module, title) != cli_page_name(module) else ["--help"])
            except SystemExit:
                pass
    text = out.getvalue().rstrip() + "\n"
    command = title if title.startswith("python -m") else f"python {title}"
    return (f"# `{command}` flags\n\n"
            "<!-- generated from the parser by `make docs-reference` (tests/test_docs.py); do not edit -->\n\n"
            f"Every flag `{command} --help` lists, as it prints them. How to use them: [the docs index](../../README.md).\n\n"
            f"```text\n{text}```\n")


@pytest.mark.skipif(sys.version_info[:2] != (3, 11),
                    reason="the flag pages are generated on CPython 3.11 (the lock's); argparse's help differs elsewhere")
def test_flag_reference_pages_are_current():
    stale = []
    for title, module in CLI:
        path = os.path.join(CLI_DIR, cli_page_name(module, title))
        current = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if current != help_page(title, module):
            stale.append(os.path.relpath(path, ROOT))
    assert not stale, f"out of date: {', '.join(stale)}; run `make docs-reference`"


def write_reference():
    os.makedirs(CLI_DIR, exist_ok=True)
    for title, module in CLI:
        with open(os.path.join(CLI_DIR, cli_page_name(module, title)), "w", encoding="utf-8") as fp:
            fp.write(help_page(title, module))
        print(f"wrote docs/reference/cli/{cli_page_name(module, title)}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-reference"]:
        sys.exit("usage: python tests/test_docs.py --write-reference")
    sys.path.insert(0, ROOT)
    write_reference()
