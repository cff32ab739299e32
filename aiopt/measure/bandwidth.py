"""The machine's memory read bandwidth, measured by a compiled read loop.

A C loop (OpenMP, vectorised by gcc -O3 -march=native) sums a buffer of at least 1 GiB on the
threads asked for; the best of a few passes is the figure. numpy's single-threaded sum reads at
a fraction of what two threads reach, and would overstate every "fraction of the bandwidth
limit". The C file is compiled on first use into a cache folder and called through ctypes;
without a compiler the result says so (and holds no figure).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

GIB = 1 << 30

_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

static double now(void) { return omp_get_wtime(); }

/* Best read bandwidth in bytes/s over `passes` sums of a `bytes` buffer on `threads` threads. */
double aiopt_read_bandwidth(size_t bytes, int threads, int passes, double *checksum) {
    size_t count = bytes / sizeof(float);
    float *data = (float *)aligned_alloc(64, count * sizeof(float));
    if (!data) return -1.0;
    omp_set_num_threads(threads);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) data[i] = (float)(i & 7);  /* touched by the threads that read it */
    double best = 0.0, total = 0.0;
    for (int p = 0; p < passes; p++) {
        double start = now();
        float sum = 0.0f;
        /* simd: many partial sums in vector registers, so the loop waits on memory, not on adds */
        #pragma omp parallel for simd schedule(static) reduction(+:sum)
        for (size_t i = 0; i < count; i++) sum += data[i];
        double seconds = now() - start;
        total += sum;
        double rate = (double)(count * sizeof(float)) / seconds;
        if (rate > best) best = rate;
    }
    *checksum = total;  /* used, so the loop is not optimised away */
    free(data);
    return best;
}
"""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aiopt"


def _library() -> tuple[ctypes.CDLL | None, str]:
    """(the compiled loop, a note); None with the reason when it cannot be built."""
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    digest = hashlib.sha256(_SOURCE.encode()).hexdigest()[:12]
    target = cache_dir() / f"read_bandwidth-{digest}.so"
    if not target.is_file():
        if compiler is None:
            return None, "no C compiler (gcc) found, so the read bandwidth was not measured; install gcc for the bandwidth limit"
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            source = Path(tmp) / "read_bandwidth.c"
            source.write_text(_SOURCE)
            built = Path(tmp) / target.name
            command = [compiler, "-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC", str(source), "-o", str(built)]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                return None, f"compiling the read loop failed ({' '.join(command[:4])}...: {result.stderr.strip().splitlines()[-1:]}); no bandwidth figure"
            os.replace(built, target)
    library = ctypes.CDLL(str(target))
    library.aiopt_read_bandwidth.restype = ctypes.c_double
    library.aiopt_read_bandwidth.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_double)]
    return library, f"C read loop (gcc -O3 -march=native -ffast-math, OpenMP simd) cached at {target}"


def measure_read_bandwidth(threads: int, size_bytes: int = GIB, passes: int = 5) -> dict:
    """{"bytes_per_s", "threads", "buffer_bytes", "method"}; bytes_per_s is None with a note when no compiler."""
    library, note = _library()
    if library is None:
        return {"bytes_per_s": None, "threads": threads, "buffer_bytes": size_bytes, "method": None, "note": note}
    checksum = ctypes.c_double()
    rate = library.aiopt_read_bandwidth(size_bytes, threads, passes, ctypes.byref(checksum))
    if rate <= 0:
        return {"bytes_per_s": None, "threads": threads, "buffer_bytes": size_bytes, "method": note,
                "note": f"could not allocate {size_bytes / GIB:.1f} GiB for the read loop"}
    return {"bytes_per_s": rate, "threads": threads, "buffer_bytes": size_bytes, "method": note, "passes": passes}
