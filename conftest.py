"""Root conftest: makes pytest put the repository root on sys.path.

The test folders mirror the packages (tests/catalog, tests/api, tests/encoders) and
tests/ itself is on sys.path for the shared helpers, so without the root on sys.path a
test folder could be imported as a namespace package in place of the real package.
Regular packages always win over namespace portions found on the same path.
"""
