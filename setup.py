"""The compiled part of popbox: popbox.proto._speedups, the wire encoder's inner loop.

Everything else is declared in pyproject.toml. The extension is optional: without a C
compiler or the Python headers the build goes on without it and popbox uses the same
code in Python (popbox.proto._native).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "popbox.proto._speedups",
            ["src/popbox/proto/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
