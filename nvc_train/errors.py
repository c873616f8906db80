"""User-facing errors: one line, non-zero exit, no traceback (see ``cli.main``)."""


class UserError(Exception):
    """A problem the user can fix (bad path, wrong file, bad argument); printed as one line."""
