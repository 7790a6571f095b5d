"""The bad-input corpus: every mistake a policy officer might make, and what notifier says.

Each folder under ``tests/bad_inputs/`` (other than ``_base``) is one mistake. It holds only
the files that differ from the small, valid project in ``_base/`` (same relative paths,
each replacing the base file whole; ``<path>.delete`` removes the base file at ``<path>``)
and ``expect.txt``:

* ``# ...`` lines say in words what went wrong;
* an optional ``env: NAME=value`` line sets an environment variable for the case;
* every other line is ``PATH:LINE: TEXT`` (or ``PATH: TEXT`` where no line applies) and
  must appear in what ``notifier validate`` prints: a problem reported for that file
  (relative to the project folder), at that line, whose message contains TEXT.

A case whose ``expect.txt`` says what notifier *should* print but does not yet has an
``xfail.txt`` with the reason: it is a strict xfail, so the suite fails when it is fixed
and the file should be removed.

Every case must exit 1 without a traceback, and nothing may be written to the outbox. A
few cases are also run through ``send --dry-run`` and ``preview``, which must refuse too.
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

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "bad_inputs"
BASE = CORPUS / "_base"
META = {"expect.txt", "xfail.txt"}
DELETE = ".delete"

# Cases also run through the commands that would send: they must refuse, and send nothing.
ALSO_SEND_AND_PREVIEW = (
    "sandbox-escape",
    "subject-with-line-break",
    "x-post-too-long",
    "unknown-list-in-audience",
    "unknown-attribute",
    "recipient-in-social-post",
    "include-missing-file",
    "unknown-name-in-included-template",
    "member-name-with-carriage-return",
    "template-makes-ten-billion-characters",
)

# ``path:line: message`` or ``path: message``; the path is everything up to the first ": ".
_PROBLEM = re.compile(r"^(?P<path>.+?)(?::(?P<line>\d+))?: (?P<text>.*)$")


@dataclass(frozen=True)
class Expectation:
    """One problem that must be reported."""

    path: str
    line: int | None
    text: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.text}"

    def found_in(self, problems: list[tuple[str, int | None, str]]) -> bool:
        """True when one printed problem is for this file, at this line, with this text."""
        return any(
            path == self.path and (self.line is None or line == self.line) and self.text in text
            for path, line, text in problems
        )


@dataclass(frozen=True)
class Case:
    """One folder of the corpus."""

    name: str
    folder: Path
    env: dict[str, str]
    expected: tuple[Expectation, ...]
    xfail: str | None


def _strip_dot(path: str) -> str:
    while path.startswith("./"):
        path = path[2:]
    return path


def load_case(folder: Path) -> Case:
    """Read a case folder's ``expect.txt`` (and ``xfail.txt``)."""
    env: dict[str, str] = {}
    expected: list[Expectation] = []
    for raw in (folder / "expect.txt").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("env:"):
            name, _, value = line.removeprefix("env:").strip().partition("=")
            env[name.strip()] = value
            continue
        match = _PROBLEM.match(line)
        if match is None:
            raise ValueError(f"{folder.name}/expect.txt: cannot read {raw!r}")
        number = match["line"]
        expected.append(Expectation(_strip_dot(match["path"]), int(number) if number else None, match["text"]))
    xfail = folder / "xfail.txt"
    reason = " ".join(xfail.read_text(encoding="utf-8").split()) if xfail.exists() else None
    return Case(folder.name, folder, env, tuple(expected), reason)


CASES = [load_case(p) for p in sorted(CORPUS.iterdir()) if p.is_dir() and not p.name.startswith("_")]
BY_NAME = {case.name: case for case in CASES}


def _param(case: Case) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.name, marks=marks)


def build(case: Case | None, target: Path) -> Path:
    """``_base`` copied to ``target``, with ``case``'s files laid over it."""
    shutil.copytree(BASE, target, dirs_exist_ok=True)
    if case is None:
        return target
    for source in sorted(case.folder.rglob("*")):
        relative = source.relative_to(case.folder)
        if source.is_dir() or str(relative) in META:
            continue
        if source.name.endswith(DELETE):
            doomed = target / str(relative).removesuffix(DELETE)
            assert doomed.exists(), f"{case.name}: {relative} deletes a file _base does not have"
            doomed.unlink()
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    return target


def notifier(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m notifier ARGS`` on ``project``, with no Redis configured."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    environ.update(
        {
            "NOTIFIER_CONFIG": str(project / "config"),
            "NOTIFIER_DATA_DIR": str(project / "var"),
            "PYTHONPATH": str(ROOT),
            "COLUMNS": "400",
        }
    )
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "notifier", *args],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def printed_problems(stderr: str, project: Path) -> list[tuple[str, int | None, str]]:
    """Each ``PATH:LINE: message`` line of ``stderr``, with paths made relative to ``project``."""
    for prefix in {str(project.resolve()) + os.sep, str(project) + os.sep}:
        stderr = stderr.replace(prefix, "")
    problems = []
    for line in stderr.splitlines():
        match = _PROBLEM.match(line.strip())
        if match:
            number = match["line"]
            problems.append((_strip_dot(match["path"]), int(number) if number else None, match["text"]))
    return problems


def _has_line(path: Path, line: int) -> bool:
    """False when ``path`` is a file shorter than ``line`` (one past the end is the end of file)."""
    if not path.is_file():
        return True
    return line <= len(path.read_bytes().splitlines()) + 1


def assert_refused(result: subprocess.CompletedProcess[str], case: Case, project: Path, command: str) -> None:
    """Exit 1, no traceback, every expected problem printed, no line past a file's end, no outbox."""
    output = f"notifier {command} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, output
    assert result.returncode == 1, output
    problems = printed_problems(result.stderr, project)
    missing = [str(e) for e in case.expected if not e.found_in(problems)]
    assert not missing, f"not reported: {missing}\n{output}"
    beyond = [f"{path}:{line}" for path, line, _ in problems if line and not _has_line(project / path, line)]
    assert not beyond, f"reported at lines the file does not have: {beyond}\n{output}"
    assert not (project / "var" / "outbox").exists(), f"something was written to the outbox\n{output}"


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 35
    for case in CASES:
        assert case.expected, f"{case.name}: expect.txt names no problem"
        overlay = [p for p in case.folder.rglob("*") if p.is_file() and p.name not in META]
        assert overlay or case.env, f"{case.name}: changes nothing"
    assert set(ALSO_SEND_AND_PREVIEW) <= set(BY_NAME)


def test_the_base_project_is_valid(tmp_path: Path) -> None:
    """So each case fails for its own reason."""
    project = build(None, tmp_path)
    result = notifier(project, "validate")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "OK" in result.stdout
    assert all(" warning: " in line for line in result.stderr.splitlines() if line.strip()), result.stderr


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_validate_names_the_file_and_line(case: Case, tmp_path: Path) -> None:
    project = build(case, tmp_path)
    result = notifier(project, "validate", env=case.env)
    assert_refused(result, case, project, "validate")


@pytest.mark.parametrize("case", [_param(BY_NAME[n]) for n in ALSO_SEND_AND_PREVIEW if n in BY_NAME])
@pytest.mark.parametrize(
    "command",
    [("send", "c", "opened", "--dry-run"), ("preview", "c", "opened")],
    ids=["send-dry-run", "preview"],
)
def test_nothing_is_sent_or_previewed(case: Case, command: tuple[str, ...], tmp_path: Path) -> None:
    project = build(case, tmp_path)
    result = notifier(project, *command, env=case.env)
    assert_refused(result, case, project, " ".join(command))
