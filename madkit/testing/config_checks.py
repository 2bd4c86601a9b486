"""``ConfigContract``: what every component config must pass, the shared base of the contract suites:
frozen attrs with the methods the spec machinery calls, a lossless round trip through the
resolved-spec TOML, and ``problems(...)`` (what ``madkit validate`` reports) agreeing with ``build(...)``."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from typing import Any

import attrs

# hypothesis is a test dependency, not a runtime one: the suites import it from here, so a missing
# install says how to fix it
try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError as exc:
    raise ImportError("madkit.testing needs hypothesis: pip install 'madkit[test]'") from exc

__all__ = ["ConfigContract", "given", "property_settings", "st"]

from madkit.experiment_spec import dumps_toml
from madkit.registry import Registry
from madkit.spec import make_converter


def property_settings(max_examples: int) -> settings:
    # One test body runs for many subclasses (differing_executors); CI machines are slow and shared
    # (deadline). Neither says anything about the component under test.
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.differing_executors, HealthCheck.too_slow],
    )


def assert_frozen_attrs_config(config: Any, methods: tuple[str, ...] = ("build", "problems")) -> None:
    assert attrs.has(type(config)), "configs are attrs classes (the spec loader structures them)"
    assert all(callable(getattr(config, m, None)) for m in methods), f"configs offer {', '.join(methods)}"
    for field in attrs.fields(type(config))[:1]:
        try:
            setattr(config, field.name, getattr(config, field.name))
        except attrs.exceptions.FrozenInstanceError:
            continue
        raise AssertionError(f"{type(config).__name__} must be frozen (@attrs.frozen)")


def assert_toml_round_trip(config: Any, table: str) -> None:
    """What a run folder stores (config.resolved.toml) must read back to an equal config."""
    conv = make_converter(Registry())
    text = dumps_toml({table: conv.unstructure(config)})
    assert conv.structure(tomllib.loads(text).get(table, {}), type(config)) == config, text


def assert_refused(problems: list, build: Callable[[], Any], mentions: tuple[str, ...], what: str) -> None:
    """``problems`` must be non-empty and ``build()`` must raise ValueError naming every ``mentions``."""
    assert problems, "problems() must report what build() refuses"
    try:
        build()
    except ValueError as exc:
        message = str(exc)
    else:
        raise AssertionError(f"{what} built; expected ValueError")
    for needle in mentions:
        assert needle in message, f"error message should mention {needle!r}: {message}"


_config_settings = property_settings(40)


class ConfigContract:
    """Base of the suites whose cases carry a ``config`` (``PartitionerContract``, ``RopeContract``).

    A suite says which spec table its configs live in (``table``), and how a case's config reports
    problems and builds (``case_problems``, ``build_case``); plugin authors provide ``valid_cases``
    and, optionally, ``invalid_cases`` (cases with ``mentions``: strings the error must contain).
    """

    table = ""

    def valid_cases(self) -> st.SearchStrategy:
        raise NotImplementedError(f"{type(self).__name__} must define valid_cases() returning a strategy")

    def invalid_cases(self) -> st.SearchStrategy | None:
        """Strategy of configs that must be refused with ValueError; None when every config is valid."""
        return None

    def case_problems(self, case) -> list:
        raise NotImplementedError

    def build_case(self, case) -> Any:
        raise NotImplementedError

    @_config_settings
    @given(data=st.data())
    def test_config_is_frozen_attrs_with_build_and_problems(self, data):
        assert_frozen_attrs_config(data.draw(self.valid_cases()).config)

    @_config_settings
    @given(data=st.data())
    def test_config_survives_a_toml_round_trip(self, data):
        assert_toml_round_trip(data.draw(self.valid_cases()).config, self.table)

    @_config_settings
    @given(data=st.data())
    def test_valid_cases_report_no_problems(self, data):
        # `madkit validate` calls problems(...); it must agree with what build() accepts
        assert list(self.case_problems(data.draw(self.valid_cases()))) == []

    @_config_settings
    @given(data=st.data())
    def test_invalid_cases_are_refused_naming_the_numbers(self, data):
        strategy = self.invalid_cases()
        if strategy is None:
            return
        case = data.draw(strategy)
        assert_refused(list(self.case_problems(case)), lambda: self.build_case(case), case.mentions, repr(case))
