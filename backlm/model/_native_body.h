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


/* ---- batch-1 decoding: one token through the whole model (backlm/decode.py) ---------------- */

/* This thread's share [r0, r1) of `rows` rows, in multiples of 4 so gemv keeps its blocking. */
TARGET static inline void FN(share)(int64_t rows, int64_t *r0, int64_t *r1) {
    int64_t tid = omp_get_thread_num(), n = omp_get_num_threads(), blocks = (rows + 3) / 4;
    *r0 = 4 * (blocks * tid / n);
    *r1 = 4 * (blocks * (tid + 1) / n);
    if (*r1 > rows) *r1 = rows;
}

/* 1 / rms(x) over n values (every thread computes it: cheaper than a barrier). */
TARGET static inline float FN(rinv)(const float *x, int64_t n, float eps) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < n; j++) ss += x[j] * x[j];
    return 1.0f / sqrtf(ss / (float)n + eps);
}

/* out[o] = scale·(W[o]·x) for this thread's rows of W (rows, n); mode 1 adds into out, mode 2
 * writes relu(·)², mode 3 writes cap·tanh(·/cap). Four rows per pass: x is read once per four
 * rows and four independent sums hide the FMA latency; the weights stream through once. */
/* (mode 3 with cap 0 writes the plain product.) */
TARGET static void FN(gemv)(const float *W, const float *x, float *out, int64_t rows, int64_t n,
                            float scale, int mode, float cap) {
    int64_t r0, r1;
    FN(share)(rows, &r0, &r1);
    for (int64_t o = r0; o < r1; o += 4) {
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        int64_t m = r1 - o < 4 ? r1 - o : 4;
        if (m == 4) {
            const float *w0 = W + o * n, *w1 = w0 + n, *w2 = w1 + n, *w3 = w2 + n;
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
            for (int64_t j = 0; j < n; j++) {
                float xj = x[j];
                s0 += w0[j] * xj;
                s1 += w1[j] * xj;
                s2 += w2[j] * xj;
                s3 += w3[j] * xj;
            }
            s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
        } else {
            for (int64_t i = 0; i < m; i++) {
                const float *w = W + (o + i) * n;
                float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                for (int64_t j = 0; j < n; j++) acc += w[j] * x[j];
                s[i] = acc;
            }
        }
        for (int64_t i = 0; i < m; i++) {
            float v = s[i] * scale;
            if (mode == 1) out[o + i] += v;
            else if (mode == 2) out[o + i] = v > 0.0f ? v * v : 0.0f;
            else out[o + i] = v;
        }
    }
    if (mode == 3 && cap > 0.0f) { /* softcap in one vectorised pass, not a tanh per row */
        float inv = 1.0f / cap;
#pragma omp simd
        for (int64_t o = r0; o < r1; o++) out[o] = cap * FN(vtanh)(out[o] * inv);
    }
}

/* One decoding step at position `pos`, run by every thread of the enclosing parallel region.
 * layers holds 4 weight pointers per layer (qkv (3·H·D, C), proj (C, H·D), fc (4C, C),
 * mlp proj (C, 4C)); kc/vc are (L, H, max_len, D); cosr/sinr the rotary row of `pos`; scratch
 * holds x (C), qkv (3·H·D), att (H·D), u (4C) and scores (H·max_len). Same maths as the model:
 * the parameter-free norms fold into the matmuls (W·(x·r) = r·(W·x)). */
TARGET static void FN(decode_step)(int64_t token, int64_t pos, const float *wte,
                                   const int64_t *layers, const float *head, float *kc, float *vc,
                                   int64_t max_len, const float *cosr, const float *sinr,
                                   float *logits, float *scratch, int64_t C, int64_t H, int64_t D,
                                   int64_t L, int64_t V, float cap, float eps) {
    int64_t inner = H * D, h2 = D / 2;
    float *x = scratch, *qkv = x + C, *att = qkv + 3 * inner, *u = att + inner,
          *scores = u + 4 * C;
    int64_t r0, r1;
    const float *e = wte + token * C;
    float r = FN(rinv)(e, C, eps);
    FN(share)(C, &r0, &r1);
    for (int64_t j = r0; j < r1; j++) x[j] = e[j] * r;
#pragma omp barrier
    float scale = 1.0f / sqrtf((float)D);
    for (int64_t l = 0; l < L; l++) {
        const float *wqkv = (const float *)(uintptr_t)layers[4 * l];
        const float *wproj = (const float *)(uintptr_t)layers[4 * l + 1];
        const float *wfc = (const float *)(uintptr_t)layers[4 * l + 2];
        const float *wmlp = (const float *)(uintptr_t)layers[4 * l + 3];
        float *kl = kc + l * H * max_len * D, *vl = vc + l * H * max_len * D;
        FN(gemv)(wqkv, x, qkv, 3 * inner, C, FN(rinv)(x, C, eps), 0, 0.0f);
#pragma omp barrier
        /* one head per iteration: QK norm + rotary of its q and k, k and v into the cache at
         * pos, then its query over keys 0..pos (the same thread wrote them: no barrier) */
#pragma omp for schedule(static)
        for (int64_t hh = 0; hh < H; hh++) {
            for (int64_t which = 0; which < 2; which++) {
                float *src = qkv + (which * H + hh) * D;
                float *dst = which == 0 ? src : kl + (hh * max_len + pos) * D;
                float rr = FN(rinv)(src, D, eps);
                for (int64_t j = 0; j < h2; j++) {
                    float x1 = src[j] * rr, x2 = src[j + h2] * rr;
                    dst[j] = x1 * cosr[j] + x2 * sinr[j];
                    dst[j + h2] = x2 * cosr[j] - x1 * sinr[j];
                }
            }
            memcpy(vl + (hh * max_len + pos) * D, qkv + (2 * H + hh) * D,
                   (size_t)D * sizeof(float));
            const float *q = qkv + hh * D;
            const float *K = kl + hh * max_len * D, *Vh = vl + hh * max_len * D;
            float *p = scores + hh * max_len, *y = att + hh * D, mx = -INFINITY, sum = 0.0f;
            int64_t t = 0;
            for (; t + 4 <= pos + 1; t += 4) { /* four keys per pass, as in gemv */
                const float *k0 = K + t * D, *k1 = k0 + D, *k2 = k1 + D, *k3 = k2 + D;
                float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
                for (int64_t j = 0; j < D; j++) {
                    float qj = q[j];
                    d0 += qj * k0[j];
                    d1 += qj * k1[j];
                    d2 += qj * k2[j];
                    d3 += qj * k3[j];
                }
                p[t] = d0 * scale, p[t + 1] = d1 * scale, p[t + 2] = d2 * scale;
                p[t + 3] = d3 * scale;
            }
            for (; t <= pos; t++) {
                const float *k = K + t * D;
                float d = 0.0f;
#pragma omp simd reduction(+ : d)
                for (int64_t j = 0; j < D; j++) d += q[j] * k[j];
                p[t] = d * scale;
            }
#pragma omp simd reduction(max : mx)
            for (t = 0; t <= pos; t++) mx = p[t] > mx ? p[t] : mx;
#pragma omp simd reduction(+ : sum)
            for (t = 0; t <= pos; t++) {
                p[t] = FN(vexp)(p[t] - mx);
                sum += p[t];
            }
            float inv = 1.0f / sum;
            for (int64_t j = 0; j < D; j++) y[j] = 0.0f;
            for (t = 0; t <= pos; t++) {
                const float *vv = Vh + t * D;
                float w = p[t] * inv;
#pragma omp simd
                for (int64_t j = 0; j < D; j++) y[j] += w * vv[j];
            }
        }
        FN(gemv)(wproj, att, x, C, inner, 1.0f, 1, 0.0f);
#pragma omp barrier
        FN(gemv)(wfc, x, u, 4 * C, C, FN(rinv)(x, C, eps), 2, 0.0f);
#pragma omp barrier
        FN(gemv)(wmlp, u, x, C, 4 * C, 1.0f, 1, 0.0f);
#pragma omp barrier
    }
    FN(gemv)(head, x, logits, V, C, FN(rinv)(x, C, eps), 3, cap);
}

#undef FN
#undef CAT
#undef CAT_
