"""Build rarekit._C: C++ kernels always, CUDA kernels when torch and nvcc allow.

Environment switches:
  RAREKIT_CUDA=1 / 0   force / skip the CUDA kernels (default: when torch has CUDA, nvcc is found and a GPU is visible)
  RAREKIT_NATIVE=1     also compile the baseline CPU kernels with -march=native (local builds only)
  TORCH_CUDA_ARCH_LIST defaults to DEFAULT_CUDA_ARCHS on a machine without a GPU

Hot CPU kernels (csrc/cpu/isa/*.cpp) are plain C++ over raw pointers, compiled once per ISA
(baseline, AVX2+FMA, AVX-512) into separate objects; csrc/cpu/isa_dispatch.cpp picks one at run
time with __builtin_cpu_supports, so a portable wheel runs as fast as a -march=native build.
"""
import glob
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"
X86 = platform.machine().lower() in ("x86_64", "amd64")
# name -> extra flags; every object gets the same base flags (see IsaBuildExtension)
CPU_ISAS = {"baseline": []}
if X86:
    CPU_ISAS["avx2"] = ["-mavx2", "-mfma", "-mf16c"]
    CPU_ISAS["avx512"] = ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mf16c",
                          "-mprefer-vector-width=512"]
if os.environ.get("RAREKIT_NATIVE") == "1":
    CPU_ISAS["baseline"] = ["-march=native"]


def resolve_cuda_home():
    """CUDA toolkit root; follows an `nvcc` on PATH that is a wrapper script (`exec /real/bin/nvcc`)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc") or next(reversed(sorted(glob.glob("/usr/local/cuda*/bin/nvcc"))), None)
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    with open(nvcc, "rb") as handle:
        head = handle.read(4096)
    if head.startswith(b"#!"):  # a wrapper script: find the real compiler it runs
        for candidate in re.findall(rb"(/[^\s\"']+/bin/nvcc)\b", head):
            if os.path.isfile(candidate) and os.path.realpath(candidate) != nvcc:
                nvcc = os.path.realpath(candidate.decode())
                break
    return os.path.dirname(os.path.dirname(nvcc))


def cuda_requested():
    flag = os.environ.get("RAREKIT_CUDA", "auto").lower()
    if flag in ("0", "false", "no"):
        return False
    import torch
    home = resolve_cuda_home()
    usable = torch.version.cuda is not None and home is not None and os.path.exists(os.path.join(home, "bin", "nvcc"))
    if flag in ("1", "true", "yes"):
        if not usable:
            sys.exit(f"RAREKIT_CUDA=1 but no usable CUDA: torch.version.cuda={torch.version.cuda}, CUDA_HOME={home}")
        return True
    return usable and torch.cuda.is_available()  # auto: only where a GPU can run them


def missing_library_headers(cuda_home, build_dir):
    """A folder of links to the pip `nvidia/*/include` headers that the toolkit lacks (cusparse.h, ...).

    Linking only the missing files keeps the toolkit's own runtime headers first on the search path."""
    toolkit_include = os.path.join(cuda_home, "include")
    if os.path.exists(os.path.join(toolkit_include, "cusparse.h")):
        return []
    farm = os.path.join(build_dir, "nvidia-include")
    os.makedirs(farm, exist_ok=True)
    for site in sys.path:
        for folder in sorted(glob.glob(os.path.join(site, "nvidia", "*", "include"))):
            for name in os.listdir(folder):
                link = os.path.join(farm, name)
                if not os.path.exists(os.path.join(toolkit_include, name)) and not os.path.lexists(link):
                    os.symlink(os.path.join(folder, name), link)
    return [farm]


def extension_modules():
    cuda_home = resolve_cuda_home()
    if cuda_home:  # cpp_extension reads CUDA_HOME once, at import
        os.environ["CUDA_HOME"] = cuda_home
    import torch
    from torch.utils import cpp_extension

    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    # a change to a per-ISA kernel or a shared header must relink the extension
    depends = sorted(glob.glob("csrc/cpu/isa/*.cpp") + glob.glob("csrc/include/rarekit/*.h"))
    cxx_flags = ["-O3", "-fopenmp"]  # cpp_extension adds the -std= that this torch needs
    define_macros = [("RAREKIT_X86", "1")] if X86 else []
    if not cuda_requested():
        return [cpp_extension.CppExtension(
            "rarekit._C", sources, include_dirs=include_dirs, define_macros=define_macros, depends=depends,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])]
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS  # cpp_extension crashes without one
    include_dirs += missing_library_headers(cpp_extension.CUDA_HOME, os.path.join(ROOT, "build"))
    return [cpp_extension.CUDAExtension(
        "rarekit._C", sources + sorted(glob.glob("csrc/cuda/*.cu")), include_dirs=include_dirs, depends=depends,
        define_macros=define_macros + [("RAREKIT_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
        extra_link_args=["-fopenmp"])]


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    class IsaBuildExtension(BuildExtension):
        """Compiles csrc/cpu/isa/*.cpp once per ISA and links the objects into the extension."""

        def build_extension(self, ext):
            compiler = os.environ.get("CXX") or self.compiler.compiler_so[0]
            if compiler.endswith("gcc"):
                compiler = compiler[:-3] + "g++"
            out_dir = os.path.join(self.build_temp, "isa")
            os.makedirs(out_dir, exist_ok=True)
            for source in sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "isa", "*.cpp"))):
                for isa, flags in CPU_ISAS.items():
                    obj = os.path.join(out_dir, f"{os.path.basename(source)[:-4]}.{isa}.o")
                    ext.extra_objects.append(obj)
                    inputs = [source] + glob.glob(os.path.join(ROOT, "csrc", "include", "rarekit", "*.h"))
                    if os.path.exists(obj) and os.path.getmtime(obj) > max(map(os.path.getmtime, inputs + [__file__])):
                        continue  # up to date (an in-place rebuild: setup.py build_ext --inplace)
                    cmd = [compiler, "-O3", "-std=c++17", "-fPIC", "-fno-math-errno", "-fno-trapping-math", "-Wno-psabi",
                           f"-DRAREKIT_ISA={isa}", "-I", os.path.join(ROOT, "csrc", "include"),
                           *flags, "-c", source, "-o", obj]
                    print(" ".join(cmd), flush=True)
                    subprocess.check_call(cmd)
            super().build_extension(ext)

    return IsaBuildExtension.with_options(use_ninja=True)


setup(
    ext_modules=extension_modules(),
    cmdclass={"build_ext": build_ext_class()},
)
