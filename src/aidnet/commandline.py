"""A small declarative command line on the standard library's argparse.

A command is a plain function whose parameters take :func:`option` or :func:`argument` as their
default, with a type annotation (``Path``, ``str``, ``int``, ``float``, ``bool``, ``X | None``,
``list[X]``); its docstring is its help. Nothing beyond the standard library is imported, so
``aidnet --help`` and a short command start at once.

Usage mistakes (an unknown option, a missing value, a number below its minimum) are one line,
``aidnet: error: …``, and exit status 2, like every other bad input.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the default of a parameter the user must give
REQUIRED: Any = ...


@dataclass(frozen=True)
class _Param:
    default: Any
    flags: tuple[str, ...]
    help: str
    minimum: float | None
    maximum: float | None
    positional: bool


def option(
    default: Any,
    *flags: str,
    help: str = "",  # noqa: A002 - the argparse name
    min: float | None = None,  # noqa: A002
    max: float | None = None,  # noqa: A002
) -> Any:
    """An option: ``flags`` like ``"--out"``; a bool flag written ``"--x/--no-x"`` has both."""
    return _Param(default, flags, help, min, max, positional=False)


def argument(default: Any, help: str = "") -> Any:  # noqa: A002
    """A positional argument; with a default of None it may be left out."""
    return _Param(default, (), help, None, None, positional=True)


def echo(text: str = "", err: bool = False) -> None:
    """Print one line to stdout (or stderr) and flush it."""
    stream = sys.stderr if err else sys.stdout
    print(text, file=stream, flush=True)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise _UsageError(f"{message} (see: {self.prog} --help)")


def _number(kind: type, minimum: float | None, maximum: float | None) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a valid {kind.__name__}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {minimum:g}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is above the maximum {maximum:g}")
        return value

    convert.__name__ = kind.__name__
    return convert


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without ``| None``, whether it is a list)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _converter(kind: Any, param: _Param) -> Callable[[str], Any]:
    if kind in (int, float):
        return _number(kind, param.minimum, param.maximum)
    if kind in (str, Path):
        return kind
    raise TypeError(f"unsupported parameter type {kind!r}")


def _help(param: _Param) -> str:
    shown = param.default not in (None, False, REQUIRED) and not param.positional
    return f"{param.help} (default: {param.default})" if shown else param.help


def _add(parser: argparse.ArgumentParser, name: str, annotation: Any, param: _Param) -> None:
    kind, many = _unwrap(annotation)
    required = param.default is REQUIRED
    if param.positional:
        parser.add_argument(
            name,
            type=_converter(kind, param),
            nargs=None if required else "?",
            default=None if required else param.default,
            metavar=name.upper(),
            help=_help(param),
        )
        return
    flags = [f for flag in param.flags for f in flag.split("/")[:1]]
    common: dict[str, Any] = {"dest": name, "help": _help(param)}
    if kind is bool:
        if any("/" in flag for flag in param.flags):
            parser.add_argument(
                *flags, action=argparse.BooleanOptionalAction, default=param.default, **common
            )
        else:
            parser.add_argument(*flags, action="store_true", default=bool(param.default), **common)
        return
    parser.add_argument(
        *flags,
        type=_converter(kind, param),
        action="append" if many else "store",
        required=required,
        default=None if required else param.default,
        metavar=name.upper().rstrip("_"),
        **common,
    )


class CommandLine:
    """Commands registered with :meth:`command`, run by :meth:`run` on a list of arguments."""

    def __init__(self, prog: str, description: str, version: Callable[[], str]) -> None:
        self.prog = prog
        self.description = description
        self.version = version
        self.commands: dict[str, Callable[..., Any]] = {}

    def command(self, func: Callable[..., Any]) -> Callable[..., Any]:
        self.commands[func.__name__.replace("_", "-")] = func
        return func

    def parser(self, name: str) -> argparse.ArgumentParser:
        """The argparse parser of one command (built when it runs, so start-up stays short)."""
        func = self.commands[name]
        doc = inspect.getdoc(func) or ""
        parser = _Parser(
            prog=f"{self.prog} {name}",
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        hints = typing.get_type_hints(func)
        for pname, parameter in inspect.signature(func).parameters.items():
            if not isinstance(parameter.default, _Param):
                raise TypeError(f"{name}: parameter {pname} has no option() or argument()")
            _add(parser, pname, hints[pname], parameter.default)
        return parser

    def usage(self) -> str:
        width = max(len(name) for name in self.commands) + 2
        lines = [
            f"usage: {self.prog} [--version] [--help] COMMAND [ARGS]...",
            "",
            self.description,
            "",
            "commands:",
        ]
        for name, func in self.commands.items():
            summary = (inspect.getdoc(func) or "").split("\n\n")[0].replace("\n", " ")
            wrapped = textwrap.wrap(summary, 96 - width, break_on_hyphens=False) or [""]
            lines.append(f"  {name:<{width}}{wrapped[0]}")
            lines += [" " * (width + 2) + more for more in wrapped[1:]]
        lines += ["", f"'{self.prog} COMMAND --help' shows a command's options."]
        return "\n".join(lines)

    def run(self, argv: Sequence[str]) -> int:
        """Parse ``argv`` (without the program name), run the command, return the exit status.

        A command ends early with ``SystemExit(status)``.
        """
        argv = [str(a) for a in argv]
        if not argv or argv[0] in ("-h", "--help"):
            echo(self.usage())
            return 0
        if argv[0] == "--version":
            echo(self.version())
            return 0
        name, rest = argv[0], argv[1:]
        try:
            if name not in self.commands:
                raise _UsageError(f"no command '{name}' (see: {self.prog} --help)")
            arguments = self.parser(name).parse_intermixed_args(rest)
        except _UsageError as exc:
            echo(f"{self.prog}: error: {exc}", err=True)
            return 2
        except SystemExit as done:  # --help
            return _status(done)
        try:
            self.commands[name](**vars(arguments))
        except SystemExit as done:
            return _status(done)
        return 0


def _status(done: SystemExit) -> int:
    if done.code is None:
        return 0
    return done.code if isinstance(done.code, int) else 1
