"""Contract test suites for plugin authors: subclass one in your own tests to get its checks.

    from madkit.testing import PartitionerContract

    class TestHilbert(PartitionerContract):
        def make_config(self, grid): ...
"""
