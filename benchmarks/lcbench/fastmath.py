"""Two of Optuna's TPE functions, compiled: the same numbers, bit for bit, 20-30 times sooner.

Most of a TPE contestant's time in the simulation is Optuna's own TPE, and most of that was
`optuna.samplers._tpe._truncnorm._log_ndtr`: for each integer param's Parzen kernels it
calls a Python function per element (`np.frompyfunc`), hundreds of thousands of times per
run; `_truncnorm`'s `erf` does the same with `math.erf` below 2,000 elements. `install()`
puts in their place C loops of the same arithmetic: the same branches, the C library's
`erf`, `erfc`, `log` and `pow` (which Python's `math` calls too), and the constants
computed by Python as Optuna computes them, compiled without fused multiply-adds and
without gcc's own versions of those functions. `tests/test_lcbench.py` checks that they
return the same bits as Optuna's on values across every branch. A real study runs Optuna's
own functions; only the benchmark's processes call `install()`, so each contestant stays
what it is, only sooner.

Compiled once into `build/lcbench/` with the system's C compiler; where there is none (or
the compile fails) nothing is installed and the benchmark runs at Optuna's own speed.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from optuna.samplers._tpe._erf import erf as optuna_erf

BUILD = Path(__file__).parents[2] / "build" / "lcbench"

# Optuna 5's _truncnorm._ndtr_single and _log_ndtr_single, line for line.
SOURCE = r"""
#include <float.h>
#include <math.h>
#include <stddef.h>

static double ndtr_single(double a, double sqrt2, double inv_sqrt2) {
    double x = a / sqrt2;
    if (x < -inv_sqrt2) return 0.5 * erfc(-x);
    if (x < inv_sqrt2) return 0.5 + 0.5 * erf(x);
    return 1.0 - 0.5 * erfc(x);
}

static double log_ndtr_single(double a, double sqrt2, double inv_sqrt2, double half_log_2pi) {
    if (a > 6) return -ndtr_single(-a, sqrt2, inv_sqrt2);
    if (a > -20) return log(ndtr_single(a, sqrt2, inv_sqrt2));
    double log_lhs = -0.5 * pow(a, 2.0) - log(-a) - half_log_2pi;
    double last_total = 0.0, right_hand_side = 1.0, numerator = 1.0, denom_factor = 1.0;
    double denom_cons = 1 / pow(a, 2.0);
    int sign = 1;
    long i = 0;
    while (fabs(last_total - right_hand_side) > DBL_EPSILON) {
        i += 1;
        last_total = right_hand_side;
        sign = -sign;
        denom_factor *= denom_cons;
        numerator *= (double)(2 * i - 1);
        right_hand_side += (double)sign * numerator * denom_factor;
    }
    return log_lhs + log(right_hand_side);
}

void erf_array(const double *a, double *out, size_t n) {
    for (size_t k = 0; k < n; k++) out[k] = erf(a[k]);
}

void log_ndtr(const double *a, double *out, size_t n, double sqrt2, double inv_sqrt2,
              double half_log_2pi) {
    for (size_t k = 0; k < n; k++)
        out[k] = log_ndtr_single(a[k], sqrt2, inv_sqrt2, half_log_2pi);
}
"""
# Python's values of Optuna's expressions `2**0.5`, `1 / 2**0.5`, `0.5 * math.log(2 * math.pi)`.
SQRT2 = 2**0.5
INV_SQRT2 = 1 / 2**0.5
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

# Optuna's erf calls math.erf element by element below this size, and its numpy port
# (kept as it is) from it.
ERF_NUMPY_SIZE = 2000
_OPTUNA_ERF = optuna_erf

_LIBRARY: ctypes.CDLL | None = None


def log_ndtr(a: np.ndarray) -> np.ndarray:
    """`_truncnorm._log_ndtr(a)`, compiled. Raises RuntimeError where it cannot compile."""
    library = _library()
    if library is None:
        raise RuntimeError("no C compiler, or the compile failed: see fastmath.install()")
    x = np.ascontiguousarray(a, dtype=np.float64)
    out = np.empty_like(x)
    library.log_ndtr(
        _pointer(x),
        _pointer(out),
        ctypes.c_size_t(x.size),
        ctypes.c_double(SQRT2),
        ctypes.c_double(INV_SQRT2),
        ctypes.c_double(HALF_LOG_2PI),
    )
    return out


def erf(x: np.ndarray) -> np.ndarray:
    """`_erf.erf(x)`: below its 2,000 elements, where Optuna calls `math.erf` on each, in C."""
    if x.size >= ERF_NUMPY_SIZE:
        return _OPTUNA_ERF(x)
    library = _library()
    if library is None:
        raise RuntimeError("no C compiler, or the compile failed: see fastmath.install()")
    a = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty_like(a)
    library.erf_array(_pointer(a), _pointer(out), ctypes.c_size_t(a.size))
    return out.reshape(np.shape(x))


def install() -> bool:
    """Put the compiled functions in Optuna's TPE, in this process; whether it did."""
    if _library() is None:
        return False
    from optuna.samplers._tpe import _truncnorm

    _truncnorm._log_ndtr = log_ndtr
    _truncnorm.erf = erf
    return True


def _pointer(a: np.ndarray) -> Any:
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))


def _library() -> ctypes.CDLL | None:
    global _LIBRARY
    if _LIBRARY is None:
        path = _compile()
        if path is not None:
            library = ctypes.CDLL(str(path))
            library.log_ndtr.restype = None
            library.erf_array.restype = None
            _LIBRARY = library
    return _LIBRARY


def _compile() -> Path | None:
    """The shared library, compiled now if this source has none yet (None: it can't be)."""
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
    path = BUILD / f"log_ndtr-{digest}.so"
    if path.exists():
        return path
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        print("fastmath: no C compiler; Optuna's TPE runs at its own speed", file=sys.stderr)
        return None
    BUILD.mkdir(parents=True, exist_ok=True)
    source = path.with_suffix(".c")
    source.write_text(SOURCE)
    # Another process may compile at the same time: each writes its own file, then renames.
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    # -fno-builtin: gcc turns pow(a, 2.0) into a * a, which the C library's pow (as Python
    # calls it) does not always equal.
    command = [compiler, "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-builtin"]
    result = subprocess.run(
        [*command, "-o", str(partial), str(source), "-lm"], capture_output=True, text=True
    )
    if result.returncode != 0:
        print(f"fastmath: the compile failed: {result.stderr.strip()}", file=sys.stderr)
        return None
    partial.replace(path)
    return path
