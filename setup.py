"""The one native piece: vhostscsi._native (src/vhostscsi/_native.c), the quiet-LUN READ/WRITE path of the request
queues. Everything else is in pyproject.toml.

Optional on purpose: without a C compiler the package still installs and runs the pure-Python path (the same
answers, slower); the test suite, though, fails when the module is missing (tests/unit/virtio/test_native_*.py),
so CI, which installs gcc and python3-dev, always runs the native path too.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "vhostscsi._native",
            ["src/vhostscsi/_native.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers"],
            optional=True,
        )
    ],
)
