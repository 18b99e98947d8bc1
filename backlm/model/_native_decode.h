/* Decoding kernels of backlm/_native.c: rows of one token each through the whole model
 * (backlm/model/decode.py), compiled once per instruction set like _native_body.h.
 *
 * _native.c includes this file with SFX, TARGET and DPBF16 defined (DPBF16 = 1 in the copy
 * built for AVX512-BF16, whose bf16 products use _mm512_dpbf16_ps; the other copies convert
 * bf16 to fp32 and multiply there: the portable path). One step takes B rows, each with its
 * own token, position and cache slot, and reads every weight once for all of them.
 *
 * Work is split so that a step meets at 2 barriers per layer: a thread owns whole heads (their
 * q/k/v rows, their attention and their slice of the output projection's columns) and whole
 * chunks of the MLP's hidden units (their fc rows and mlp-proj columns); the partial sums go
 * into per-head / per-chunk buffers and every thread adds them, in a fixed order, into its own
 * copy of the residual stream. The thread count therefore never changes a result.
 *
 * Weights and the KV cache are fp32 or bf16 (plan[P_BF16]). In bf16 the activations are
 * rounded to bf16 where the model's bf16 autocast forward rounds them (matmul outputs, QK norm
 * and rotary step by step, attention probabilities), so the step follows that forward.
 */

#ifndef BACKLM_DECODE_PLAN
#define BACKLM_DECODE_PLAN
/* The plan: one int64 array that Python fills once per decoder (pointers and sizes). */
enum {
    P_WTE, P_LAYERS, P_HEAD, P_KC, P_VC, P_COS, P_SIN, P_SCRATCH, P_C, P_H, P_D, P_L, P_V, P_T,
    P_SLOTS, P_BF16, P_MAXB, P_THREADS, P_CHUNKS, P_N
};

/* Offsets (in floats) of the scratch regions for B rows; returns the total. */
static int64_t decode_layout(const int64_t *P, int64_t B, int64_t off[8]) {
    int64_t C = P[P_C], H = P[P_H], I = P[P_H] * P[P_D], F = 4 * C, T = P[P_T];
    int64_t at = 0;
#define REGION(i, n) (off[i] = at, at += ((n) + 15) / 16 * 16)
    REGION(0, B * 3 * I);               /* qkv, (B, 3, H, D) */
    REGION(1, B * I + (B * I + 1) / 2); /* attention out, fp32 then bf16 */
    REGION(2, B * H * T);               /* scores */
    REGION(3, B * F + (B * F + 1) / 2); /* MLP hidden, fp32 then bf16 */
    REGION(4, H * B * C);               /* per-head output-projection sums */
    REGION(5, P[P_CHUNKS] * B * C);     /* per-chunk MLP sums */
    REGION(6, 2 * P[P_THREADS]);        /* per-thread argmax */
    off[7] = at;                        /* then per thread: x, xn (fp32), xn (bf16) */
    at += P[P_THREADS] * ((2 * B * C + (B * C + 1) / 2 + 15) / 16 * 16);
#undef REGION
    return at;
}
#endif

#define DCAT_(a, b) a##b
#define DCAT(a, b) DCAT_(a, b)
#define DFN(name) DCAT(name, SFX)

TARGET static inline float DFN(bf2f)(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* fp32 → bf16, round to nearest even (as torch's .to(bfloat16)); a NaN stays a NaN. */
TARGET static inline uint16_t DFN(f2bf)(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

TARGET static inline float DFN(rbf)(float f) { return DFN(bf2f)(DFN(f2bf)(f)); }

/* e^x to ~2 ulp (Cephes' expf), branch-free so that GCC vectorises it. */
TARGET static inline float DFN(dexp)(float x) {
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

TARGET static inline float DFN(dtanh)(float u) { return 1.0f - 2.0f / (DFN(dexp)(2.0f * u) + 1.0f); }

TARGET static inline float DFN(dss)(const float *x, int64_t n) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < n; j++) ss += x[j] * x[j];
    return ss;
}

/* out[b·ldo + o] = W[o]·X[b] for W rows o in [o0, o1) and b < B; W rows are ldw apart, X
 * rows ldx. Blocks of 4 weight rows × 4 input rows: each weight row is read from memory once
 * per step (then from L1 for the other inputs), 16 independent sums hide the FMA latency.
 * Short blocks repeat a row's pointer and drop its sums. _native_decode_mm.h holds the body,
 * once for fp32 weights and once for bf16 ones converted to fp32 (the portable path). */
#define MM_NAME mm_f32
#define MM_T float
#define MM_LOAD(v) (v)
#include "_native_decode_mm.h"
#if !DPBF16
#define MM_NAME mm_bf16
#define MM_T uint16_t
#define MM_LOAD(v) DFN(bf2f)(v)
#include "_native_decode_mm.h"
#endif

#if DPBF16
/* bf16 products with AVX512-BF16: 32 pairs per instruction, fp32 sums; the same blocking. */
TARGET static inline float DFN(hsum)(__m512 v) { return _mm512_reduce_add_ps(v); }

TARGET static void DFN(mm_bf16)(const uint16_t *W, int64_t ldw, const uint16_t *X, int64_t ldx,
                                float *out, int64_t ldo, int64_t o0, int64_t o1, int64_t n,
                                int64_t B) {
    int64_t n32 = n & ~(int64_t)31;
    for (int64_t o = o0; o < o1; o += 4) {
        int64_t m = o1 - o < 4 ? o1 - o : 4;
        const uint16_t *w[4];
        for (int i = 0; i < 4; i++) w[i] = W + (o + (i < m ? i : 0)) * ldw;
        for (int64_t b = 0; b < B; b += 4) {
            int64_t k = B - b < 4 ? B - b : 4;
            const uint16_t *x[4];
            for (int c = 0; c < 4; c++) x[c] = X + (b + (c < k ? c : 0)) * ldx;
            __m512 acc[4][4];
            for (int i = 0; i < 4; i++)
                for (int c = 0; c < 4; c++) acc[i][c] = _mm512_setzero_ps();
            if (k == 1) {
                for (int64_t j = 0; j < n32; j += 32) {
                    __m512bh a = (__m512bh)_mm512_loadu_si512(x[0] + j);
                    for (int i = 0; i < 4; i++)
                        acc[i][0] = _mm512_dpbf16_ps(acc[i][0],
                                                     (__m512bh)_mm512_loadu_si512(w[i] + j), a);
                }
            } else {
                for (int64_t j = 0; j < n32; j += 32) {
                    __m512bh a[4], v[4];
                    for (int c = 0; c < 4; c++) a[c] = (__m512bh)_mm512_loadu_si512(x[c] + j);
                    for (int i = 0; i < 4; i++) v[i] = (__m512bh)_mm512_loadu_si512(w[i] + j);
                    for (int i = 0; i < 4; i++)
                        for (int c = 0; c < 4; c++)
                            acc[i][c] = _mm512_dpbf16_ps(acc[i][c], v[i], a[c]);
                }
            }
            for (int64_t i = 0; i < m; i++)
                for (int64_t c = 0; c < k; c++) {
                    float s = DFN(hsum)(acc[i][c]);
                    for (int64_t j = n32; j < n; j++)
                        s += DFN(bf2f)(w[i][j]) * DFN(bf2f)(x[c][j]);
                    out[(b + c) * ldo + o + i] = s;
                }
        }
    }
}
#endif

/* Any weight type: bf selects the bf16 kernel (W and X are then uint16_t). */
TARGET static inline void DFN(mm)(int bf, const void *W, int64_t ldw, const void *X, int64_t ldx,
                                  float *out, int64_t ldo, int64_t o0, int64_t o1, int64_t n,
                                  int64_t B) {
    if (bf)
        DFN(mm_bf16)((const uint16_t *)W, ldw, (const uint16_t *)X, ldx, out, ldo, o0, o1, n, B);
    else
        DFN(mm_f32)((const float *)W, ldw, (const float *)X, ldx, out, ldo, o0, o1, n, B);
}

/* This thread's share [r0, r1) of `rows` rows, in multiples of 4 (the matmul's blocking). */
TARGET static inline void DFN(dshare)(int64_t rows, int64_t *r0, int64_t *r1) {
    int64_t tid = omp_get_thread_num(), n = omp_get_num_threads(), blocks = (rows + 3) / 4;
    *r0 = 4 * (blocks * tid / n);
    *r1 = 4 * (blocks * (tid + 1) / n);
    if (*r1 > rows) *r1 = rows;
}

/* xn = norm(x) for B rows of C (fp32 eps, as the model's norm of its fp32 residual stream);
 * bf16 runs round it, as autocast does before a matmul. */
TARGET static void DFN(dnorm)(const float *x, float *xn, uint16_t *xb, int64_t B, int64_t C,
                              float eps, int bf) {
    for (int64_t b = 0; b < B; b++) {
        const float *xr = x + b * C;
        float *y = xn + b * C;
        float r = 1.0f / sqrtf(DFN(dss)(xr, C) / (float)C + eps);
#pragma omp simd
        for (int64_t j = 0; j < C; j++) y[j] = xr[j] * r;
        if (bf)
            for (int64_t j = 0; j < C; j++) xb[b * C + j] = DFN(f2bf)(y[j]);
    }
}

/* QK norm + rotary of one head vector src (D) into dst (fp32) or dstb (bf16 bits). In bf16
 * the model's forward rounds r, x·r, x1·c and the sums, one op at a time; that is repeated. */
TARGET static void DFN(qk_rot)(const float *src, float *dst, uint16_t *dstb, const float *c,
                               const float *s, int64_t D, float eps, int bf) {
    int64_t h2 = D / 2;
    if (!bf) {
        float rr = 1.0f / sqrtf(DFN(dss)(src, D) / (float)D + eps);
        for (int64_t j = 0; j < h2; j++) {
            float x1 = src[j] * rr, x2 = src[j + h2] * rr;
            dst[j] = x1 * c[j] + x2 * s[j];
            dst[j + h2] = x2 * c[j] - x1 * s[j];
        }
        return;
    }
    float nrm = sqrtf(DFN(dss)(src, D));
    float rr = DFN(rbf)(1.0f / sqrtf(nrm * nrm * (1.0f / (float)D) + eps));
    for (int64_t j = 0; j < h2; j++) {
        float x1 = DFN(rbf)(src[j] * rr), x2 = DFN(rbf)(src[j + h2] * rr);
        float o1 = DFN(rbf)(DFN(rbf)(x1 * c[j]) + x2 * s[j]);
        float o2 = DFN(rbf)(DFN(rbf)(x2 * c[j]) - x1 * s[j]);
        if (dst) dst[j] = o1, dst[j + h2] = o2;
        if (dstb) dstb[j] = DFN(f2bf)(o1), dstb[j + h2] = DFN(f2bf)(o2);
    }
}

/* One query q (D) over keys/values 0..last of a cache row (fp32 or bf16) into y (D). bf16
 * follows PyTorch's CPU flash attention: fp32 scores and softmax sums, the probabilities
 * rounded to bf16 before they weight the values, the output rounded at the end. */
TARGET static void DFN(attend)(const float *q, const void *Kc, const void *Vc, int64_t last,
                               int64_t D, float *p, float *y, int bf) {
    float scale = 1.0f / sqrtf((float)D), mx = -INFINITY, sum = 0.0f;
    for (int64_t t = 0; t <= last; t++) {
        float d = 0.0f;
        if (bf) {
            const uint16_t *k = (const uint16_t *)Kc + t * D;
#pragma omp simd reduction(+ : d)
            for (int64_t j = 0; j < D; j++) d += q[j] * DFN(bf2f)(k[j]);
        } else {
            const float *k = (const float *)Kc + t * D;
#pragma omp simd reduction(+ : d)
            for (int64_t j = 0; j < D; j++) d += q[j] * k[j];
        }
        p[t] = d * scale;
    }
#pragma omp simd reduction(max : mx)
    for (int64_t t = 0; t <= last; t++) mx = p[t] > mx ? p[t] : mx;
#pragma omp simd reduction(+ : sum)
    for (int64_t t = 0; t <= last; t++) {
        p[t] = DFN(dexp)(p[t] - mx);
        sum += p[t];
    }
    float inv = 1.0f / sum;
    for (int64_t j = 0; j < D; j++) y[j] = 0.0f;
    if (bf) {
        for (int64_t t = 0; t <= last; t++) {
            const uint16_t *v = (const uint16_t *)Vc + t * D;
            float w = DFN(rbf)(p[t]);
#pragma omp simd
            for (int64_t j = 0; j < D; j++) y[j] += w * DFN(bf2f)(v[j]);
        }
        for (int64_t j = 0; j < D; j++) y[j] = DFN(rbf)(y[j] * inv);
    } else {
        for (int64_t t = 0; t <= last; t++) {
            const float *v = (const float *)Vc + t * D;
            float w = p[t] * inv;
#pragma omp simd
            for (int64_t j = 0; j < D; j++) y[j] += w * v[j];
        }
    }
}

/* One step of B rows (token, position and cache slot each), run by every thread of the
 * enclosing parallel region; logits (B, V) fp32. eps: the residual norm's; qeps: the QK
 * norm's (bf16's eps in a bf16 run, as the model's forward uses the compute dtype's). */
TARGET static void DFN(decode_rows)(const int64_t *P, const int64_t *tokens, const int64_t *pos,
                                    const int64_t *slots, int64_t B, float *logits, float cap,
                                    float eps, float qeps) {
    int64_t C = P[P_C], H = P[P_H], D = P[P_D], L = P[P_L], V = P[P_V], T = P[P_T];
    int64_t S = P[P_SLOTS], K = P[P_CHUNKS], I = H * D, F = 4 * C, cw = F / K, h2 = D / 2;
    int bf = (int)P[P_BF16];
    size_t es = bf ? 2 : 4; /* bytes per weight / cache element */
    int64_t off[8];
    decode_layout(P, B, off);
    float *sc = (float *)(uintptr_t)P[P_SCRATCH];
    int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    float *qkv = sc + off[0], *att = sc + off[1], *scores = sc + off[2], *u = sc + off[3];
    uint16_t *attb = (uint16_t *)(att + B * I), *ub = (uint16_t *)(u + B * F);
    float *projp = sc + off[4], *mlpp = sc + off[5];
    float *x = sc + off[7] + tid * ((2 * B * C + (B * C + 1) / 2 + 15) / 16 * 16);
    float *xn = x + B * C;
    uint16_t *xb = (uint16_t *)(xn + B * C);
    const void *X = bf ? (const void *)xb : (const void *)xn;
    const float *wte = (const float *)(uintptr_t)P[P_WTE];
    const int64_t *layers = (const int64_t *)(uintptr_t)P[P_LAYERS];
    const float *cosb = (const float *)(uintptr_t)P[P_COS], *sinb = (const float *)(uintptr_t)P[P_SIN];
    char *kc = (char *)(uintptr_t)P[P_KC], *vc = (char *)(uintptr_t)P[P_VC];
    int64_t h0 = H * tid / nt, h1 = H * (tid + 1) / nt, k0 = K * tid / nt, k1 = K * (tid + 1) / nt;

    for (int64_t b = 0; b < B; b++) { /* x = norm(wte[token]): every thread its own copy */
        const float *e = wte + tokens[b] * C;
        float r = 1.0f / sqrtf(DFN(dss)(e, C) / (float)C + eps);
        for (int64_t j = 0; j < C; j++) x[b * C + j] = e[j] * r;
    }
    for (int64_t l = 0; l < L; l++) {
        const char *wqkv = (const char *)(uintptr_t)layers[4 * l];
        const char *wproj = (const char *)(uintptr_t)layers[4 * l + 1];
        const char *wfc = (const char *)(uintptr_t)layers[4 * l + 2];
        const char *wmlp = (const char *)(uintptr_t)layers[4 * l + 3];
        DFN(dnorm)(x, xn, xb, B, C, eps, bf);
        for (int64_t h = h0; h < h1; h++) {
            for (int64_t which = 0; which < 3; which++) {
                int64_t o = which * I + h * D;
                DFN(mm)(bf, wqkv, C, X, C, qkv, 3 * I, o, o + D, C, B);
                if (bf)
                    for (int64_t b = 0; b < B; b++)
                        for (int64_t j = 0; j < D; j++)
                            qkv[b * 3 * I + o + j] = DFN(rbf)(qkv[b * 3 * I + o + j]);
            }
            for (int64_t b = 0; b < B; b++) {
                int64_t p = pos[b], row = ((l * S + slots[b]) * H + h) * T;
                const float *c = cosb + p * h2, *s = sinb + p * h2;
                float *q = qkv + b * 3 * I + h * D, *k = q + I, *v = k + I;
                char *kr = kc + row * D * es, *vr = vc + row * D * es;
                DFN(qk_rot)(q, q, NULL, c, s, D, qeps, bf);
                if (bf) {
                    DFN(qk_rot)(k, NULL, (uint16_t *)kr + p * D, c, s, D, qeps, bf);
                    for (int64_t j = 0; j < D; j++) ((uint16_t *)vr)[p * D + j] = DFN(f2bf)(v[j]);
                } else {
                    DFN(qk_rot)(k, (float *)kr + p * D, NULL, c, s, D, qeps, bf);
                    memcpy((float *)vr + p * D, v, (size_t)D * sizeof(float));
                }
                float *y = att + b * I + h * D;
                DFN(attend)(q, kr, vr, p, D, scores + (b * H + h) * T, y, bf);
                if (bf)
                    for (int64_t j = 0; j < D; j++) attb[b * I + h * D + j] = DFN(f2bf)(y[j]);
            }
            /* this head's columns of the output projection */
            DFN(mm)(bf, wproj + h * D * es, I, bf ? (const void *)(attb + h * D)
                                                  : (const void *)(att + h * D),
                    I, projp + h * B * C, C, 0, C, D, B);
        }
#pragma omp barrier
        for (int64_t b = 0; b < B; b++)
            for (int64_t j = 0; j < C; j++) {
                float s = 0.0f;
                for (int64_t h = 0; h < H; h++) s += projp[(h * B + b) * C + j];
                x[b * C + j] += bf ? DFN(rbf)(s) : s;
            }
        DFN(dnorm)(x, xn, xb, B, C, eps, bf);
        for (int64_t k = k0; k < k1; k++) {
            DFN(mm)(bf, wfc, C, X, C, u, F, k * cw, (k + 1) * cw, C, B);
            for (int64_t b = 0; b < B; b++)
                for (int64_t j = k * cw; j < (k + 1) * cw; j++) {
                    float h = u[b * F + j];
                    if (bf) {
                        h = DFN(rbf)(h);
                        h = h > 0.0f ? h : 0.0f;
                        ub[b * F + j] = DFN(f2bf)(h * h);
                    } else {
                        h = h > 0.0f ? h : 0.0f;
                        u[b * F + j] = h * h;
                    }
                }
            DFN(mm)(bf, wmlp + k * cw * es, F, bf ? (const void *)(ub + k * cw)
                                                  : (const void *)(u + k * cw),
                    F, mlpp + k * B * C, C, 0, C, cw, B);
        }
#pragma omp barrier
        for (int64_t b = 0; b < B; b++)
            for (int64_t j = 0; j < C; j++) {
                float s = 0.0f;
                for (int64_t k = 0; k < K; k++) s += mlpp[(k * B + b) * C + j];
                x[b * C + j] += bf ? DFN(rbf)(s) : s;
            }
    }
    DFN(dnorm)(x, xn, xb, B, C, eps, bf);
    int64_t r0, r1;
    DFN(dshare)(V, &r0, &r1);
    DFN(mm)(bf, (const void *)(uintptr_t)P[P_HEAD], C, X, C, logits, V, r0, r1, C, B);
    float inv = cap > 0.0f ? 1.0f / cap : 0.0f;
    for (int64_t b = 0; b < B; b++) {
        float *z = logits + b * V;
        if (bf)
            for (int64_t o = r0; o < r1; o++) z[o] = DFN(rbf)(z[o]);
        if (cap > 0.0f) {
#pragma omp simd
            for (int64_t o = r0; o < r1; o++) z[o] = cap * DFN(dtanh)(z[o] * inv);
        }
    }
}

/* Greedy decoding of one row: feed `token` at `pos`, take the argmax (the first of equal
 * maxima, as torch.argmax), feed it, ... `n` times; stop early after a token in `stops`.
 * out gets the tokens drawn; returns how many (the last one is not fed). Every thread
 * reduces the per-thread maxima itself, so the loop needs no extra barrier. */
TARGET static int64_t DFN(decode_greedy)(const int64_t *P, int64_t token, int64_t pos,
                                         int64_t slot, int64_t n, const int64_t *stops,
                                         int64_t n_stops, int64_t *out, float *logits, float cap,
                                         float eps, float qeps) {
    int64_t off[8];
    decode_layout(P, 1, off);
    float *red = (float *)(uintptr_t)P[P_SCRATCH] + off[6];
    int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t V = P[P_V], r0, r1, made = 0;
    DFN(dshare)(V, &r0, &r1);
    for (int64_t i = 0; i < n; i++) {
        int64_t p = pos + i;
        DFN(decode_rows)(P, &token, &p, &slot, 1, logits, cap, eps, qeps);
        float best = -INFINITY;
        int32_t at = (int32_t)r0;
        for (int64_t o = r0; o < r1; o++)
            if (logits[o] > best) best = logits[o], at = (int32_t)o;
        red[2 * tid] = best;
        memcpy(&red[2 * tid + 1], &at, sizeof at);
#pragma omp barrier
        best = -INFINITY, at = 0;
        for (int t = 0; t < nt; t++) {
            int32_t a;
            memcpy(&a, &red[2 * t + 1], sizeof a);
            if (red[2 * t] > best) best = red[2 * t], at = a;
        }
        token = at;
        if (tid == 0) out[i] = token;
        made = i + 1;
        int stop = 0;
        for (int64_t s = 0; s < n_stops; s++) stop |= stops[s] == token;
        if (stop) break;
    }
    return made;
}

#undef DFN
#undef DCAT
#undef DCAT_
