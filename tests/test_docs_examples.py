"""Every example of every doc page, run as a reader would run it.

- Each page's ```tcl blocks (every .md under docs/, and README.md) run in
  order in one fresh tclsh that has the package on TCLLIBPATH, as if the
  reader had typed `package require torch` (docs/tcl/README.md's first line)
  and then pasted the page's examples one after the other.
- docs/python.md's ```python blocks run in order in one Python process.
- docs/cpp.md's ```cpp blocks are compiled, each as its own program, against
  the installed CMake package (the page's ```cmake block is the CMakeLists.txt),
  and those with a main() are run. The build trees stay in build/docs-examples/.

A block that is deliberately a fragment is preceded (directly, blank lines
allowed) by a paragraph that starts with `*Fragment:*`, which the reader sees;
only those are skipped. Pages are collected when the suite starts, so a new
page is covered without touching this file, and each test names its page.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, tclsh_env

FRAGMENT_MARK = "*Fragment:*"
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")


@dataclass
class Block:
    lang: str
    line: int        # 1-based line of the first line of code in the page
    code: str
    fragment: bool


def parse_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown page, each with its language (the
    first word of the info string), the line where its code starts, and
    whether the paragraph right before it marks it as a fragment."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = len(m["indent"]), m["fence"], m["info"].lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence[0] * len(fence)) and stripped.strip(fence[0]) == "":
                break
            line = lines[i]
            # Code inside an indented fence (a list item) loses that indent.
            body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())
            i += 1
        i += 1  # past the closing fence
        blocks.append(Block(lang, start + 2, "\n".join(body) + "\n",
                            _marked_fragment(lines, start)))
    return blocks


def _marked_fragment(lines: list[str], fence_line: int) -> bool:
    """Whether the paragraph directly above line `fence_line` (blank lines
    between allowed) starts with the fragment mark. A closing fence right
    above means there is no paragraph: the block is not a fragment."""
    j = fence_line - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    first = None
    while j >= 0 and lines[j].strip() and not _FENCE.match(lines[j]):
        first = lines[j]
        j -= 1
    return first is not None and first.lstrip().startswith(FRAGMENT_MARK)


def _pages() -> list[Path]:
    return sorted(REPO.glob("docs/**/*.md")) + [REPO / "README.md"]


def _runnable(page: Path, lang: str) -> list[Block]:
    return [b for b in parse_blocks(page.read_text()) if b.lang == lang and not b.fragment]


def _name(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def _reader_dir(tmp_path: Path) -> Path:
    """Where the examples run: a scratch directory that looks like the
    checkout (links to its top-level files and folders), so that a path such
    as examples/data/digits.txt works as it does for a reader in the
    checkout, while the files an example writes stay out of it."""
    cwd = tmp_path / "checkout"
    if cwd.is_dir():
        return cwd
    cwd.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in {".git", ".venv", "build"}:
            (cwd / entry.name).symlink_to(entry)
    return cwd


TCL_PAGES = [p for p in _pages() if _runnable(p, "tcl")]


# ---------------------------------------------------------------- the fragment rule

RULE_PAGE = """\
# Title

Runs:

```tcl
set a 1
```

*Fragment:* the body of a loop; see above for the setup.

```tcl
set b $undefined
```

*Fragment:* no blank line before this one.
```tcl
also skipped
```

```tcl
set c 3
```
A paragraph that only mentions *Fragment:* later.

```tcl
set d 4
```

- a list item
  ```tcl
  set e 5
  ```
"""


def test_fragment_rule():
    blocks = parse_blocks(RULE_PAGE)
    assert [(b.code.strip(), b.fragment) for b in blocks] == [
        ("set a 1", False),
        ("set b $undefined", True),
        ("also skipped", True),
        # Directly after another block: no paragraph in between, so runs.
        ("set c 3", False),
        ("set d 4", False),
        ("set e 5", False),
    ]
    assert blocks[0].line == 6 and RULE_PAGE.splitlines()[5] == "set a 1"


def test_every_page_is_collected():
    # Every page with a runnable ```tcl block, README.md and docs/**/*.md.
    names = {_name(p) for p in TCL_PAGES}
    assert {"docs/tcl/README.md", "docs/tcl/optimizer_adafactor.md"} <= names, names
    for page in _pages():
        assert (_name(page) in names) == bool(_runnable(page, "tcl")), _name(page)


# ---------------------------------------------------------------- Tcl

# Each block is its own file, sourced in order at global level: variables
# carry over from block to block, and an error names the page's line.
TCL_DRIVER = r"""
package require torch
foreach {file line} $argv {
    if {[catch {uplevel #0 [list source $file]} msg opts]} {
        set where ""
        regexp {\(file "[^"]*" line (\d+)\)} [dict get $opts -errorinfo] -> where
        if {$where ne ""} { set line [expr {$line + $where - 1}] }
        puts stderr "PAGE LINE $line: $msg"
        puts stderr "-errorcode [dict get $opts -errorcode]"
        puts stderr [dict get $opts -errorinfo]
        exit 1
    }
}
puts DOCS-EXAMPLES-DONE
"""


@pytest.mark.parametrize("page", TCL_PAGES, ids=_name)
def test_tcl_examples_run(page, tmp_path):
    blocks = _runnable(page, "tcl")
    args = []
    for k, b in enumerate(blocks):
        f = tmp_path / f"block{k + 1}.tcl"
        f.write_text(b.code)
        args += [str(f), str(b.line)]
    driver = tmp_path / "driver.tcl"
    driver.write_text(TCL_DRIVER)
    proc = subprocess.run(["tclsh", str(driver), *args], capture_output=True, text=True,
                          env=tclsh_env(), cwd=_reader_dir(tmp_path), timeout=300)
    assert proc.returncode == 0 and "DOCS-EXAMPLES-DONE" in proc.stdout, (
        f"{_name(page)}: an example failed\n{proc.stderr[-3000:]}")


# ---------------------------------------------------------------- Python

PY_DRIVER = r"""
import sys
page = sys.argv[1]
namespace = {"__name__": "__main__"}
for path, line in zip(sys.argv[2::2], sys.argv[3::2]):
    code = open(path).read()
    # Blank lines in front: a traceback names the page and its line.
    exec(compile("\n" * (int(line) - 1) + code, page, "exec"), namespace)
print("DOCS-EXAMPLES-DONE")
"""

PY_PAGES = [p for p in [REPO / "docs" / "python.md"] if _runnable(p, "python")]


@pytest.mark.parametrize("page", PY_PAGES, ids=_name)
def test_python_examples_run(page, tmp_path):
    args = [_name(page)]
    for k, b in enumerate(_runnable(page, "python")):
        f = tmp_path / f"block{k + 1}.py"
        f.write_text(b.code)
        args += [str(f), str(b.line)]
    driver = tmp_path / "driver.py"
    driver.write_text(PY_DRIVER)
    proc = subprocess.run([sys.executable, str(driver), *args], capture_output=True, text=True,
                          cwd=_reader_dir(tmp_path), timeout=300)
    assert proc.returncode == 0 and "DOCS-EXAMPLES-DONE" in proc.stdout, (
        f"{_name(page)}: an example failed\n{proc.stderr[-3000:]}")


# ---------------------------------------------------------------- C++

DEFAULT_CMAKELISTS = """\
cmake_minimum_required(VERSION 3.18)
project(docs_example CXX)
find_package(tcltorch REQUIRED)
add_executable(my_program main.cpp)
target_link_libraries(my_program PRIVATE tcltorch::core)
"""

CPP_BUILD = REPO / "build" / "docs-examples"
CPP_PAGES = [p for p in [REPO / "docs" / "cpp.md"] if _runnable(p, "cpp")]


@pytest.mark.parametrize("page", CPP_PAGES, ids=_name)
def test_cpp_examples_compile(page, tmp_path):
    cmake = shutil.which("cmake")
    assert cmake, "cmake is installed by scripts/setup.sh"
    prefix = subprocess.run([sys.executable, "-m", "tcltorch", "cmake-prefix"],
                            capture_output=True, text=True, check=True).stdout.strip()
    cmake_blocks = _runnable(page, "cmake")
    lists = "".join(b.code for b in cmake_blocks) or DEFAULT_CMAKELISTS
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    for k, block in enumerate(_runnable(page, "cpp")):
        # Kept in build/ (ignored by git) between runs, like the benchmark's
        # C++ program: an unchanged example is not compiled again.
        src = CPP_BUILD / page.stem / f"example{k + 1}"
        src.mkdir(parents=True, exist_ok=True)
        for name, text in (("CMakeLists.txt", lists), ("main.cpp", block.code)):
            if not (src / name).is_file() or (src / name).read_text() != text:
                (src / name).write_text(text)
        build = src / "build"
        where = f"{_name(page)}, the C++ block at line {block.line}"
        for cmd in ([cmake, "-S", str(src), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}",
                     "-DCMAKE_BUILD_TYPE=Release"],
                    [cmake, "--build", str(build)]):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            assert proc.returncode == 0, f"{where}: {' '.join(cmd[:2])} failed\n" + (
                proc.stdout + proc.stderr)[-4000:]
        if re.search(r"\bint\s+main\s*\(", block.code):
            exe = build / re.search(r"add_executable\(\s*(\S+)", lists)[1]
            proc = subprocess.run([str(exe)], capture_output=True, text=True, env=env,
                                  cwd=_reader_dir(tmp_path), timeout=300)
            assert proc.returncode == 0, f"{where}: the program failed\n" + (
                proc.stdout + proc.stderr)[-4000:]
