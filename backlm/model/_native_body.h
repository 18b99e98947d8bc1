/* Kernel bodies of backlm/_native.c, compiled once per instruction set.
 *
 * _native.c includes this file several times with SFX (a name suffix) and TARGET (a GCC target
 * attribute) defined, and picks one copy at import time from what the CPU supports. Each
 * function works on a range of rows so the OpenMP region in _native.c can hand every thread
 * its share; the loops are plain C that GCC vectorises for the target.
 */

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)

/* e^x to ~2 ulp (Cephes' expf), written so that GCC vectorises it: no calls, no branches. */
TARGET static inline float FN(vexp)(float x) {
    /* maxps / minps, written so that a NaN stays NaN (divergence checks rely on it) */
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    float fx = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - fx * 0.693359375f + fx * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)fx + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* tanh(u) = 1 - 2 / (e^{2u} + 1): exact limits at ±inf, absolute error ~1e-7 near 0. */
TARGET static inline float FN(vtanh)(float u) {
    return 1.0f - 2.0f / (FN(vexp)(2.0f * u) + 1.0f);
}

/* Softcapped cross-entropy over rows [r0, r1) of a (rows, V) chunk.
 * z holds logits / cap on entry and tanh(logits / cap) on exit. loss[r] = logsumexp(cap·t) −
 * cap·t[y]. With rs (a weight per row), e gets rs·(softmax − onehot)·(1 − t²): the gradient
 * of Σ rs·loss with respect to the raw logits x·Wᵀ (the cap and 1/cap cancel). Without rs, e
 * is scratch. |cap·t| ≤ cap ≤ 40 keeps exp finite, so no max shift is needed. */
TARGET static void FN(softcap_ce_rows)(float *z, float *e, const int64_t *y, const float *rs,
                                       float *loss, int64_t r0, int64_t r1, int64_t V, float cap) {
    for (int64_t r = r0; r < r1; r++) {
        float *zr = z + r * V, *er = e + r * V;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < V; j++) {
            float t = FN(vtanh)(zr[j]);
            float ex = FN(vexp)(cap * t);
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
        }
    }
}

/* RMS norm of rows [r0, r1) of a (N, C) matrix: y = x·r, r = (mean(x²) + eps)^-½. */
TARGET static void FN(rms_fwd_rows)(const float *x, float *y, float *rinv, int64_t r0, int64_t r1,
                                    int64_t C, float eps) {
    for (int64_t i = r0; i < r1; i++) {
        const float *xi = x + i * C;
        float *yi = y + i * C;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int64_t j = 0; j < C; j++) ss += xi[j] * xi[j];
        float r = 1.0f / sqrtf(ss / (float)C + eps);
        rinv[i] = r;
#pragma omp simd
        for (int64_t j = 0; j < C; j++) yi[j] = xi[j] * r;
    }
}

/* Its backward: dx = r·(g − y·mean(g·y)). dx may alias g. */
TARGET static void FN(rms_bwd_rows)(const float *g, const float *y, const float *rinv, float *dx,
                                    int64_t r0, int64_t r1, int64_t C) {
    for (int64_t i = r0; i < r1; i++) {
        const float *gi = g + i * C, *yi = y + i * C;
        float *di = dx + i * C;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < C; j++) s += gi[j] * yi[j];
        s /= (float)C;
        float r = rinv[i];
#pragma omp simd
        for (int64_t j = 0; j < C; j++) di[j] = r * (gi[j] - yi[j] * s);
    }
}

/* QK norm + rotary, forward, over token rows [r0, r1) of the B·T rows (row = b·T + t).
 * qkv is (B, T, 3, H, D), the projection's output. out (2, B, H, T, D) gets rotate(x·r) for q
 * and k, vout (B, H, T, D) a copy of v: each one contiguous, as attention's batched matmuls
 * want them. rinv (B·T, 2H) keeps r. cos and sin are (T, D/2); halves are paired:
 * (x1, x2) → (x1·c + x2·s, x2·c − x1·s). */
TARGET static void FN(qk_fwd_rows)(const float *qkv, float *out, float *vout, float *rinv,
                                   const float *cosb, const float *sinb, int64_t r0, int64_t r1,
                                   int64_t B, int64_t T, int64_t H, int64_t D, float eps) {
    int64_t h2 = D / 2;
    for (int64_t row = r0; row < r1; row++) {
        int64_t b = row / T, t = row % T;
        const float *c = cosb + t * h2, *s = sinb + t * h2;
        for (int64_t v = 0; v < 2 * H; v++) {
            int64_t which = v / H, h = v % H;
            const float *x = qkv + (row * 3 * H + v) * D;
            float *o = out + (((which * B + b) * H + h) * T + t) * D;
            float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
            for (int64_t j = 0; j < D; j++) ss += x[j] * x[j];
            float r = 1.0f / sqrtf(ss / (float)D + eps);
            rinv[row * 2 * H + v] = r;
#pragma omp simd
            for (int64_t j = 0; j < h2; j++) {
                float x1 = x[j] * r, x2 = x[j + h2] * r;
                o[j] = x1 * c[j] + x2 * s[j];
                o[j + h2] = x2 * c[j] - x1 * s[j];
            }
        }
        for (int64_t h = 0; h < H; h++)
            memcpy(vout + ((b * H + h) * T + t) * D, qkv + (row * 3 * H + 2 * H + h) * D,
                   (size_t)D * sizeof(float));
    }
}

/* Its backward for token rows [r0, r1): the gradients of q, k and v come as (B, H, T, D)
 * tensors sharing strides (sb, sh, st) with unit last stride; g (B, T, 3, H, D) gets the
 * gradient of the projection output. The RMS backward commutes with the rotation
 * (orthogonal), so it runs on the rotated output, then the inverse rotation. */
TARGET static void FN(qk_bwd_rows)(const float *gq, const float *gk, const float *gv, int64_t sb,
                                   int64_t sh, int64_t st, const float *out, const float *rinv,
                                   const float *cosb, const float *sinb, float *g, int64_t r0,
                                   int64_t r1, int64_t B, int64_t T, int64_t H, int64_t D) {
    int64_t h2 = D / 2;
    for (int64_t row = r0; row < r1; row++) {
        int64_t b = row / T, t = row % T;
        const float *c = cosb + t * h2, *s = sinb + t * h2;
        for (int64_t v = 0; v < 2 * H; v++) {
            int64_t which = v / H, h = v % H;
            const float *gi = (which ? gk : gq) + b * sb + h * sh + t * st;
            const float *y = out + (((which * B + b) * H + h) * T + t) * D;
            float *gx = g + (row * 3 * H + v) * D;
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t j = 0; j < D; j++) dot += gi[j] * y[j];
            float m = dot / (float)D, r = rinv[row * 2 * H + v];
#pragma omp simd
            for (int64_t j = 0; j < h2; j++) {
                float a1 = r * (gi[j] - y[j] * m), a2 = r * (gi[j + h2] - y[j + h2] * m);
                gx[j] = a1 * c[j] - a2 * s[j];
                gx[j + h2] = a2 * c[j] + a1 * s[j];
            }
        }
        for (int64_t h = 0; h < H; h++)
            memcpy(g + (row * 3 * H + 2 * H + h) * D, gv + b * sb + h * sh + t * st,
                   (size_t)D * sizeof(float));
    }
}

/* ReLU², forward, over elements [i0, i1): u becomes relu(u) in place and a gets relu(u)². */
TARGET static void FN(relu_sq_range)(float *u, float *a, int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; i++) {
        float h = u[i] > 0.0f ? u[i] : 0.0f;
        u[i] = h;
        a[i] = h * h;
    }
}

/* Causal softmax of scale·p, in place, over attention score rows [r0, r1) of a (n·rows, cols)
 * block whose query row i (0-based within the block) sees keys [0, first + i]; later keys
 * get 0. */
TARGET static void FN(causal_softmax_rows)(float *p, int64_t r0, int64_t r1, int64_t rows,
                                           int64_t cols, int64_t first, float scale) {
    for (int64_t k = r0; k < r1; k++) {
        float *pr = p + k * cols;
        int64_t seen = first + (k % rows) + 1;
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int64_t j = 0; j < seen; j++) mx = pr[j] > mx ? pr[j] : mx;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < seen; j++) {
            float ex = FN(vexp)((pr[j] - mx) * scale);
            pr[j] = ex;
            s += ex;
        }
        float inv = 1.0f / s;
#pragma omp simd
        for (int64_t j = 0; j < seen; j++) pr[j] *= inv;
        for (int64_t j = seen; j < cols; j++) pr[j] = 0.0f;
    }
}

/* Backward of the softmax of scale·p, in place: ds = scale·(ds − rowdot)·p over rows [r0, r1)
 * of (n·rows, cols); rowdot is (n, T) with stride T per head, the block's rows starting at
 * column `first`. */
TARGET static void FN(softmax_bwd_rows)(float *ds, const float *p, const float *rowdot,
                                        int64_t r0, int64_t r1, int64_t rows, int64_t cols,
                                        int64_t first, int64_t T, float scale) {
    for (int64_t k = r0; k < r1; k++) {
        float *dr = ds + k * cols;
        const float *pr = p + k * cols;
        float rd = rowdot[(k / rows) * T + first + (k % rows)];
#pragma omp simd
        for (int64_t j = 0; j < cols; j++) dr[j] = (dr[j] - rd) * pr[j] * scale;
    }
}

#undef FN
#undef CAT
#undef CAT_
