/* The decoding matmul's portable body (see _native_decode.h), for MM_T weights and inputs read
 * through MM_LOAD; included once per element type, it defines DFN(MM_NAME). */
TARGET static void DFN(MM_NAME)(const MM_T *W, int64_t ldw, const MM_T *X, int64_t ldx,
                                float *out, int64_t ldo, int64_t o0, int64_t o1, int64_t n,
                                int64_t B) {
    for (int64_t o = o0; o < o1; o += 4) {
        int64_t m = o1 - o < 4 ? o1 - o : 4;
        const MM_T *w0 = W + o * ldw, *w1 = W + (o + (m > 1)) * ldw;
        const MM_T *w2 = W + (o + (m > 2 ? 2 : 0)) * ldw, *w3 = W + (o + (m > 3 ? 3 : 0)) * ldw;
        for (int64_t b = 0; b < B; b += 4) {
            int64_t k = B - b < 4 ? B - b : 4;
            const MM_T *x0 = X + b * ldx, *x1 = X + (b + (k > 1)) * ldx;
            const MM_T *x2 = X + (b + (k > 2 ? 2 : 0)) * ldx;
            const MM_T *x3 = X + (b + (k > 3 ? 3 : 0)) * ldx;
            float s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
            float s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
            if (k == 1) {
#pragma omp simd reduction(+ : s00, s10, s20, s30)
                for (int64_t j = 0; j < n; j++) {
                    float a = MM_LOAD(x0[j]);
                    s00 += MM_LOAD(w0[j]) * a, s10 += MM_LOAD(w1[j]) * a;
                    s20 += MM_LOAD(w2[j]) * a, s30 += MM_LOAD(w3[j]) * a;
                }
            } else {
#pragma omp simd reduction(+ : s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, \
                               s30, s31, s32, s33)
                for (int64_t j = 0; j < n; j++) {
                    float a0 = MM_LOAD(x0[j]), a1 = MM_LOAD(x1[j]), a2 = MM_LOAD(x2[j]);
                    float a3 = MM_LOAD(x3[j]);
                    float v0 = MM_LOAD(w0[j]), v1 = MM_LOAD(w1[j]), v2 = MM_LOAD(w2[j]);
                    float v3 = MM_LOAD(w3[j]);
                    s00 += v0 * a0, s01 += v0 * a1, s02 += v0 * a2, s03 += v0 * a3;
                    s10 += v1 * a0, s11 += v1 * a1, s12 += v1 * a2, s13 += v1 * a3;
                    s20 += v2 * a0, s21 += v2 * a1, s22 += v2 * a2, s23 += v2 * a3;
                    s30 += v3 * a0, s31 += v3 * a1, s32 += v3 * a2, s33 += v3 * a3;
                }
            }
            float s[4][4] = {{s00, s01, s02, s03}, {s10, s11, s12, s13},
                             {s20, s21, s22, s23}, {s30, s31, s32, s33}};
            for (int64_t i = 0; i < m; i++)
                for (int64_t c = 0; c < k; c++) out[(b + c) * ldo + o + i] = s[i][c];
        }
    }
}

#undef MM_NAME
#undef MM_T
#undef MM_LOAD
