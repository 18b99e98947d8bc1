/* backlm._native: fused fp32 and bf16 CPU kernels for the GPT's memory-bound steps.
 *
 * Optional: setup.py builds it when a C compiler with OpenMP is present, and backlm/kernels.py
 * falls back to the equivalent PyTorch ops when it is missing (tests compare the two). Each
 * function takes tensor data pointers as integers (the caller checks dtype, device and
 * contiguity), releases the GIL and splits rows over OpenMP threads. OpenMP here is the
 * libgomp that PyTorch already loaded, so both share one thread pool.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#define TARGET
#define SFX _generic
#include "_native_body.h"
#undef TARGET
#undef SFX

#if defined(__x86_64__) && defined(__GNUC__)
#define TARGET __attribute__((target("avx2,fma")))
#define SFX _avx2
#include "_native_body.h"
#undef TARGET
#undef SFX
#define TARGET __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma")))
#define SFX _avx512
#include "_native_body.h"
#undef TARGET
#undef SFX
#endif

/* bf16 kernels: one copy per instruction set above, plus one that rounds with AVX512-BF16's
 * vcvtneps2bf16 (it borrows exp/tanh from the avx512 copy: a subset target, so they inline). */
#define TARGET
#define SFX _generic
#define XSFX _generic
#include "_native_bf16.h"
#undef TARGET
#undef SFX
#undef XSFX
#if defined(__x86_64__) && defined(__GNUC__)
#define TARGET __attribute__((target("avx2,fma")))
#define SFX _avx2
#define XSFX _avx2
#include "_native_bf16.h"
#undef TARGET
#undef SFX
#undef XSFX
#define TARGET __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma")))
#define SFX _avx512
#define XSFX _avx512
#include "_native_bf16.h"
#undef TARGET
#undef SFX
#undef XSFX
#define TARGET                                                                                  \
    __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx2,fma")))
#define SFX _avx512bf16
#define XSFX _avx512
#define BF16_NATIVE
#include "_native_bf16.h"
#undef TARGET
#undef SFX
#undef XSFX
#undef BF16_NATIVE
#endif

/* The decoding kernels (_native_decode.h), one copy per instruction set; the AVX512-BF16 one
 * multiplies bf16 weights with _mm512_dpbf16_ps, the others convert them to fp32 first. */
#define DPBF16 0
#define TARGET
#define SFX _generic
#define XSFX _generic
#include "_native_decode.h"
#undef TARGET
#undef SFX
#undef XSFX
#if defined(__x86_64__) && defined(__GNUC__)
#define TARGET __attribute__((target("avx2,fma")))
#define SFX _avx2
#define XSFX _avx2
#include "_native_decode.h"
#undef TARGET
#undef SFX
#undef XSFX
#define TARGET __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))
#define SFX _avx512
#define XSFX _avx512
#include "_native_decode.h"
#undef TARGET
#undef SFX
#undef XSFX
#undef DPBF16
#define DPBF16 1
#define TARGET __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx2,fma")))
#define SFX _avx512bf16
#define XSFX _avx512
#include "_native_decode.h"
#undef TARGET
#undef SFX
#undef XSFX
#endif
#undef DPBF16

static struct {
    const char *isa;
    __typeof__(decode_rows_generic) *rows;
    __typeof__(decode_greedy_generic) *greedy;
} DK;

/* The decoding copy named `isa` if this CPU runs it; returns 0 when it does not. */
static int pick_decode(const char *isa) {
#define DPICK(sfx, name)                                                                        \
    if (!strcmp(isa, name)) {                                                                   \
        DK.isa = name, DK.rows = decode_rows##sfx, DK.greedy = decode_greedy##sfx;             \
        return 1;                                                                               \
    }
    DPICK(_generic, "generic");
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                 __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) DPICK(_avx2, "avx2");
    if (avx512) DPICK(_avx512, "avx512");
    if (avx512 && __builtin_cpu_supports("avx512bf16")) DPICK(_avx512bf16, "avx512bf16");
#endif
#undef DPICK
    return 0;
}

static void pick_decode_best(void) {
    static const char *order[] = {"avx512bf16", "avx512", "avx2", "generic"};
    for (int i = 0; i < 4; i++)
        if (pick_decode(order[i])) return;
}

#undef DPBF16

/* The chosen instruction set's kernels; every copy has the generic one's signature. */
static struct {
    const char *isa;
    __typeof__(softcap_ce_rows_generic) *softcap_ce;
    __typeof__(rms_fwd_rows_generic) *rms_fwd;
    __typeof__(rms_bwd_rows_generic) *rms_bwd;
    __typeof__(qk_fwd_rows_generic) *qk_fwd;
    __typeof__(qk_bwd_rows_generic) *qk_bwd;
    __typeof__(relu_sq_range_generic) *relu_sq;
    __typeof__(causal_softmax_rows_generic) *causal_softmax;
    __typeof__(softmax_bwd_rows_generic) *softmax_bwd;
} K;

#define PICK(sfx, name)                                                                         \
    do {                                                                                        \
        K.isa = name;                                                                           \
        K.softcap_ce = softcap_ce_rows##sfx;                                                    \
        K.rms_fwd = rms_fwd_rows##sfx;                                                          \
        K.rms_bwd = rms_bwd_rows##sfx;                                                          \
        K.qk_fwd = qk_fwd_rows##sfx;                                                            \
        K.qk_bwd = qk_bwd_rows##sfx;                                                            \
        K.relu_sq = relu_sq_range##sfx;                                                         \
        K.causal_softmax = causal_softmax_rows##sfx;                                            \
        K.softmax_bwd = softmax_bwd_rows##sfx;                                                  \
    } while (0)

/* The bf16 kernels of the chosen copy (KB.isa may name a copy the fp32 table lacks). */
static struct {
    const char *isa;
    __typeof__(rms_fwd_bf16_rows_generic) *rms_fwd;
    __typeof__(rms_bwd_bf16_rows_generic) *rms_bwd;
    __typeof__(rms_fwd_cast_bf16_rows_generic) *rms_fwd_cast;
    __typeof__(rms_bwd_cast_bf16_rows_generic) *rms_bwd_cast;
    __typeof__(qk_fwd_bf16_rows_generic) *qk_fwd;
    __typeof__(qk_bwd_bf16_rows_generic) *qk_bwd;
    __typeof__(relu_sq_bf16_range_generic) *relu_sq;
    __typeof__(causal_softmax_bf16_rows_generic) *causal_softmax;
    __typeof__(softmax_bwd_bf16_rows_generic) *softmax_bwd;
    __typeof__(rowdot_bf16_rows_generic) *rowdot;
    __typeof__(softcap_ce_bf16_rows_generic) *softcap_ce;
    __typeof__(to_bf16_range_generic) *to_bf16;
} KB;

#define PICK_BF16(sfx, name)                                                                    \
    do {                                                                                        \
        KB.isa = name;                                                                          \
        KB.rms_fwd = rms_fwd_bf16_rows##sfx;                                                    \
        KB.rms_bwd = rms_bwd_bf16_rows##sfx;                                                    \
        KB.rms_fwd_cast = rms_fwd_cast_bf16_rows##sfx;                                          \
        KB.rms_bwd_cast = rms_bwd_cast_bf16_rows##sfx;                                          \
        KB.qk_fwd = qk_fwd_bf16_rows##sfx;                                                      \
        KB.qk_bwd = qk_bwd_bf16_rows##sfx;                                                      \
        KB.relu_sq = relu_sq_bf16_range##sfx;                                                   \
        KB.causal_softmax = causal_softmax_bf16_rows##sfx;                                      \
        KB.softmax_bwd = softmax_bwd_bf16_rows##sfx;                                            \
        KB.rowdot = rowdot_bf16_rows##sfx;                                                      \
        KB.softcap_ce = softcap_ce_bf16_rows##sfx;                                              \
        KB.to_bf16 = to_bf16_range##sfx;                                                        \
    } while (0)

/* Copies from the most capable down; which ones this CPU can run. */
static const char *const ISAS[] = {"avx512bf16", "avx512", "avx2", "generic"};

static int cpu_runs(const char *name) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                 __builtin_cpu_supports("avx512dq");
    if (!strcmp(name, "avx512bf16"))
        return avx512 && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512bf16");
    if (!strcmp(name, "avx512")) return avx512;
    if (!strcmp(name, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return !strcmp(name, "generic");
}

/* Point both tables at copy `name` (the fp32 kernels of avx512bf16 are the avx512 ones);
 * 0 when done, -1 when this CPU cannot run it. */
static int use_isa(const char *name) {
    if (!cpu_runs(name)) return -1;
#if defined(__x86_64__) && defined(__GNUC__)
    if (!strcmp(name, "avx512bf16")) {
        PICK(_avx512, "avx512");
        PICK_BF16(_avx512bf16, "avx512bf16");
        return 0;
    }
    if (!strcmp(name, "avx512")) {
        PICK(_avx512, "avx512");
        PICK_BF16(_avx512, "avx512");
        return 0;
    }
    if (!strcmp(name, "avx2")) {
        PICK(_avx2, "avx2");
        PICK_BF16(_avx2, "avx2");
        return 0;
    }
#endif
    PICK(_generic, "generic");
    PICK_BF16(_generic, "generic");
    return 0;
}

/* The best copy this CPU runs, unless BACKLM_NATIVE_ISA names another (it must run here). */
static int pick_isa(void) {
    const char *want = getenv("BACKLM_NATIVE_ISA");
    if (want && *want) {
        for (size_t i = 0; i < sizeof ISAS / sizeof *ISAS; i++)
            if (!strcmp(want, ISAS[i])) {
                if (use_isa(want) == 0) return 0;
                PyErr_Format(PyExc_ImportError,
                             "BACKLM_NATIVE_ISA=%s: this CPU cannot run it; unset it or pick "
                             "one of avx512bf16, avx512, avx2, generic that it can",
                             want);
                return -1;
            }
        PyErr_Format(PyExc_ImportError,
                     "BACKLM_NATIVE_ISA=%s is not an instruction set of backlm's kernels; use "
                     "avx512bf16, avx512, avx2 or generic",
                     want);
        return -1;
    }
    for (size_t i = 0; i < sizeof ISAS / sizeof *ISAS; i++)
        if (use_isa(ISAS[i]) == 0) return 0;
    return 0;
}

/* ISA names the fp32 kernels' copy, BF16_ISA the bf16 kernels' copy (set_isa updates both). */
static int publish_isa(PyObject *m) {
    if (PyModule_AddStringConstant(m, "ISA", K.isa) < 0) return -1;
    return PyModule_AddStringConstant(m, "BF16_ISA", KB.isa);
}

/* Row range of thread `tid` of `n` over `rows` rows. */
#define SHARE(rows, r0, r1)                                                                     \
    int tid_ = omp_get_thread_num(), n_ = omp_get_num_threads();                                \
    int64_t r0 = (rows) * tid_ / n_, r1 = (rows) * (tid_ + 1) / n_

#define PTR(T, v) ((T *)(uintptr_t)(v))

static PyObject *softcap_ce(PyObject *self, PyObject *args) {
    unsigned long long z, e, y, rs, loss;
    long long rows, V;
    float cap;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKKKLLfi", &z, &e, &y, &rs, &loss, &rows, &V, &cap, &threads))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(rows, r0, r1);
        K.softcap_ce(PTR(float, z), PTR(float, e), PTR(const int64_t, y),
                     rs ? PTR(const float, rs) : NULL, PTR(float, loss), r0, r1, V, cap);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *rms_fwd(PyObject *self, PyObject *args) {
    unsigned long long x, y, r;
    long long N, C;
    float eps;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKLLfi", &x, &y, &r, &N, &C, &eps, &threads)) return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(N, r0, r1);
        K.rms_fwd(PTR(const float, x), PTR(float, y), PTR(float, r), r0, r1, C, eps);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *rms_bwd(PyObject *self, PyObject *args) {
    unsigned long long g, y, r, dx;
    long long N, C;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKKLLi", &g, &y, &r, &dx, &N, &C, &threads)) return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(N, r0, r1);
        K.rms_bwd(PTR(const float, g), PTR(const float, y), PTR(const float, r), PTR(float, dx),
                  r0, r1, C);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *qk_fwd(PyObject *self, PyObject *args) {
    unsigned long long qkv, out, vout, r, c, s;
    long long B, T, H, D;
    float eps;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKKKKLLLLfi", &qkv, &out, &vout, &r, &c, &s, &B, &T, &H, &D,
                          &eps, &threads))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(B * T, r0, r1);
        K.qk_fwd(PTR(const float, qkv), PTR(float, out), PTR(float, vout), PTR(float, r),
                 PTR(const float, c), PTR(const float, s), r0, r1, B, T, H, D, eps);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *qk_bwd(PyObject *self, PyObject *args) {
    unsigned long long gq, gk, gv, out, r, c, s, g;
    long long sb, sh, st, B, T, H, D;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKLLLKKKKKLLLLi", &gq, &gk, &gv, &sb, &sh, &st, &out, &r, &c,
                          &s, &g, &B, &T, &H, &D, &threads))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(B * T, r0, r1);
        K.qk_bwd(PTR(const float, gq), PTR(const float, gk), PTR(const float, gv), sb, sh, st,
                 PTR(const float, out), PTR(const float, r), PTR(const float, c),
                 PTR(const float, s), PTR(float, g), r0, r1, B, T, H, D);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *relu_sq(PyObject *self, PyObject *args) {
    unsigned long long u, a;
    long long n;
    int threads;
    if (!PyArg_ParseTuple(args, "KKLi", &u, &a, &n, &threads)) return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(n, i0, i1);
        K.relu_sq(PTR(float, u), PTR(float, a), i0, i1);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *causal_softmax(PyObject *self, PyObject *args) {
    unsigned long long p;
    long long n, rows, cols, first;
    float scale;
    int threads;
    if (!PyArg_ParseTuple(args, "KLLLLfi", &p, &n, &rows, &cols, &first, &scale, &threads))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(n * rows, r0, r1);
        K.causal_softmax(PTR(float, p), r0, r1, rows, cols, first, scale);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *softmax_bwd(PyObject *self, PyObject *args) {
    unsigned long long ds, p, rowdot;
    long long n, rows, cols, first, T;
    float scale;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKLLLLLfi", &ds, &p, &rowdot, &n, &rows, &cols, &first, &T,
                          &scale, &threads))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(n * rows, r0, r1);
        K.softmax_bwd(PTR(float, ds), PTR(const float, p), PTR(const float, rowdot), r0, r1, rows,
                      cols, first, T, scale);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---- bf16 kernels (uint16 buffers; see _native_bf16.h) ---------------------------------- */

static PyObject *set_isa(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    int known = 0;
    for (size_t i = 0; i < sizeof ISAS / sizeof *ISAS; i++) known |= !strcmp(name, ISAS[i]);
    if (!known)
        return PyErr_Format(PyExc_ValueError,
                            "unknown instruction set %s (avx512bf16, avx512, avx2, generic)", name);
    if (use_isa(name) < 0)
        return PyErr_Format(PyExc_ValueError, "this CPU cannot run the %s kernels", name);
    if (publish_isa(self) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *supported_isas(PyObject *self, PyObject *args) {
    PyObject *out = PyList_New(0);
    for (size_t i = 0; out && i < sizeof ISAS / sizeof *ISAS; i++) {
        if (!cpu_runs(ISAS[i])) continue;
        PyObject *s = PyUnicode_FromString(ISAS[i]);
        if (!s || PyList_Append(out, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(s);
    }
    return out;
}

static PyObject *rms_fwd_bf16(PyObject *self, PyObject *args) {
    unsigned long long x, y, r;
    long long N, C;
    float eps;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKLLfi", &x, &y, &r, &N, &C, &eps, &threads)) return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(N, r0, r1);
        KB.rms_fwd(PTR(const uint16_t, x), PTR(uint16_t, y), PTR(float, r), r0, r1, C, eps);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *rms_bwd_bf16(PyObject *self, PyObject *args) {
    unsigned long long g, y, r, dx;
    long long N, C;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKKLLi", &g, &y, &r, &dx, &N, &C, &threads)) return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(N, r0, r1);
        KB.rms_bwd(PTR(const uint16_t, g), PTR(const uint16_t, y), PTR(const float, r),
                   PTR(uint16_t, dx), r0, r1, C);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *rms_fwd_cast_bf16(PyObject *self, PyObject *args) {
    unsigned long long x, y, r;
    long long N, C;
    float eps;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKLLfi", &x, &y, &r, &N, &C, &eps, &threads)) return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(N, r0, r1);
        KB.rms_fwd_cast(PTR(const float, x), PTR(uint16_t, y), PTR(float, r), r0, r1, C, eps);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *rms_bwd_cast_bf16(PyObject *self, PyObject *args) {
    unsigned long long g, y, r, dx;
    long long N, C;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKKLLi", &g, &y, &r, &dx, &N, &C, &threads)) return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(N, r0, r1);
        KB.rms_bwd_cast(PTR(const uint16_t, g), PTR(const uint16_t, y), PTR(const float, r),
                        PTR(float, dx), r0, r1, C);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *qk_fwd_bf16(PyObject *self, PyObject *args) {
    unsigned long long qkv, out, vout, r, c, s;
    long long B, T, H, D;
    float eps;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKKKKLLLLfi", &qkv, &out, &vout, &r, &c, &s, &B, &T, &H, &D,
                          &eps, &threads))
        return NULL;
    if (D > 1024) return PyErr_Format(PyExc_ValueError, "head_dim %lld > 1024", D);
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(B * T, r0, r1);
        KB.qk_fwd(PTR(const uint16_t, qkv), PTR(uint16_t, out), PTR(uint16_t, vout),
                  PTR(float, r), PTR(const float, c), PTR(const float, s), r0, r1, B, T, H, D, eps);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *qk_bwd_bf16(PyObject *self, PyObject *args) {
    unsigned long long gq, gk, gv, out, r, c, s, g;
    long long sb, sh, st, B, T, H, D;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKLLLKKKKKLLLLi", &gq, &gk, &gv, &sb, &sh, &st, &out, &r, &c,
                          &s, &g, &B, &T, &H, &D, &threads))
        return NULL;
    if (D > 1024) return PyErr_Format(PyExc_ValueError, "head_dim %lld > 1024", D);
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(B * T, r0, r1);
        KB.qk_bwd(PTR(const uint16_t, gq), PTR(const uint16_t, gk), PTR(const uint16_t, gv), sb,
                  sh, st, PTR(const uint16_t, out), PTR(const float, r), PTR(const float, c),
                  PTR(const float, s), PTR(uint16_t, g), r0, r1, B, T, H, D);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *relu_sq_bf16(PyObject *self, PyObject *args) {
    unsigned long long u, a;
    long long n;
    int threads;
    if (!PyArg_ParseTuple(args, "KKLi", &u, &a, &n, &threads)) return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(n, i0, i1);
        KB.relu_sq(PTR(uint16_t, u), PTR(uint16_t, a), i0, i1);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *causal_softmax_bf16(PyObject *self, PyObject *args) {
    unsigned long long p;
    long long n, rows, cols, first;
    float scale;
    int threads;
    if (!PyArg_ParseTuple(args, "KLLLLfi", &p, &n, &rows, &cols, &first, &scale, &threads))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(n * rows, r0, r1);
        KB.causal_softmax(PTR(uint16_t, p), r0, r1, rows, cols, first, scale);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *softmax_bwd_bf16(PyObject *self, PyObject *args) {
    unsigned long long ds, p, rowdot;
    long long n, rows, cols, first, T;
    float scale;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKLLLLLfi", &ds, &p, &rowdot, &n, &rows, &cols, &first, &T,
                          &scale, &threads))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(n * rows, r0, r1);
        KB.softmax_bwd(PTR(uint16_t, ds), PTR(const uint16_t, p), PTR(const float, rowdot), r0,
                       r1, rows, cols, first, T, scale);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *rowdot_bf16(PyObject *self, PyObject *args) {
    unsigned long long g, o, rd;
    long long N, D;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKLLi", &g, &o, &rd, &N, &D, &threads)) return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(N, r0, r1);
        KB.rowdot(PTR(const uint16_t, g), PTR(const uint16_t, o), PTR(float, rd), r0, r1, D);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *softcap_ce_bf16(PyObject *self, PyObject *args) {
    unsigned long long zb, z, e, gb, y, rs, loss;
    long long rows, V;
    float cap;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKKKKKLLfi", &zb, &z, &e, &gb, &y, &rs, &loss, &rows, &V, &cap,
                          &threads))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(rows, r0, r1);
        KB.softcap_ce(PTR(const uint16_t, zb), PTR(float, z), PTR(float, e), PTR(uint16_t, gb),
                      PTR(const int64_t, y), rs ? PTR(const float, rs) : NULL, PTR(float, loss),
                      r0, r1, V, cap);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *to_bf16(PyObject *self, PyObject *args) {
    unsigned long long x, y;
    long long n;
    int threads;
    if (!PyArg_ParseTuple(args, "KKLi", &x, &y, &n, &threads)) return NULL;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        SHARE(n, i0, i1);
        KB.to_bf16(PTR(const float, x), PTR(uint16_t, y), i0, i1);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *decode_rows(PyObject *self, PyObject *args) {
    unsigned long long plan, tokens, pos, slots, logits;
    long long B;
    float cap, eps, qeps;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKKLKfffi", &plan, &tokens, &pos, &slots, &B, &logits, &cap,
                          &eps, &qeps, &threads))
        return NULL;
    const int64_t *P = PTR(const int64_t, plan);
    if (threads > P[P_THREADS]) threads = (int)P[P_THREADS];
    if (B > P[P_MAXB]) {
        PyErr_SetString(PyExc_ValueError, "decode_rows: more rows than the plan's scratch holds");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    DK.rows(P, PTR(const int64_t, tokens), PTR(const int64_t, pos), PTR(const int64_t, slots), B,
            PTR(float, logits), cap, eps, qeps);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *decode_greedy(PyObject *self, PyObject *args) {
    unsigned long long plan, stops, out, logits;
    long long token, pos, slot, n, n_stops, made = 0;
    float cap, eps, qeps;
    int threads;
    if (!PyArg_ParseTuple(args, "KLLLLKLKKfffi", &plan, &token, &pos, &slot, &n, &stops,
                          &n_stops, &out, &logits, &cap, &eps, &qeps, &threads))
        return NULL;
    const int64_t *P = PTR(const int64_t, plan);
    if (threads > P[P_THREADS]) threads = (int)P[P_THREADS];
    if (pos + n > P[P_T]) {
        PyErr_SetString(PyExc_ValueError, "decode_greedy: past the cache's max_len");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(threads)
    {
        int64_t k = DK.greedy(P, token, pos, slot, n, PTR(const int64_t, stops), n_stops,
                              PTR(int64_t, out), PTR(float, logits), cap, eps, qeps);
        if (omp_get_thread_num() == 0) made = k;
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromLongLong(made);
}

static PyObject *decode_scratch(PyObject *self, PyObject *args) {
    unsigned long long plan;
    long long B;
    if (!PyArg_ParseTuple(args, "KL", &plan, &B)) return NULL;
    int64_t off[8];
    return PyLong_FromLongLong(decode_layout(PTR(const int64_t, plan), B, off));
}

static PyObject *decode_isa(PyObject *self, PyObject *args) {
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "|z", &name)) return NULL;
    const char *previous = DK.isa;
    if (name && !pick_decode(name)) {
        PyErr_Format(PyExc_ValueError, "decode kernels %s: not built or not run by this CPU", name);
        return NULL;
    }
    return PyUnicode_FromString(previous);
}

static PyMethodDef methods[] = {
    {"decode_rows", decode_rows, METH_VARARGS,
     "decode_rows(plan, tokens, pos, slots, B, logits, cap, eps, qeps, threads): one token "
     "for each of B rows (positions and cache slots per row)"},
    {"decode_greedy", decode_greedy, METH_VARARGS,
     "decode_greedy(plan, token, pos, slot, n, stops, n_stops, out, logits, cap, eps, qeps, "
     "threads) -> tokens drawn: up to n greedy steps of one row"},
    {"decode_scratch", decode_scratch, METH_VARARGS,
     "decode_scratch(plan, B) -> floats of scratch a plan needs for B rows"},
    {"decode_isa", decode_isa, METH_VARARGS,
     "decode_isa(name=None) -> the decoding kernels' instruction set before; name picks one "
     "(generic, avx2, avx512, avx512bf16)"},
    {"softcap_ce", softcap_ce, METH_VARARGS,
     "softcap_ce(z, e, y, rs, loss, rows, V, cap, threads): softcapped CE rows, in place"},
    {"rms_fwd", rms_fwd, METH_VARARGS, "rms_fwd(x, y, r, N, C, eps, threads)"},
    {"rms_bwd", rms_bwd, METH_VARARGS, "rms_bwd(g, y, r, dx, N, C, threads)"},
    {"qk_fwd", qk_fwd, METH_VARARGS,
     "qk_fwd(qkv, out, vout, r, cos, sin, B, T, H, D, eps, threads)"},
    {"qk_bwd", qk_bwd, METH_VARARGS,
     "qk_bwd(gq, gk, gv, sb, sh, st, out, r, cos, sin, g, B, T, H, D, threads)"},
    {"relu_sq", relu_sq, METH_VARARGS, "relu_sq(u, a, n, threads): u = relu(u), a = u²"},
    {"causal_softmax", causal_softmax, METH_VARARGS,
     "causal_softmax(p, n, rows, cols, first, scale, threads)"},
    {"softmax_bwd", softmax_bwd, METH_VARARGS,
     "softmax_bwd(ds, p, rowdot, n, rows, cols, first, T, scale, threads)"},
    {"set_isa", set_isa, METH_VARARGS,
     "set_isa(name): use the avx512bf16, avx512, avx2 or generic copy (ValueError if the CPU "
     "cannot run it)"},
    {"supported_isas", supported_isas, METH_NOARGS, "supported_isas(): the copies this CPU runs"},
    {"rms_fwd_bf16", rms_fwd_bf16, METH_VARARGS, "rms_fwd_bf16(x, y, r, N, C, eps, threads)"},
    {"rms_bwd_bf16", rms_bwd_bf16, METH_VARARGS, "rms_bwd_bf16(g, y, r, dx, N, C, threads)"},
    {"rms_fwd_cast_bf16", rms_fwd_cast_bf16, METH_VARARGS,
     "rms_fwd_cast_bf16(x fp32, y bf16, r, N, C, eps, threads)"},
    {"rms_bwd_cast_bf16", rms_bwd_cast_bf16, METH_VARARGS,
     "rms_bwd_cast_bf16(g bf16, y bf16, r, dx fp32, N, C, threads)"},
    {"qk_fwd_bf16", qk_fwd_bf16, METH_VARARGS,
     "qk_fwd_bf16(qkv, out, vout, r, cos, sin, B, T, H, D, eps, threads)"},
    {"qk_bwd_bf16", qk_bwd_bf16, METH_VARARGS,
     "qk_bwd_bf16(gq, gk, gv, sb, sh, st, out, r, cos, sin, g, B, T, H, D, threads)"},
    {"relu_sq_bf16", relu_sq_bf16, METH_VARARGS, "relu_sq_bf16(u, a, n, threads)"},
    {"causal_softmax_bf16", causal_softmax_bf16, METH_VARARGS,
     "causal_softmax_bf16(p, n, rows, cols, first, scale, threads)"},
    {"softmax_bwd_bf16", softmax_bwd_bf16, METH_VARARGS,
     "softmax_bwd_bf16(ds, p, rowdot, n, rows, cols, first, T, scale, threads)"},
    {"rowdot_bf16", rowdot_bf16, METH_VARARGS, "rowdot_bf16(g, o, rd, N, D, threads)"},
    {"softcap_ce_bf16", softcap_ce_bf16, METH_VARARGS,
     "softcap_ce_bf16(zb, z, e, gb, y, rs, loss, rows, V, cap, threads)"},
    {"to_bf16", to_bf16, METH_VARARGS, "to_bf16(x, y, n, threads): fp32 -> bf16 (nearest even)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native",
                                    "Fused fp32 and bf16 CPU kernels (see backlm/model/kernels.py).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__native(void) {
    if (pick_isa() < 0) return NULL;
    pick_decode_best();
    PyObject *m = PyModule_Create(&module);
    if (m && publish_isa(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
