"""The compiled parts of popbox: popbox.proto._speedups, the wire encoder's inner loop,
popbox.store._measure, the Maildir size pass, and popbox.store._apply, a Maildir commit's
renames and unlinks.

Everything else is declared in pyproject.toml. The extensions are optional: without a C
compiler or the Python headers the build goes on without them and popbox uses the same
code in Python (popbox.proto._native, popbox.store.maildir_measure,
popbox.store.maildir_apply).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "popbox.proto._speedups",
            ["src/popbox/proto/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "popbox.store._measure",
            ["src/popbox/store/_measure.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "popbox.store._apply",
            ["src/popbox/store/_apply.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
    ]
)
