"""The one exception type users see.

Every error a user can cause (a bad path, a corrupt file, an unknown name, a NaN loss)
is raised as :class:`CnnlabError` with a message that names the thing and the fix. The
CLI prints it on one or two lines and exits non-zero, without a traceback.
"""


class CnnlabError(Exception):
    """A user-facing error whose message names the problem and how to fix it."""
