"""The README and docs/ pages: every relative link resolves (a `#anchor` to a heading of
its page), every command shown in a code block is one the project really has (`medwb ...`
parsed by the real command line, `make X` a target of the Makefile, repository files it
names present), the cheap side-effect-free ones (`--help`, `medwb sysinfo`) are run here,
every other subcommand shown is run end to end by some test of the suite (found by reading
the tests), and the README stays a five-minute read. No model, no environment build: a few seconds.

Failures read `docs/page.md:LINE: <command or link>: <why>`.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import subprocess
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MEDWB = ROOT / ".venvs" / "main" / "bin" / "medwb"
README_MAX_LINES = 300

SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
ENV_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Options whose value is a file or folder the command reads: a relative one that points
# into the repository (configs/..., data/..., notebooks/...) must exist there.
INPUT_PATHS = ("config", "eval_file", "model", "token_file", "notebooks")


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


# --- reading the Markdown ------------------------------------------------------------

def split_page(page: Path):
    """(prose lines, code blocks) of a page: prose as (line number, text); each fenced block
    as (info string, [(line number, text), ...])."""
    prose, blocks, block, fence = [], [], None, None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if block is None and m:
            fence, block = m.group(2), (m.group(3).lower(), [])
        elif block is not None and line.strip().startswith(fence[0] * len(fence)) \
                and not line.strip().strip(fence[0]):
            blocks.append(block)
            block = None
        elif block is not None:
            block[1].append((number, line))
        else:
            prose.append((number, line))
    assert block is None, f"{rel(page)}: a code block is never closed"
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (Markdown taken out), lowercased, every
    character but letters, marks, digits, `_`, `-` and spaces dropped, spaces to `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text).lower()
    kept = "".join(ch for ch in text
                   if ch in " -_" or unicodedata.category(ch)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in split_page(page)[0]:
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path):
    """(line number, target) of every Markdown link and image outside code."""
    for number, line in split_page(page)[0]:
        text = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
        for m in LINK.finditer(text):
            yield number, m.group(1)
        m = REF_DEF.match(text)
        if m:
            yield number, m.group(1)


def shell_lines(page: Path):
    """(line number, command line) of every line of the shell-like code blocks (bash, sh,
    console, untagged): `\\` continuations joined, `$ ` prompts taken off (in console
    blocks only prompted lines are commands), comment-only and empty lines left out."""
    for info, lines in split_page(page)[1]:
        if info not in SHELL_LANGS:
            continue
        pending, start = "", None
        for number, line in lines:
            if pending:
                line = pending + " " + line.lstrip()
            else:
                start = number
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1]
                continue
            pending = ""
            text = line.strip()
            if text.startswith("$ "):
                text = text[2:].strip()
            elif info == "console":
                continue
            if text and not text.startswith("#"):
                yield start, text


def simple_commands(line: str) -> list[list[str]]:
    """The words of each simple command of a shell line (split at &&, ||, ;, |, &),
    comments, redirections and leading VAR=value assignments left out."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    commands, words, skip_next = [], [], False
    for tok in lex:
        if skip_next:
            skip_next = False
        elif tok in ("&&", "||", ";", "|", "&"):
            commands.append(words)
            words = []
        elif tok in (">", ">>", "<", ">&", "&>"):
            skip_next = True
        else:
            words.append(tok)
    commands.append(words)
    out = []
    for words in commands:
        while words and ENV_ASSIGN.match(words[0]):
            words = words[1:]
        if words:
            out.append(words)
    return out


def medwb_argv(words: list[str]) -> list[str] | None:
    """The arguments after `medwb` (`medwb`, `.venvs/main/bin/medwb`, `python -m medwb`), or None."""
    if words[0] == "medwb" or words[0].endswith("/bin/medwb"):
        return words[1:]
    if re.fullmatch(r"(.*/)?python[0-9.]*", words[0]) and words[1:3] == ["-m", "medwb"]:
        return words[3:]
    return None


def shown_commands():
    """(page, line number, command text, words) of every `medwb` and `make` command shown."""
    for page in PAGES:
        for number, line in shell_lines(page):
            for words in simple_commands(line):
                if medwb_argv(words) is not None or words[0] == "make":
                    yield page, number, shlex.join(words), words


# --- checking one command --------------------------------------------------------------

def makefile_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        if not line or line[0] in " \t#":
            continue
        m = re.match(r"^([^:=#]+?)\s*::?(?!=)(.*)$", line)
        if not m:
            continue
        names = m.group(1).split()
        if names == [".PHONY"]:
            targets.update(m.group(2).split())
        else:
            targets.update(names)
    return targets


def make_problems(words: list[str], targets: set[str]) -> list[str]:
    problems, args = [], iter(words[1:])
    for arg in args:
        if arg in ("-C", "-f", "-j", "-o", "-W", "-I", "--directory", "--file"):
            next(args, None)
        elif arg.startswith("-") or "=" in arg:
            continue
        elif arg not in targets:
            problems.append(f"the Makefile has no target {arg!r}")
    return problems


def as_parsed(argv: list[str]) -> list[str]:
    """What `medwb.cli.main` hands to the parser (`feedback simulate` is a command of its own)."""
    if argv[:2] == ["feedback", "simulate"]:
        return ["feedback-simulate"] + argv[2:]
    return argv


def is_help(argv: list[str]) -> bool:
    return "-h" in argv or "--help" in argv


def medwb_problems(argv: list[str]) -> list[str]:
    from medwb import cli
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = cli.parser().parse_args(as_parsed(argv))
    except SystemExit as e:
        if e.code == 0 and is_help(argv):
            return []
        return [f"the command line refuses it: {err.getvalue().strip() or f'exit status {e.code}'}"]
    problems = []
    for name in INPUT_PATHS:
        values = getattr(args, name, None) or []
        for value in [values] if isinstance(values, str) else values:
            path = Path(value)
            first = path.parts[0] if path.parts else ""
            if path.is_absolute() or ":" in value or first in ("", ".", "..") \
                    or not (ROOT / first).exists():
                continue  # not a path into the repository (demo, shape:..., a hospital's file)
            if not (ROOT / path).exists():
                problems.append(f"{value!r} does not exist in the repository")
    return problems


def is_cheap(argv: list[str]) -> bool:
    """Side-effect free and quick: any --help, and the environment report of the main env."""
    return is_help(argv) or argv == ["sysinfo"]


# --- the tests -----------------------------------------------------------------------

def test_relative_links_resolve():
    problems, checked = [], 0
    for page in PAGES:
        for number, target in links(page):
            if SCHEME.match(target):
                continue  # http(s), mailto
            checked += 1
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            where = f"{rel(page)}:{number}: {target}"
            if not dest.exists():
                problems.append(f"{where}: {path_part} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where}: no heading of {dest.relative_to(ROOT).as_posix()} "
                                f"has the anchor #{anchor}")
    assert checked > 20, f"only {checked} relative links found: is the link pattern broken?"
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_commands_shown_exist():
    targets = makefile_targets()
    problems, medwb_count, make_count = [], 0, 0
    for page, number, command, words in shown_commands():
        argv = medwb_argv(words)
        if argv is not None:
            medwb_count += 1
            found = medwb_problems(argv)
        else:
            make_count += 1
            found = make_problems(words, targets)
        problems += [f"{rel(page)}:{number}: {command}: {why}" for why in found]
    assert medwb_count >= 10 and make_count >= 3, \
        f"only {medwb_count} medwb and {make_count} make commands found in code blocks: is the reader broken?"
    assert not problems, "commands in the docs that do not exist:\n" + "\n".join(problems)


def test_cheap_commands_run():
    assert MEDWB.exists(), f"{MEDWB} is missing: run `make setup`"
    ran, problems = [], []
    for page, number, command, words in shown_commands():
        argv = medwb_argv(words)
        if argv is None or not is_cheap(argv):
            continue
        ran.append(argv)
        p = subprocess.run([str(MEDWB), *argv], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
        why = None
        if p.returncode != 0:
            why = f"exit status {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}"
        elif argv == ["sysinfo"]:
            try:
                json.loads(p.stdout)
            except ValueError as e:
                why = f"its output is not JSON ({e})"
        if why:
            problems.append(f"{rel(page)}:{number}: {command}: {why}")
    for needed in (["--help"], ["bench", "--help"], ["sysinfo"]):
        assert needed in ran, f"no page shows `medwb {' '.join(needed)}` in a code block (docs/commands.md should)"
    assert not problems, "commands in the docs that fail:\n" + "\n".join(problems)


def subcommands_run_by_tests() -> set[str]:
    """The medwb subcommands some test runs through the command line, read from every test
    module but this one: the word after `medwb` in a list (`[python, "-m", "medwb", "eval"]`),
    the first word of a list added to a MEDWB command (`MEDWB + ["bench", ...]`), and the
    first word handed to a CLI entry (`cli.main(["doctor", ...])`, `_cli("eval", ...)`)."""
    import ast

    def word(node):
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            node = node.elts[0]
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None

    seen = set()
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.List, ast.Tuple)):
                words = [word(e) for e in node.elts]
                seen.update(word(node.elts[i + 1]) for i, w in enumerate(words[:-1])
                            if w and (w in ("medwb", "medwb.cli") or w.endswith("/medwb")))
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) \
                    and "medwb" in ast.unparse(node.left).lower():
                seen.add(word(node.right))
            elif isinstance(node, ast.Call) and node.args and "cli" in ast.unparse(node.func).lower():
                seen.add(word(node.args[0]))
    return seen - {None}


def test_every_command_shown_is_run_by_a_test():
    """Parsing proves a command exists; this proves each subcommand a page shows is run, end
    to end, somewhere in the suite (the expensive ones in the slow tier)."""
    run = subcommands_run_by_tests() | {"sysinfo", "--help"}  # run above, in this module
    missing = sorted({f"{rel(page)}:{number}: {command}"
                      for page, number, command, words in shown_commands()
                      if (argv := medwb_argv(words)) and argv[0] not in run})
    assert "bench" in run and "eval" in run, f"the reader of the tests found too little: {sorted(run)}"
    assert not missing, "subcommands shown in the docs that no test runs:\n" + "\n".join(missing)


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, (f"README.md: {n} lines, more than {README_MAX_LINES}: move the detail into a "
                                   "page under docs/ and link it from 'Where to go next'")
