"""Test-only madkit plugins and a way to "install" plugin distributions into a temporary site.

- ``kinds``: tiny ``data``, ``codec``, ``model``, ``schedule`` and ``sampler`` kinds (all named
  ``test-*`` so they never collide with real plugins) for spec and CLI tests.
- ``distinfo``: writes ``*.dist-info`` folders with real entry-point metadata, so plugin loading is
  tested through ``importlib.metadata`` exactly as for an installed distribution, not a mock.
"""

from pathlib import Path

TINY_SPEC = Path(__file__).with_name("tiny.toml")  # a valid spec over the fake kinds
