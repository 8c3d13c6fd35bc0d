"""Run an ``aidnet`` command line in this process and capture what it prints."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass


@dataclass
class Result:
    exit_code: int
    output: str  # stdout and stderr as they were interleaved
    stdout: str
    stderr: str


class _Tee(io.StringIO):
    def __init__(self, both: io.StringIO) -> None:
        super().__init__()
        self.both = both

    def write(self, text: str) -> int:
        self.both.write(text)
        return super().write(text)


def invoke(args) -> Result:
    """``aidnet ARGS…``: the exit status and the output, as a user would see them."""
    from aidnet.cli import run

    both = io.StringIO()
    out, err = _Tee(both), _Tee(both)
    with redirect_stdout(out), redirect_stderr(err):
        code = run([str(a) for a in args])
    return Result(code, both.getvalue(), out.getvalue(), err.getvalue())
