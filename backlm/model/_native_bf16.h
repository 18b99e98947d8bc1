/* bf16 kernel bodies of backlm/_native.c, compiled once per instruction set like
 * _native_body.h (SFX: name suffix, TARGET: GCC target attribute).
 *
 * bf16 tensors arrive as uint16_t buffers; every kernel widens to fp32 (a shift), computes in
 * fp32 registers and rounds back to nearest even once per output. With BF16_NATIVE the
 * rounding is the CPU's vcvtneps2bf16 (AVX512-BF16); the other copies use the bit trick of
 * c10's round_to_nearest_even, so copies agree to the last bit except on fp32 denormals,
 * which the instruction flushes to zero. Rows are processed in chunks of BF16_CHUNK floats
 * through a stack buffer, so the rounding is one vectorised pass per chunk.
 */

#ifndef BF16_CHUNK
#define BF16_CHUNK 512
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)
/* exp and tanh come from the _native_body.h copy of suffix XSFX (same or a subset target) */
#define FX(name) CAT(name, XSFX)

TARGET static inline float FN(bf2f)(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* fp32 -> bf16, round to nearest even; any NaN becomes torch's quiet NaN 0x7fc0. */
TARGET static inline uint16_t FN(f2bf)(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)0x7fc0u : (uint16_t)rounded;
}

/* dst[0, n) = bf16(src[0, n)). */
TARGET static void FN(store_bf16)(uint16_t *dst, const float *src, int64_t n) {
#ifdef BF16_NATIVE
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)h);
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i));
        _mm256_mask_storeu_epi16(dst + i, m, (__m256i)h);
    }
#else
#pragma omp simd
    for (int64_t i = 0; i < n; i++) dst[i] = FN(f2bf)(src[i]);
#endif
}

/* Σ x[j]·y[j] over n bf16 values, in fp32. */
TARGET static inline float FN(dot_bf16)(const uint16_t *x, const uint16_t *y, int64_t n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; j++) s += FN(bf2f)(x[j]) * FN(bf2f)(y[j]);
    return s;
}

/* RMS norm of bf16 rows [r0, r1) of (N, C): y = bf16(x·r), r = (mean(x²) + eps)^-½ in fp32. */
TARGET static void FN(rms_fwd_bf16_rows)(const uint16_t *x, uint16_t *y, float *rinv, int64_t r0,
                                         int64_t r1, int64_t C, float eps) {
    float buf[BF16_CHUNK];
    for (int64_t i = r0; i < r1; i++) {
        const uint16_t *xi = x + i * C;
        float r = 1.0f / sqrtf(FN(dot_bf16)(xi, xi, C) / (float)C + eps);
        rinv[i] = r;
        for (int64_t c0 = 0; c0 < C; c0 += BF16_CHUNK) {
            int64_t m = C - c0 < BF16_CHUNK ? C - c0 : BF16_CHUNK;
#pragma omp simd
            for (int64_t j = 0; j < m; j++) buf[j] = FN(bf2f)(xi[c0 + j]) * r;
            FN(store_bf16)(y + i * C + c0, buf, m);
        }
    }
}

/* Its backward: dx = bf16(r·(g − y·mean(g·y))). dx may alias g. */
TARGET static void FN(rms_bwd_bf16_rows)(const uint16_t *g, const uint16_t *y, const float *rinv,
                                         uint16_t *dx, int64_t r0, int64_t r1, int64_t C) {
    float buf[BF16_CHUNK];
    for (int64_t i = r0; i < r1; i++) {
        const uint16_t *gi = g + i * C, *yi = y + i * C;
        float s = FN(dot_bf16)(gi, yi, C) / (float)C, r = rinv[i];
        for (int64_t c0 = 0; c0 < C; c0 += BF16_CHUNK) {
            int64_t m = C - c0 < BF16_CHUNK ? C - c0 : BF16_CHUNK;
#pragma omp simd
            for (int64_t j = 0; j < m; j++)
                buf[j] = r * (FN(bf2f)(gi[c0 + j]) - FN(bf2f)(yi[c0 + j]) * s);
            FN(store_bf16)(dx + i * C + c0, buf, m);
        }
    }
}

/* RMS norm of fp32 rows [r0, r1) of (N, C) straight to bf16: y = bf16(x·r), r fp32. Under bf16
 * autocast the residual stream stays fp32 and the matmuls take the normed rows in bf16: one
 * pass instead of the fp32 norm and a cast. */
TARGET static void FN(rms_fwd_cast_bf16_rows)(const float *x, uint16_t *y, float *rinv,
                                              int64_t r0, int64_t r1, int64_t C, float eps) {
    float buf[BF16_CHUNK];
    for (int64_t i = r0; i < r1; i++) {
        const float *xi = x + i * C;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int64_t j = 0; j < C; j++) ss += xi[j] * xi[j];
        float r = 1.0f / sqrtf(ss / (float)C + eps);
        rinv[i] = r;
        for (int64_t c0 = 0; c0 < C; c0 += BF16_CHUNK) {
            int64_t m = C - c0 < BF16_CHUNK ? C - c0 : BF16_CHUNK;
#pragma omp simd
            for (int64_t j = 0; j < m; j++) buf[j] = xi[c0 + j] * r;
            FN(store_bf16)(y + i * C + c0, buf, m);
        }
    }
}

/* Its backward from the bf16 gradient of y into the fp32 residual: dx = r·(g − y·mean(g·y)). */
TARGET static void FN(rms_bwd_cast_bf16_rows)(const uint16_t *g, const uint16_t *y,
                                              const float *rinv, float *dx, int64_t r0, int64_t r1,
                                              int64_t C) {
    for (int64_t i = r0; i < r1; i++) {
        const uint16_t *gi = g + i * C, *yi = y + i * C;
        float s = FN(dot_bf16)(gi, yi, C) / (float)C, r = rinv[i];
        float *di = dx + i * C;
#pragma omp simd
        for (int64_t j = 0; j < C; j++) di[j] = r * (FN(bf2f)(gi[j]) - FN(bf2f)(yi[j]) * s);
    }
}

/* QK norm + rotary in bf16: as qk_fwd_rows (layouts and pairing there), with qkv, out and vout
 * bf16, rinv and the (T, D/2) cos/sin tables fp32. D ≤ 2·BF16_CHUNK. */
TARGET static void FN(qk_fwd_bf16_rows)(const uint16_t *qkv, uint16_t *out, uint16_t *vout,
                                        float *rinv, const float *cosb, const float *sinb,
                                        int64_t r0, int64_t r1, int64_t B, int64_t T, int64_t H,
                                        int64_t D, float eps) {
    int64_t h2 = D / 2;
    float buf[2 * BF16_CHUNK];
    for (int64_t row = r0; row < r1; row++) {
        int64_t b = row / T, t = row % T;
        const float *c = cosb + t * h2, *s = sinb + t * h2;
        for (int64_t v = 0; v < 2 * H; v++) {
            int64_t which = v / H, h = v % H;
            const uint16_t *x = qkv + (row * 3 * H + v) * D;
            float r = 1.0f / sqrtf(FN(dot_bf16)(x, x, D) / (float)D + eps);
            rinv[row * 2 * H + v] = r;
#pragma omp simd
            for (int64_t j = 0; j < h2; j++) {
                float x1 = FN(bf2f)(x[j]) * r, x2 = FN(bf2f)(x[j + h2]) * r;
                buf[j] = x1 * c[j] + x2 * s[j];
                buf[j + h2] = x2 * c[j] - x1 * s[j];
            }
            FN(store_bf16)(out + (((which * B + b) * H + h) * T + t) * D, buf, D);
        }
        for (int64_t h = 0; h < H; h++)
            memcpy(vout + ((b * H + h) * T + t) * D, qkv + (row * 3 * H + 2 * H + h) * D,
                   (size_t)D * sizeof(uint16_t));
    }
}

/* Its backward, as qk_bwd_rows with bf16 gradients, out and g. */
TARGET static void FN(qk_bwd_bf16_rows)(const uint16_t *gq, const uint16_t *gk, const uint16_t *gv,
                                        int64_t sb, int64_t sh, int64_t st, const uint16_t *out,
                                        const float *rinv, const float *cosb, const float *sinb,
                                        uint16_t *g, int64_t r0, int64_t r1, int64_t B, int64_t T,
                                        int64_t H, int64_t D) {
    int64_t h2 = D / 2;
    float buf[2 * BF16_CHUNK];
    for (int64_t row = r0; row < r1; row++) {
        int64_t b = row / T, t = row % T;
        const float *c = cosb + t * h2, *s = sinb + t * h2;
        for (int64_t v = 0; v < 2 * H; v++) {
            int64_t which = v / H, h = v % H;
            const uint16_t *gi = (which ? gk : gq) + b * sb + h * sh + t * st;
            const uint16_t *y = out + (((which * B + b) * H + h) * T + t) * D;
            float m = FN(dot_bf16)(gi, y, D) / (float)D, r = rinv[row * 2 * H + v];
#pragma omp simd
            for (int64_t j = 0; j < h2; j++) {
                float a1 = r * (FN(bf2f)(gi[j]) - FN(bf2f)(y[j]) * m);
                float a2 = r * (FN(bf2f)(gi[j + h2]) - FN(bf2f)(y[j + h2]) * m);
                buf[j] = a1 * c[j] - a2 * s[j];
                buf[j + h2] = a2 * c[j] + a1 * s[j];
            }
            FN(store_bf16)(g + (row * 3 * H + v) * D, buf, D);
        }
        for (int64_t h = 0; h < H; h++)
            memcpy(g + (row * 3 * H + 2 * H + h) * D, gv + b * sb + h * sh + t * st,
                   (size_t)D * sizeof(uint16_t));
    }
}

/* ReLU² in bf16 over elements [i0, i1): u = relu(u) in place (exact), a = bf16(u²). */
TARGET static void FN(relu_sq_bf16_range)(uint16_t *u, uint16_t *a, int64_t i0, int64_t i1) {
    float buf[BF16_CHUNK];
    for (int64_t c0 = i0; c0 < i1; c0 += BF16_CHUNK) {
        int64_t m = i1 - c0 < BF16_CHUNK ? i1 - c0 : BF16_CHUNK;
#pragma omp simd
        for (int64_t j = 0; j < m; j++) {
            float h = FN(bf2f)(u[c0 + j]);
            h = h > 0.0f ? h : 0.0f;
            u[c0 + j] = FN(f2bf)(h); /* exact: h is a bf16 value or 0 */
            buf[j] = h * h;
        }
        FN(store_bf16)(a + c0, buf, m);
    }
}

/* Causal softmax of scale·p in place over bf16 score rows, as causal_softmax_rows. Three
 * sweeps of the row (max, sum, normalised store) so each probability is rounded once. */
TARGET static void FN(causal_softmax_bf16_rows)(uint16_t *p, int64_t r0, int64_t r1, int64_t rows,
                                                int64_t cols, int64_t first, float scale) {
    float buf[BF16_CHUNK];
    for (int64_t k = r0; k < r1; k++) {
        uint16_t *pr = p + k * cols;
        int64_t seen = first + (k % rows) + 1;
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int64_t j = 0; j < seen; j++) {
            float f = FN(bf2f)(pr[j]);
            mx = f > mx ? f : mx;
        }
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < seen; j++) s += FX(vexp)((FN(bf2f)(pr[j]) - mx) * scale);
        float inv = 1.0f / s;
        for (int64_t c0 = 0; c0 < seen; c0 += BF16_CHUNK) {
            int64_t m = seen - c0 < BF16_CHUNK ? seen - c0 : BF16_CHUNK;
#pragma omp simd
            for (int64_t j = 0; j < m; j++) buf[j] = FX(vexp)((FN(bf2f)(pr[c0 + j]) - mx) * scale) * inv;
            FN(store_bf16)(pr + c0, buf, m);
        }
        for (int64_t j = seen; j < cols; j++) pr[j] = 0;
    }
}

/* Backward of the bf16 softmax, in place: ds = bf16(scale·(ds − rowdot)·p), rowdot fp32, as
 * softmax_bwd_rows. */
TARGET static void FN(softmax_bwd_bf16_rows)(uint16_t *ds, const uint16_t *p, const float *rowdot,
                                             int64_t r0, int64_t r1, int64_t rows, int64_t cols,
                                             int64_t first, int64_t T, float scale) {
    float buf[BF16_CHUNK];
    for (int64_t k = r0; k < r1; k++) {
        uint16_t *dr = ds + k * cols;
        const uint16_t *pr = p + k * cols;
        float rd = rowdot[(k / rows) * T + first + (k % rows)];
        for (int64_t c0 = 0; c0 < cols; c0 += BF16_CHUNK) {
            int64_t m = cols - c0 < BF16_CHUNK ? cols - c0 : BF16_CHUNK;
#pragma omp simd
            for (int64_t j = 0; j < m; j++)
                buf[j] = (FN(bf2f)(dr[c0 + j]) - rd) * FN(bf2f)(pr[c0 + j]) * scale;
            FN(store_bf16)(dr + c0, buf, m);
        }
    }
}

/* rd[i] = Σ_j g[i, j]·o[i, j] in fp32 over bf16 rows [r0, r1) of (N, D): attention's
 * rowsum(dO ∘ O). */
TARGET static void FN(rowdot_bf16_rows)(const uint16_t *g, const uint16_t *o, float *rd,
                                        int64_t r0, int64_t r1, int64_t D) {
    for (int64_t i = r0; i < r1; i++) rd[i] = FN(dot_bf16)(g + i * D, o + i * D, D);
}

/* Softcapped cross-entropy over rows [r0, r1) of bf16 logits zb (rows, V), as softcap_ce_rows
 * with the 1/cap applied here: z and e are fp32 row scratch (tanh and exp), and with rs the
 * gradient goes to gb in bf16, ready for the head's bf16 matmuls. */
TARGET static void FN(softcap_ce_bf16_rows)(const uint16_t *zb, float *z, float *e, uint16_t *gb,
                                            const int64_t *y, const float *rs, float *loss,
                                            int64_t r0, int64_t r1, int64_t V, float cap) {
    float inv_cap = 1.0f / cap;
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t *xr = zb + r * V;
        float *zr = z + r * V, *er = e + r * V;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < V; j++) {
            float t = FX(vtanh)(FN(bf2f)(xr[j]) * inv_cap);
            float ex = FX(vexp)(cap * t);
            zr[j] = t;
            er[j] = ex;
            s += ex;
        }
        int64_t yi = y[r];
        float ty = zr[yi];
        loss[r] = logf(s) - cap * ty;
        if (rs) {
            float w = rs[r], sc = w / s;
#pragma omp simd
            for (int64_t j = 0; j < V; j++) {
                float t = zr[j];
                er[j] = er[j] * sc * (1.0f - t * t);
            }
            er[yi] -= w * (1.0f - ty * ty);
            FN(store_bf16)(gb + r * V, er, V);
        }
    }
}

/* fp32 -> bf16 over [i0, i1) (the conversion the kernels use; tests check its rounding). */
TARGET static void FN(to_bf16_range)(const float *x, uint16_t *y, int64_t i0, int64_t i1) {
    FN(store_bf16)(y + i0, x + i0, i1 - i0);
}

#undef FN
#undef FX
#undef CAT
#undef CAT_
