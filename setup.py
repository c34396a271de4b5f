"""Build bertfast._C with CMake. setup.py only drives CMake; CMakeLists.txt says what is built.

Environment:
  BERTFAST_CUDA=0|1       force the CUDA sources off or on (default: on when nvcc is found)
  CUDA_HOME               the CUDA toolkit root (default: found from the nvcc on PATH)
  BERTFAST_CUDA_ARCH      CMAKE_CUDA_ARCHITECTURES (default "80;90")
  BERTFAST_BUILD_TYPE     CMake build type (default Release)
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: str = ".") -> None:
        super().__init__(name, sources=[])
        self.source_dir = str(Path(source_dir).resolve())


def _is_cuda_root(path) -> bool:
    return bool(path) and Path(path, "include", "cuda_runtime.h").is_file() and Path(path, "bin", "nvcc").is_file()


def find_cuda_root():
    """The folder holding include/cuda_runtime.h. The nvcc on PATH may be a wrapper script,
    so ask nvcc itself where its toolkit is (its dry run prints TOP=...)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        if not _is_cuda_root(home):
            raise RuntimeError(f"CUDA_HOME={home!r} does not hold include/cuda_runtime.h and bin/nvcc")
        return str(Path(home).resolve())
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--dryrun", "-v", "x.cu"], capture_output=True, text=True, timeout=60)
        match = re.search(r"^#\$ TOP=(.*)$", out.stdout + out.stderr, re.M)
        if match:
            top = Path(match.group(1).strip().strip('"')).resolve()
            for candidate in (top, top.parent):
                if _is_cuda_root(candidate):
                    return str(candidate)
    except (OSError, subprocess.SubprocessError):
        pass
    candidate = Path(nvcc).resolve().parent.parent
    return str(candidate) if _is_cuda_root(candidate) else None


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import torch
        import torch.utils
        from torch.utils import cpp_extension

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_type = os.environ.get("BERTFAST_BUILD_TYPE", "Release")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DBERTFAST_TORCH_INCLUDE={';'.join(cpp_extension.include_paths())}",
            f"-DBERTFAST_TORCH_LIBDIR={cpp_extension.library_paths()[0]}",
            f"-DBERTFAST_TORCH_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            "-G", "Ninja",
        ]
        want_cuda = os.environ.get("BERTFAST_CUDA")
        cuda_root = find_cuda_root() if want_cuda != "0" else None
        if want_cuda == "1" and cuda_root is None:
            raise RuntimeError("BERTFAST_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME)")
        if cuda_root:
            arch = os.environ.get("BERTFAST_CUDA_ARCH", "80;90")
            args += ["-DBERTFAST_CUDA=ON", f"-DBERTFAST_CUDA_ROOT={cuda_root}", f"-DCMAKE_CUDA_ARCHITECTURES={arch}"]
            print(f"bertfast: building the CUDA sources with the toolkit at {cuda_root} for sm {arch}")
        else:
            args += ["-DBERTFAST_CUDA=OFF"]
            print("bertfast: no CUDA toolkit found or BERTFAST_CUDA=0: building the CPU sources only")
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        jobs = str(os.cpu_count() or 2)
        subprocess.run(["cmake", ext.source_dir, *args], cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


setup(
    ext_modules=[CMakeExtension("bertfast._C")],
    cmdclass={"build_ext": CMakeBuild},
)
