/* The memory ceiling of batch-1 decoding: the time to read every weight matrix of one token's
 * step once, with backlm's own decoding matmul (backlm/model/_native_decode.h) and nothing
 * else (no attention, no norms, no Python). benchmarks/decode.py compiles and runs it next to
 * the real decoder, in fp32 and in bf16 (bf16 weights, AVX512-BF16 products when the CPU has
 * them, else the portable bf16 path).
 *
 *   gcc -O3 -fopenmp -std=gnu11 benchmarks/weight_stream.c -o /tmp/ws -lm
 *   /tmp/ws DEPTH WIDTH VOCAB THREADS REPS [fp32|bf16]  ->  one line: microseconds per token, GB/s
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* the decoding kernels borrow exp/tanh (_native_body.h) and the bf16 conversions (_native_bf16.h) */
#define TARGET __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))
#define SFX _avx512
#define XSFX _avx512
#include "../backlm/model/_native_body.h"
#include "../backlm/model/_native_bf16.h"
#undef TARGET
#undef SFX
#define TARGET __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx2,fma")))
#define SFX _avx512bf16
#define BF16_NATIVE
#include "../backlm/model/_native_bf16.h"
#undef BF16_NATIVE
#undef TARGET
#undef SFX

#define DPBF16 0
#define TARGET __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))
#define SFX _avx512
#include "../backlm/model/_native_decode.h"
#undef TARGET
#undef SFX
#undef DPBF16
#define DPBF16 1
#define TARGET __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx2,fma")))
#define SFX _avx512bf16
#include "../backlm/model/_native_decode.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) return 2;
    int L = atoi(argv[1]), th = atoi(argv[4]), reps = atoi(argv[5]);
    int bf = argc == 7 && !strcmp(argv[6], "bf16");
    __builtin_cpu_init();
    int dp = bf && __builtin_cpu_supports("avx512bf16");
    if (!__builtin_cpu_supports("avx512f")) return 3;
    size_t es = bf ? 2 : 4;
    int64_t C = atoi(argv[2]), V = atoi(argv[3]);
    int n = 4 * L + 1;
    void **W = malloc(n * sizeof *W);
    int64_t *R = malloc(n * sizeof *R), *N = malloc(n * sizeof *N);
    for (int l = 0; l < L; l++) { /* qkv, attention proj, fc, mlp proj: the model's order */
        R[4 * l] = 3 * C, N[4 * l] = C;
        R[4 * l + 1] = C, N[4 * l + 1] = C;
        R[4 * l + 2] = 4 * C, N[4 * l + 2] = C;
        R[4 * l + 3] = C, N[4 * l + 3] = 4 * C;
    }
    R[n - 1] = V, N[n - 1] = C;
    double bytes = 0;
    for (int i = 0; i < n; i++) {
        size_t count = (size_t)(R[i] * N[i]);
        W[i] = aligned_alloc(64, (count * es + 64) / 64 * 64);
        for (size_t j = 0; j < count; j++) {
            float v = (float)(j % 7) * 0.01f;
            if (bf) ((uint16_t *)W[i])[j] = f2bf_avx512(v);
            else ((float *)W[i])[j] = v;
        }
        bytes += count * (double)es;
    }
    float *x = aligned_alloc(64, 16 * C * 4), *y = aligned_alloc(64, (V > 4 * C ? V : 4 * C) * 4);
    for (int64_t i = 0; i < 4 * C; i++) x[i] = 1.0f;
    uint16_t *xb = aligned_alloc(64, 16 * C * 2);
    for (int64_t i = 0; i < 4 * C; i++) xb[i] = f2bf_avx512(1.0f);
    double best = 1e9;
    for (int round = 0; round < 3; round++) {
        double t = now();
        for (int k = 0; k < reps; k++) {
#pragma omp parallel num_threads(th)
            for (int i = 0; i < n; i++) {
                int64_t r0, r1;
                dshare_avx512(R[i], &r0, &r1);
                if (dp) mm_bf16_avx512bf16(W[i], N[i], xb, N[i], y, R[i], r0, r1, N[i], 1);
                else if (bf) mm_bf16_avx512(W[i], N[i], xb, N[i], y, R[i], r0, r1, N[i], 1);
                else mm_f32_avx512(W[i], N[i], x, N[i], y, R[i], r0, r1, N[i], 1);
#pragma omp barrier
            }
        }
        double dt = (now() - t) / reps;
        best = dt < best ? dt : best;
    }
    printf("%.1f %.2f %s\n", best * 1e6, bytes / best / 1e9, dp ? "dpbf16" : bf ? "bf16-portable" : "fp32");
    return 0;
}
