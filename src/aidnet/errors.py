"""The one exception type for user mistakes and bad input."""


class AidnetError(Exception):
    """Bad input or a user mistake: the CLI prints it as one line and exits non-zero.

    The message names the file (when there is one) and the problem, e.g.
    ``"scans/p1.nii.gz: not a readable image (truncated gzip stream)"``.
    """
