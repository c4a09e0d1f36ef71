"""Builds megatron_soda and its C++ extension (megatron_soda._C).

This file must never import torch: pip builds in an isolated environment, where a torch
requirement would pull a CUDA build of several GB. The extension needs pybind11 only.
"""

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

SOURCES = ["bindings.cpp", "format.cpp", "packer.cpp", "validator.cpp", "writer.cpp"]

ext_modules = [
    Pybind11Extension(
        "megatron_soda._C",
        sources=[f"csrc/{name}" for name in SOURCES],
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
