"""The argparse command line: parameter kinds, usage errors as one line, exit statuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from aidnet.commandline import REQUIRED, CommandLine, argument, option

seen: dict = {}
cli = CommandLine("tool", "A test tool.", lambda: "tool 1.0")


@cli.command
def go(
    scan: Path = argument(REQUIRED, help="A scan."),
    rescan: Path | None = argument(None, help="Its rescan."),
    out: Path = option(REQUIRED, "--out"),
    checkpoint: list[Path] | None = option(None, "--checkpoint"),
    workers: int = option(1, "--workers", min=1),
    share: float = option(0.5, "--share", min=0.0, max=1.0),
    amp: bool | None = option(None, "--amp/--no-amp"),
    quiet: bool = option(False, "--quiet"),
    dry_run: bool = option(False, "--dry-run"),
) -> None:
    """Do it.

    More words."""
    seen.clear()
    seen.update(locals())
    if quiet:
        raise SystemExit(3)


def test_every_kind_of_parameter_arrives_typed(capsys):
    status = cli.run(
        ["go", "a.nii", "--out", "o", "b.nii", "--checkpoint", "r1", "--checkpoint", "r2"]
        + ["--workers", "2", "--share", "0.25", "--no-amp", "--dry-run"]
    )
    assert status == 0, capsys.readouterr().err
    assert seen == {
        "scan": Path("a.nii"),
        "rescan": Path("b.nii"),
        "out": Path("o"),
        "checkpoint": [Path("r1"), Path("r2")],
        "workers": 2,
        "share": 0.25,
        "amp": False,
        "quiet": False,
        "dry_run": True,
    }
    assert cli.run(["go", "a.nii", "--out", "o"]) == 0
    assert seen["rescan"] is None and seen["checkpoint"] is None and seen["amp"] is None
    assert seen["workers"] == 1 and seen["dry_run"] is False


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["go", "a.nii"], "required: --out"),
        (["go", "a.nii", "--out", "o", "--workers", "0"], "--workers: 0 is below the minimum 1"),
        (["go", "a.nii", "--out", "o", "--share", "2"], "--share: 2.0 is above the maximum 1"),
        (["go", "a.nii", "--out", "o", "--workers", "two"], "'two' is not a valid int"),
        (["go", "a.nii", "--out", "o", "--colour"], "unrecognized arguments: --colour"),
        (["went"], "no command 'went'"),
    ],
)
def test_a_usage_mistake_is_one_line_and_status_2(capsys, args, fragment):
    seen.clear()
    assert cli.run(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tool: error: "), captured.err
    assert fragment in lines[0]
    assert captured.out == "" and seen == {}  # the command never ran


def test_help_version_and_exit_status(capsys):
    assert cli.run([]) == 0 and "go  Do it." in capsys.readouterr().out
    assert cli.run(["--version"]) == 0 and capsys.readouterr().out.strip() == "tool 1.0"
    assert cli.run(["go", "--help"]) == 0
    text = capsys.readouterr().out
    assert "More words." in text and "--no-amp" in text and "(default: 0.5)" in text
    assert cli.run(["go", "a", "--out", "o", "--quiet"]) == 3  # SystemExit(3) from the command
