"""Every command the README and docs/*.md show must still run, in a fast mode.

The test reads each fenced block of README.md and docs/*.md, takes the lines that are
commands (``cnnlab ...``, ``$ cnnlab ...``, ``make ...``, ``python bench/...``,
``torchrun ...``, ``pip ...``) and runs each ``cnnlab`` command in this process, in one
temporary folder per document and in the document's order, so that ``cnnlab train --out
runs/r20`` feeds the ``cnnlab eval runs/r20`` below it. Arguments are rewritten to tiny
data and budgets (:func:`fast_argv`); the flags and subcommands stay as written, so a
renamed flag fails here with argparse's "unrecognized arguments" or "invalid choice".

What cannot run here is skipped by a stated rule, never silently: a program other than
``cnnlab`` (:data:`SKIP_PROGRAMS`), a command that only makes sense after something this
test cannot do (:data:`PARSE_ONLY`), or a block preceded in its document by
``<!-- docs-test: skip (REASON) -->``. A skipped ``cnnlab`` command is still parsed, so
its flags and subcommands must exist. Where a document prints what a command wrote
(``wrote runs/x/eval.json, confusion.png``), the files must exist afterwards; where it
shows an error, the command must fail with that error.
"""

from __future__ import annotations

import io
import re
import shlex
import traceback
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from cnnlab.config import BUILTIN_DATASETS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Programs whose documented commands are not run here, and why.
SKIP_PROGRAMS: dict[str, str] = {
    "make": "make targets create a virtual environment and install packages (network, minutes)",
    "python": "bench/ scripts are benchmarks that run for minutes by design",
    "torchrun": "several processes (and, with --nnodes, several machines); tests/train covers distributed training",
    "pip": "installs packages from the network",
}
COMMAND_PREFIXES = ("cnnlab ", *(f"{p} " for p in SKIP_PROGRAMS))

#: The tiny stand-in for every named dataset: 10 classes (the docs use --class-subset 5-9) of 12x12 grayscale
#: images, enough that half of the classes still fill a batch of the default 128.
FAST_DATA = "synthetic:classes=10,n=600,size=12,channels=1"
NAMED_DATASETS = frozenset(name for name in BUILTIN_DATASETS if name != "synthetic")

#: Flag values replaced by the smallest that still exercises the flag.
FAST_VALUES: dict[str, str] = {
    "--epochs": "1",
    "--steps": "3",
    "--time": "20s",  # train --time: at most 20 s (the tiny data usually hits the 30-epoch cap first)
    "--budget": "1s",  # search: start no trial after the first; the recipe's least is FAST_RECIPE_BUDGET
    "--seeds": "1",
    "--subset": "300",  # at least one batch of the default 128 after the validation split
    "--train-subset": "300",
    "--trials": "2",
    "--workers": "1",  # each worker process imports torch: seconds of 2 shared cores, and nothing the flag checks
    "--freeze-epochs": "1",
    "--image-size": "32",  # efficientnet_lite0 at the documented 64 px costs 4x the time and checks nothing more
}
#: The shortest budget the recipe accepts (its steps are bounded by the flags of FAST_EXTRA, not by it).
FAST_RECIPE_BUDGET = "1m"
#: Commands that are parsed but not run, and why: a word of the command -> reason.
PARSE_ONLY: dict[str, str] = {
    "--resume": "continues a run stopped by a kill or Ctrl-C; the run above it finished (tests/train/test_resume.py)",
}
#: Flags added to a command (after its own) to keep it short; command -> flags.
FAST_EXTRA: dict[tuple[str, ...], tuple[str, ...]] = {
    ("lab", "run"): ("--smoke",),
    ("train",): ("--epochs", "1"),  # also where the document leaves the default (30)
    # Memorising 2 batches of 128 takes a minute on 2 CPU cores; 2 batches of 16 take seconds.
    ("overfit",): ("--batch-size", "16"),
    ("recipe",): ("--trials", "1", "--coarse-epochs", "1", "--refine-epochs", "1", "--final-epochs", "1",
                  "--rounds", "1", "--search-subset", "300", "--batch-size", "32"),
}  # fmt: skip
#: Files a document's commands read that the document only describes: relative path -> content.
SETUP_FILES: dict[str, dict[str, str]] = {
    # docs/training.md shows the message for a misspelt key in a config file.
    "training.md": {"run.yaml": "optim: {wieght_decay: 5.0e-4}\n"},
}
#: Names of files that a document shows being refused as "not an image".
NOT_IMAGES = frozenset({"notes.png"})

SKIP_MARKER = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
ARGPARSE_ERRORS = ("unrecognized arguments", "invalid choice", "the following arguments are required",
                   "ambiguous option", "not allowed with argument", "expected one argument")  # fmt: skip
# A file path or bare file name with an extension that a command writes.
WRITTEN = re.compile(r"[\w.\-/]+\.(?:json|png|html|onnx|pt|yaml|safetensors|csv|md|jsonl)\b")


@dataclass
class DocCommand:
    """One command line of a document, with what the document shows it printing."""

    doc: str
    line: int
    text: str
    output: list[str] = field(default_factory=list)
    skip: str | None = None

    @property
    def argv(self) -> list[str]:
        """The command's words, as a shell splits them (a trailing ``# comment`` dropped)."""
        return shlex.split(self.text, comments=True)

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def _blocks(text: str) -> Iterator[tuple[int, list[str], str | None]]:
    """(first line number, lines, skip reason) of each fenced block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            start = i + 1
            end = next((j for j in range(start, len(lines)) if lines[j].startswith("```")), len(lines))
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = SKIP_MARKER.search(before)
            yield start + 1, lines[start:end], marker.group("reason") if marker else None
            i = end + 1
        else:
            i += 1


def doc_commands(path: Path) -> list[DocCommand]:
    """The commands of a document's fenced blocks, in order, with their documented output."""
    commands: list[DocCommand] = []
    for first, lines, skip in _blocks(path.read_text(encoding="utf-8")):
        prompt = any(line.startswith("$ ") for line in lines)  # a console block: commands are the "$ " lines
        current: DocCommand | None = None
        i = 0
        while i < len(lines):
            line, number = lines[i], first + i
            body = line[2:] if prompt and line.startswith("$ ") else (None if prompt else line)
            if body is not None and body.startswith(COMMAND_PREFIXES):
                text = body
                while text.rstrip().endswith("\\") and i + 1 < len(lines):  # continuation lines
                    i += 1
                    text = text.rstrip()[:-1] + " " + lines[i].strip()
                words = text.split()
                reason = skip or SKIP_PROGRAMS.get(words[0]) or next((r for w, r in PARSE_ONLY.items() if w in words), None)
                current = DocCommand(path.name, number, text, skip=reason)
                commands.append(current)
            elif current is not None and line.strip() and not line.lstrip().startswith("#"):
                current.output.append(line)
            i += 1
    return commands


def fast_argv(argv: list[str]) -> list[str]:
    """``argv`` (after ``cnnlab``) with tiny data and budgets; its flags and subcommands unchanged."""
    out: list[str] = []
    for i, token in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if token in NAMED_DATASETS:
            token = FAST_DATA
        elif prev == "--budget" and argv[:1] == ["recipe"]:
            token = FAST_RECIPE_BUDGET
        elif prev in FAST_VALUES:
            token = FAST_VALUES[prev]
        out.append(token)
    for words, extra in FAST_EXTRA.items():
        if tuple(argv[: len(words)]) == words:
            out += extra
    return out


def _make_inputs(argv: list[str], cwd: Path) -> None:
    """Create the images and folders that a documented predict/explain command names."""
    rng = np.random.default_rng(0)

    def image(path: Path) -> None:
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name in NOT_IMAGES:
            path.write_text("shopping list: milk, bread\n")
        else:
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(path)

    if argv[:1] not in (["predict"], ["explain"]):
        return
    for token in argv[2:]:
        path = cwd / token
        if token.startswith("-") or path.exists():
            continue
        if token.endswith("/"):
            for name in ("a.png", "b.png"):
                image(path / name)
        elif path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            image(path)


def _make_parents(argv: list[str], cwd: Path) -> None:
    # A picture path such as docs/img/x.png names a folder the reader's checkout has.
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in ("--plot", "--out", "-o", "--output") and Path(value).suffix:
            (cwd / value).parent.mkdir(parents=True, exist_ok=True)


@dataclass
class Result:
    """What a CLI call did."""

    code: int
    out: str
    err: str


def run_cli(argv: list[str]) -> Result:
    """Run ``cnnlab ARGV`` in this process (a traceback is an exit code of -1)."""
    from cnnlab.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: 2 (usage) or 0 (--help)
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - reported as the traceback a user would see
            err.write(traceback.format_exc())
            code = -1
    return Result(int(code), out.getvalue(), err.getvalue())


def parse_only(argv: list[str]) -> Result:
    """Parse ``cnnlab ARGV`` without running it: argparse's exit code and message."""
    from cnnlab.cli.main import build_parser

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def _documented_error(cmd: DocCommand) -> str | None:
    """The error the document shows this command printing, if any."""
    for line in cmd.output:
        if line.startswith("cnnlab: error:"):
            return line.removeprefix("cnnlab: error:").strip()
        if '"error": ' in line:
            return line
    return None


def _written_files(cmd: DocCommand) -> list[str]:
    """The files the document says this command wrote (``wrote a/b.json, c.png``: c.png is in a/)."""
    files: list[str] = []
    for line in cmd.output:
        if not re.match(r"\s*(wrote|report:|histograms:|results:) ", line):
            continue
        folder = ""
        for name in WRITTEN.findall(line.split("(")[0]):
            if "/" in name:
                folder = name.rsplit("/", 1)[0]
            files.append(name if "/" in name or not folder else f"{folder}/{name}")
    return files


def check_command(cmd: DocCommand, cwd: Path) -> str | None:
    """Run one documented command in fast mode; a description of what is wrong, or None."""
    argv = fast_argv(cmd.argv[1:])
    _make_inputs(argv, cwd)
    _make_parents(argv, cwd)
    result = run_cli(argv)
    said = f"{cmd}\n  ran: cnnlab {shlex.join(argv)}\n  exit {result.code}\n{result.out[-3000:]}{result.err[-3000:]}"
    if result.code == 2 and any(e in result.err for e in ARGPARSE_ERRORS):
        return f"a documented flag or subcommand is refused:\n{said}"
    if "is deprecated" in result.err:  # the docs teach the current names, not the hidden old ones
        return f"a documented flag is an old name kept for one release:\n{said}"
    expected = _documented_error(cmd)
    if expected is not None:
        if result.code in (0, -1) or expected not in result.out + result.err:
            return f"the document shows the error {expected!r}; the command did otherwise:\n{said}"
        return None
    if result.code != 0:
        return f"the command failed:\n{said}"
    missing = [f for f in _written_files(cmd) if not (cwd / f).exists()]
    if missing:
        return f"the document says it wrote {', '.join(missing)}; the command did not:\n{said}"
    return None


def check_parses(cmd: DocCommand) -> str | None:
    """For a command that is not run: its flags and subcommands must still exist (None if they do)."""
    if cmd.argv[0] != "cnnlab" or "..." in cmd.argv:  # another program, or arguments the document elides
        return None
    result = parse_only(cmd.argv[1:])
    if "is deprecated" in result.err:
        return f"a documented flag is an old name kept for one release (parsed only: {cmd.skip}):\n{cmd}\n{result.err[-3000:]}"
    if result.code != 0:
        return f"a documented flag or subcommand is refused (parsed only: {cmd.skip}):\n{cmd}\n{result.err[-3000:]}"
    return None


def _ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOCS if any(not c.skip for c in doc_commands(d))], ids=_ids)
def test_documented_commands_run(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name, content in SETUP_FILES.get(doc.name, {}).items():
        (tmp_path / name).write_text(content)
    problems = []
    for cmd in doc_commands(doc):
        if cmd.skip:
            print(f"not run: {cmd}: {cmd.skip}")  # shown with -rP and on failure: a skip is never silent
        problem = check_parses(cmd) if cmd.skip else check_command(cmd, tmp_path)
        if problem:
            problems.append(problem)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def test_every_document_with_commands_is_read() -> None:
    # The extraction must find what the docs show: a parser that finds nothing passes everything.
    commands = {d.name: doc_commands(d) for d in DOCS}
    runnable = {name for name, cmds in commands.items() if any(not c.skip for c in cmds)}
    assert {"README.md", "use.md", "recipe.md", "training.md", "lab.md"} <= runnable
    readme = [c.argv[:2] for c in commands["README.md"] if not c.skip]
    assert ["cnnlab", "train"] in readme and ["cnnlab", "eval"] in readme


def test_every_skip_has_a_reason_and_a_command() -> None:
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for marker in SKIP_MARKER.finditer(text):
            line = text[: marker.start()].count("\n") + 1
            assert marker.group("reason").strip(), f"{doc.name}:{line}: a docs-test skip needs a reason"
            skipped = [c for c in doc_commands(doc) if c.skip == marker.group("reason")]
            assert skipped, f"{doc.name}:{line}: a docs-test skip marker that no command block follows"


def test_a_renamed_flag_fails_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The check must catch what it is for: a flag or subcommand the CLI no longer has.
    monkeypatch.chdir(tmp_path)
    gone_flag = DocCommand("x.md", 1, "cnnlab models --no-such-flag")
    gone_command = DocCommand("x.md", 2, "cnnlab no-such-command")
    assert "unrecognized arguments" in (check_command(gone_flag, tmp_path) or "")
    assert "invalid choice" in (check_command(gone_command, tmp_path) or "")
    assert check_command(DocCommand("x.md", 3, "cnnlab models"), tmp_path) is None
    # A command that is only parsed (not run) is held to its flags all the same.
    parsed = DocCommand("x.md", 4, "cnnlab train --resume runs/x --no-such-flag", skip="a stated reason")
    assert "unrecognized arguments" in (check_parses(parsed) or "")
    assert check_parses(DocCommand("x.md", 5, "cnnlab train --resume runs/x", skip="a stated reason")) is None


def test_fast_mode_shrinks_data_and_budgets_but_keeps_the_flags() -> None:
    argv = shlex.split("lab run norm --data fashion-mnist --budget 10m --subset 10000 --seeds 3 --out runs/x")
    assert fast_argv(argv) == ["lab", "run", "norm", "--data", FAST_DATA, "--budget", "1s", "--subset", "300",
                               "--seeds", "1", "--out", "runs/x", "--smoke"]  # fmt: skip
    assert fast_argv(["data", "info", "cifar10"]) == ["data", "info", FAST_DATA]
