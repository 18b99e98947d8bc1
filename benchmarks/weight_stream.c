/* The memory ceiling of batch-1 decoding: the time to read every weight matrix of one token's
 * step once, with backlm's own matrix-vector kernel and nothing else (no attention, no norms,
 * no Python). benchmarks/decode.py compiles and runs it next to the real decoder.
 *
 *   gcc -O3 -fopenmp -std=gnu11 benchmarks/weight_stream.c -o /tmp/ws -lm
 *   /tmp/ws DEPTH WIDTH VOCAB THREADS REPS   ->  one line: microseconds per token, GB/s
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TARGET __attribute__((target("avx2,fma")))
#define SFX _avx2
#include "../backlm/_native_body.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 6) return 2;
    int L = atoi(argv[1]), th = atoi(argv[4]), reps = atoi(argv[5]);
    int64_t C = atoi(argv[2]), V = atoi(argv[3]);
    int n = 4 * L + 1;
    float **W = malloc(n * sizeof *W);
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
        W[i] = aligned_alloc(64, (size_t)(R[i] * N[i] * 4 + 64));
        for (int64_t j = 0; j < R[i] * N[i]; j++) W[i][j] = (float)(j % 7) * 0.01f;
        bytes += R[i] * N[i] * 4.0;
    }
    float *x = aligned_alloc(64, 16 * C * 4), *y = aligned_alloc(64, (V > 4 * C ? V : 4 * C) * 4);
    for (int64_t i = 0; i < 4 * C; i++) x[i] = 1.0f;
    double best = 1e9;
    for (int round = 0; round < 3; round++) {
        double t = now();
        for (int k = 0; k < reps; k++) {
#pragma omp parallel num_threads(th)
            for (int i = 0; i < n; i++) {
                gemv_avx2(W[i], x, y, R[i], N[i], 1.0f, 0, 0.0f);
#pragma omp barrier
            }
        }
        double dt = (now() - t) / reps;
        best = dt < best ? dt : best;
    }
    printf("%.1f %.2f\n", best * 1e6, bytes / best / 1e9);
    return 0;
}
