"""What a config's ``check(context)`` reports: spec problems found beyond types."""

from __future__ import annotations

from typing import Any, Iterable, Protocol


class SpecProblem(Exception):
    """A semantic problem found while checking a spec; ``path`` is relative to the checked table."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path, self.message = path, message


class Checkable(Protocol):
    """Config classes may implement ``check(context)`` to report cross-field problems.

    It returns an iterable of ``SpecProblem`` (paths relative to the config's own table). The
    ``context`` is a dict of derived facts: ``image_shape``, ``latent_shape``, ``registry``.
    """

    def check(self, context: dict[str, Any]) -> Iterable[SpecProblem]: ...
