"""The benchmark scripts' import path for `sglang_fair.docs_section.replace_section`."""

from sglang_fair.docs_section import replace_section  # noqa: F401
