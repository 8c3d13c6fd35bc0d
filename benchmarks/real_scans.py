"""Two real non-contrast chest CTs for development: ``lung1_image.nrrd`` and ``lung2_image.nrrd``
of the pyradiomics 3.0.1 source distribution, fetched from the package index pip uses.

``pip download --no-binary pyradiomics pyradiomics==3.0.1`` cannot be used: pip builds the
sdist's metadata and its setup.py fails. So the sdist is found on the index's simple page
(PEP 503), downloaded, checked against a pinned SHA-256, and only the two images are kept
(each checked against its own SHA-256). Standard library only; aidnet itself never downloads.

    python -m benchmarks.real_scans [--dest DIR] [--sdist FILE]

DIR defaults to ``$AIDNET_REAL_SCANS`` or ``.cache/real-scans`` in the repository. Run again,
it does nothing when both images are there and intact. Every file appears under its final name
only when complete. Any failure is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import IO

PROJECT = "pyradiomics"
SDIST = "pyradiomics-3.0.1.tar.gz"
SDIST_SHA256 = "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5"
#: file name in the cache → (member of the sdist, its SHA-256)
SCANS = {
    "lung1_image.nrrd": (
        "pyradiomics-3.0.1/data/lung1_image.nrrd",
        "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed",
    ),
    "lung2_image.nrrd": (
        "pyradiomics-3.0.1/data/lung2_image.nrrd",
        "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651",
    ),
}
DEFAULT_INDEX = "https://pypi.org/simple"
ENV_DEST = "AIDNET_REAL_SCANS"
DEFAULT_DEST = Path(__file__).resolve().parents[1] / ".cache" / "real-scans"
TIMEOUT_S = 30.0
_BLOCK = 1 << 20


class FetchError(Exception):
    """Why the scans could not be obtained, in one line."""


class RegistryUnreachable(FetchError):
    """The package index (or the file host it points to) could not be reached."""


def default_dest() -> Path:
    env = os.environ.get(ENV_DEST)
    return Path(env) if env else DEFAULT_DEST


def index_url() -> str:
    """The index pip is configured with: ``PIP_INDEX_URL``, else ``index-url`` in pip's
    configuration (``pip config list``; environment, site, user, global in that precedence),
    else PyPI."""
    env = os.environ.get("PIP_INDEX_URL", "").split()
    if env:
        return env[0]
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    rank = {":env:": 4, "site": 3, "user": 2, "global": 1}
    best: tuple[int, str] | None = None
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        scope, _, name = key.strip().rpartition(".")
        if name != "index-url" or not value.strip():
            continue
        urls = value.strip().strip("'\"").split()
        score = rank.get(scope, 0)
        if urls and (best is None or score >= best[0]):
            best = (score, urls[0])
    return best[1] if best else DEFAULT_INDEX


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def _open(url: str, what: str) -> IO[bytes]:
    request = urllib.request.Request(url, headers={"Accept": "text/html"})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{what} {url} answered HTTP {exc.code} ({exc.reason})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryUnreachable(f"cannot reach {what} {url} ({reason})") from None


def sdist_url(index: str) -> str:
    """The URL of :data:`SDIST` on the simple page of :data:`PROJECT` at ``index``."""
    page = f"{index.rstrip('/')}/{PROJECT}/"
    # a local (file:) index is a folder per project holding index.html, as pip reads it
    local = urllib.parse.urlsplit(page).scheme == "file"
    try:
        with _open(page + "index.html" if local else page, "the package index") as response:
            text = response.read().decode("utf-8", "replace")
    except (OSError, TimeoutError) as exc:
        raise RegistryUnreachable(f"cannot read the package index {page} ({exc})") from None
    links = _Links()
    links.feed(text)
    for href in links.hrefs:
        url = urllib.parse.urljoin(page, href)
        if urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1] == SDIST:
            return urllib.parse.urldefrag(url)[0]
    raise FetchError(f"the package index {page} lists no {SDIST}")


@contextmanager
def _atomic(path: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside ``path``, renamed to it only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0o600 would hide the scans from other users
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _copy_hashed(source: IO[bytes], target: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: source.read(_BLOCK), b""):
        digest.update(block)
        target.write(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def download_sdist(url: str, path: Path) -> None:
    """``url`` → ``path`` (atomically), refused unless its SHA-256 is :data:`SDIST_SHA256`."""
    try:
        with _open(url, "the file host") as response, _atomic(path) as out:
            got = _copy_hashed(response, out)
            if got != SDIST_SHA256:
                raise FetchError(
                    f"{url}: SHA-256 {got}, expected {SDIST_SHA256}; the file was not kept"
                )
    except (OSError, TimeoutError) as exc:
        raise RegistryUnreachable(f"download of {url} broke off ({exc})") from None


def extract_scans(sdist: Path, dest: Path) -> None:
    """The two images of :data:`SCANS` from ``sdist`` into ``dest``, each written atomically
    and checked against its SHA-256 (the label maps and everything else are left in it)."""
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            for name, (member, expected) in SCANS.items():
                source = archive.extractfile(member)
                if source is None:
                    raise FetchError(f"{sdist}: {member} is not a regular file")
                with source, _atomic(dest / name) as out:
                    got = _copy_hashed(source, out)
                    if got != expected:
                        raise FetchError(f"{sdist}: {member} has SHA-256 {got}, not {expected}")
    except KeyError as exc:
        raise FetchError(f"{sdist}: no member {exc} in the archive") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise FetchError(f"{sdist}: not a readable {SDIST} ({exc})") from None


def missing(dest: Path) -> list[str]:
    """The scans of :data:`SCANS` not in ``dest`` with their expected content."""
    return [
        name
        for name, (_, expected) in SCANS.items()
        if not (dest / name).is_file() or file_sha256(dest / name) != expected
    ]


def fetch(
    dest: Path | None = None, *, sdist: Path | None = None, index: str | None = None
) -> dict[str, Path]:
    """Both scans in ``dest`` (default :func:`default_dest`), from ``sdist`` when given (a
    local copy; its SHA-256 is checked) or else downloaded from ``index`` (default
    :func:`index_url`). Nothing is done when both are already there and intact."""
    dest = default_dest() if dest is None else Path(dest)
    paths = {name: dest / name for name in SCANS}
    if not missing(dest):
        return paths
    if sdist is not None:
        if not sdist.is_file():
            raise FetchError(f"{sdist}: file not found")
        got = file_sha256(sdist)
        if got != SDIST_SHA256:
            raise FetchError(f"{sdist}: SHA-256 {got}, expected {SDIST_SHA256}")
        extract_scans(sdist, dest)
        return paths
    url = sdist_url(index or index_url())
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        local = Path(tmp) / SDIST
        download_sdist(url, local)
        extract_scans(local, dest)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.real_scans", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--dest", type=Path, default=None, help=f"folder (default: ${ENV_DEST} or {DEFAULT_DEST})"
    )
    parser.add_argument(
        "--sdist", type=Path, default=None, help=f"a local copy of {SDIST} instead of the index"
    )
    args = parser.parse_args(argv)
    dest = default_dest() if args.dest is None else args.dest
    try:
        had = not missing(dest)
        paths = fetch(dest, sdist=args.sdist)
    except FetchError as exc:
        hint = ""
        if isinstance(exc, RegistryUnreachable):
            hint = f"; offline, download {SDIST} elsewhere and pass --sdist FILE"
        print(f"real_scans: error: {exc}{hint}", file=sys.stderr)
        return 1
    state = "already there" if had else "written"
    print(f"real_scans: {', '.join(str(p) for p in paths.values())} ({state})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
