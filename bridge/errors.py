"""Errors that end a process with one line instead of a traceback.

`StartupError` is the common base of every failure at start that an operator fixes outside the
program (a bad config file, an unwritable state dir, a state dir held by another process, a
corrupt store): its message is one line naming the file or option and the fix, and the
command exits non-zero with that line only (bridge/commands/common.py). Anything else that
ends a role is a bug or an unexpected fault: logged once with its traceback, exit status 1.
"""

from __future__ import annotations


class StartupError(Exception):
    """A failure at start the operator must fix; the message is the whole explanation."""


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order; `exc` itself otherwise.
    Roles run in TaskGroups, so one role's failure reaches the top wrapped in groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]
