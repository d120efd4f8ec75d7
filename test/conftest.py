"""Shared pytest set-up. This file's directory goes on sys.path (pytest's default "prepend" import mode), so tests
can `from factories import ...`."""
