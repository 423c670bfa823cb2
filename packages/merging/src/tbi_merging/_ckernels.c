/* Fused per-entry merge kernels of tbi_merging; _kernels.py binds them with ctypes and documents each one.
 *
 * Every kernel makes one pass over entries [lo, hi) of a chunk, block by block (BLOCK entries): the block's
 * base and fine-tunes are widened to float32 (bf16 bit patterns shifted left by 16, or float32 used in
 * place), every model's deltas stay in L1, and each step is a plain loop over the block that the compiler
 * vectorises. ctypes releases the GIL around each call, so threads split a chunk between cores.
 *
 * Built with -ffp-contract=off: a fused multiply-add rounds once where the formulas (and the tests' float64
 * reference) round twice, and the result would depend on the CPU the library was built for.
 *
 * Error returns: the kernels that check their inputs return the source of the first non-finite input entry
 * (-1 for the base, i for model i) and store its chunk-local index in *bad_j, or return OK. A non-finite
 * input makes its delta non-finite whatever the mask (NaN·0 and ∞·0 are NaN), so the check looks at the
 * block's deltas and scans the inputs only when one is not finite (a delta can also overflow from finite
 * inputs; then the inputs pass and the merge goes on).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 512
#define OK (-2)
#define NO_MEMORY (-3)
#define BINS 65536 /* histogram bins of hist_pass: one per 16-bit half of a bit pattern */
enum { KIND_BF16 = 0, KIND_F32 = 1 };

/* One build runs at the best vector width of the CPU it is loaded on (glibc picks the clone at load). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HOT
#endif

static inline float as_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t as_u32(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Entries [s, s + n) of src as float32: a view for float32 sources, else widened into scratch. */
static inline const float *widen(const void *src, int kind, int64_t s, int n, float *restrict scratch) {
    if (kind == KIND_F32) return (const float *)src + s;
    const uint16_t *a = (const uint16_t *)src + s;
    for (int q = 0; q < n; q++) scratch[q] = as_f32((uint32_t)a[q] << 16);
    return scratch;
}

/* out[s + q] = v[q] for q < n, rounded to bf16 (to nearest even, as torch; NaN stays a quiet NaN) when
   the output holds bf16 bit patterns. */
static inline void narrow(void *out, int kind, int64_t s, int n, const float *restrict v) {
    if (kind == KIND_F32) {
        memcpy((float *)out + s, v, (size_t)n * sizeof(float));
        return;
    }
    uint16_t *o = (uint16_t *)out + s;
    for (int q = 0; q < n; q++) {
        uint32_t u = as_u32(v[q]);
        uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        o[q] = (uint16_t)(v[q] == v[q] ? r : 0x7FC0u);
    }
}

/* Wellons' lowbias32: a bijective 32-bit mixer with low avalanche bias. */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

/* The DARE draw of flat entry j of the stream key: h((j_lo + k_lo) ⊕ (k_hi + j_hi)). */
static inline uint32_t draw(uint64_t key, uint64_t j) {
    return mix32(((uint32_t)j + (uint32_t)key) ^ ((uint32_t)(key >> 32) + (uint32_t)(j >> 32)));
}

/* Bit pattern of |x|: orders like the value for non-negative floats (NaN above +inf). */
static inline uint32_t mag_bits(float x) { return as_u32(x) & 0x7FFFFFFFu; }

static inline int is_finite(float x) { return x - x == 0.0f; }

/* How one model's deltas are sparsified. */
typedef struct {
    uint64_t key;      /* DARE stream */
    uint32_t keep_thr; /* keep iff draw < keep_thr */
    int dare;
    int trim;          /* keep iff mag_bits > thr, or == thr and flat index < cut */
    uint32_t thr;
    int64_t cut;
    float factor;      /* rescale of the kept deltas */
} sparsify;

/* dst[q] = sparsified δ of flat entry g + q, for q < n. The trim ranks the masked, not yet rescaled
   deltas; each case is one branch-free loop. */
static inline void deltas(const float *restrict b, const float *restrict t, int n, int64_t g, sparsify o,
                          float *restrict dst) {
    if (o.dare && o.trim) {
        for (int q = 0; q < n; q++) {
            float x = (t[q] - b[q]) * (float)(draw(o.key, (uint64_t)(g + q)) < o.keep_thr);
            uint32_t bits = mag_bits(x);
            dst[q] = x * (o.factor * (float)((bits > o.thr) | ((bits == o.thr) & (g + q < o.cut))));
        }
    } else if (o.dare) {
        for (int q = 0; q < n; q++)
            dst[q] = (t[q] - b[q]) * (o.factor * (float)(draw(o.key, (uint64_t)(g + q)) < o.keep_thr));
    } else if (o.trim) {
        for (int q = 0; q < n; q++) {
            float x = t[q] - b[q];
            uint32_t bits = mag_bits(x);
            dst[q] = x * (o.factor * (float)((bits > o.thr) | ((bits == o.thr) & (g + q < o.cut))));
        }
    } else {
        for (int q = 0; q < n; q++) dst[q] = (t[q] - b[q]) * o.factor;
    }
}

static inline sparsify plain(uint64_t key, uint32_t keep_thr, int dare) {
    sparsify o = {key, keep_thr, dare, 0, 0, 0, 1.0f};
    return o;
}

static inline int64_t count_nonfinite(const float *restrict x, int n) {
    int64_t bad = 0;
    for (int q = 0; q < n; q++) bad += !is_finite(x[q]);
    return bad;
}

/* The first non-finite input of the block (entry order, base before models): its source, *j = s + q. */
static int first_bad(const float *b, const float *const *t, int m, int64_t s, int n, int64_t *j) {
    for (int q = 0; q < n; q++) {
        if (!is_finite(b[q])) {
            *j = s + q;
            return -1;
        }
        for (int i = 0; i < m; i++) {
            if (!is_finite(t[i][q])) {
                *j = s + q;
                return i;
            }
        }
    }
    return OK;
}

/* Scratch of one call: the widened base, the widened fine-tunes and m rows of deltas. */
typedef struct {
    float *b, *t, *d;
    const float *tv[]; /* the m widened (or viewed) fine-tunes of the current block */
} blocks;

static blocks *blocks_new(int m) {
    blocks *k = malloc(sizeof(blocks) + (size_t)m * sizeof(float *));
    float *f = malloc((size_t)(1 + 2 * m) * BLOCK * sizeof(float));
    if (!k || !f) {
        free(k);
        free(f);
        return NULL;
    }
    k->b = f;
    k->t = f + BLOCK;
    k->d = f + (size_t)(1 + m) * BLOCK;
    return k;
}

static void blocks_free(blocks *k) {
    if (k) free(k->b);
    free(k);
}

/* Widen entries [s, s + n) of the base and of the models with want[i] (all when want is NULL). */
static inline const float *load(blocks *k, const void *b, const void *const *t, int m, int kind, int64_t s,
                                int n, const uint8_t *want) {
    const float *bv = widen(b, kind, s, n, k->b);
    for (int i = 0; i < m; i++)
        if (!want || want[i]) k->tv[i] = widen(t[i], kind, s, n, k->t + (size_t)i * BLOCK);
    return bv;
}

/* out[j] = draw_{start + j} < keep_thr: the DARE keep mask of entries [start, start + n). */
HOT void keep_mask(uint64_t key, uint32_t keep_thr, int64_t start, int64_t n, uint8_t *out) {
    for (int64_t j = 0; j < n; j++) out[j] = draw(key, (uint64_t)(start + j)) < keep_thr;
}

/* Magnitude histograms of the DARE-masked deltas, per model (hist: m rows of BINS):
   hibin[i] < 0: hist[i][bits >> 16] += 1 for every entry;
   hibin[i] >= 0: hist[i][bits & 0xFFFF] += 1 for the entries whose high half equals hibin[i]. */
HOT int hist_pass(const void *b, const void *const *t, int m, int kind, int64_t lo, int64_t hi, int64_t j0,
                  const uint64_t *keys, uint32_t keep_thr, int dare, const int64_t *hibin, int64_t *hist) {
    blocks *k = blocks_new(m);
    if (!k) return NO_MEMORY;
    for (int64_t s = lo; s < hi; s += BLOCK) {
        int n = (int)(hi - s < BLOCK ? hi - s : BLOCK);
        const float *bv = load(k, b, t, m, kind, s, n, NULL);
        for (int i = 0; i < m; i++) {
            deltas(bv, k->tv[i], n, j0 + s, plain(keys[i], keep_thr, dare), k->d);
            int64_t *h = hist + (size_t)i * BINS;
            if (hibin[i] < 0) {
                for (int q = 0; q < n; q++) h[mag_bits(k->d[q]) >> 16]++;
            } else {
                for (int q = 0; q < n; q++) {
                    uint32_t bits = mag_bits(k->d[q]);
                    if ((int64_t)(bits >> 16) == hibin[i]) h[bits & 0xFFFFu]++;
                }
            }
        }
    }
    blocks_free(k);
    return OK;
}

/* Per model: count the entries whose masked |δ_i| bit pattern exceeds hi_bits[i] (above[i]) and append
   those within [lo_bits[i], hi_bits[i]] to row i of cand_bits / cand_pos (flat index), up to cap;
   n_cand[i] counts every candidate, so n_cand > cap means the rows overflowed. */
HOT int bracket_pass(const void *b, const void *const *t, int m, int kind, int64_t lo, int64_t hi,
                     int64_t j0, const uint64_t *keys, uint32_t keep_thr, int dare, const uint32_t *lo_bits,
                     const uint32_t *hi_bits, int64_t *above, uint32_t *cand_bits, int64_t *cand_pos,
                     int64_t cap, int64_t *n_cand, int check, int64_t *bad_j) {
    blocks *k = blocks_new(m);
    if (!k) return NO_MEMORY;
    uint32_t bits[BLOCK];
    uint8_t inside[BLOCK + 8];
    int who = OK;
    for (int64_t s = lo; s < hi && who == OK; s += BLOCK) {
        int n = (int)(hi - s < BLOCK ? hi - s : BLOCK);
        memset(inside + n, 0, 8);  // the scan below reads whole 8-byte words
        const float *bv = load(k, b, t, m, kind, s, n, NULL);
        for (int i = 0; i < m; i++) {
            float *d = k->d;
            deltas(bv, k->tv[i], n, j0 + s, plain(keys[i], keep_thr, dare), d);
            if (check && count_nonfinite(d, n)) {
                who = first_bad(bv, k->tv, m, s, n, bad_j);
                if (who != OK) break;
            }
            uint32_t h = hi_bits[i], low = lo_bits[i];
            int64_t a = 0, n_inside = 0;
            for (int q = 0; q < n; q++) {
                uint32_t x = mag_bits(d[q]);
                bits[q] = x;
                a += x > h;
                inside[q] = (x >= low) & (x <= h);
                n_inside += inside[q];
            }
            above[i] += a;
            if (!n_inside) continue;
            // A few percent of the entries are candidates: visit only them, eight flags (bytes) at a time.
            int64_t c = n_cand[i];
            uint32_t *cb = cand_bits + (size_t)i * cap;
            int64_t *cp = cand_pos + (size_t)i * cap;
            for (int w = 0; w < n; w += 8) {
                uint64_t word;
                memcpy(&word, inside + w, sizeof word);
                for (; word; word &= word - 1) {
                    int q = w + (__builtin_ctzll(word) >> 3);
                    if (c < cap) {
                        cb[c] = bits[q];
                        cp[c] = j0 + s + q;
                    }
                    c++;
                }
            }
            n_cand[i] = c;
        }
    }
    blocks_free(k);
    return who;
}

/* The threshold's sample: out[i * stride + r * length + q] = bit pattern of the masked |δ_i| of array entry
   at[r] + q, whose flat index is flat[r] + q, for the n_blocks blocks r and q < length. */
HOT int sample_bits(const void *b, const void *const *t, int m, int kind, const int64_t *at,
                    const int64_t *flat, int64_t n_blocks, int64_t length, const uint64_t *keys,
                    uint32_t keep_thr, int dare, uint32_t *out, int64_t stride) {
    blocks *k = blocks_new(m);
    if (!k) return NO_MEMORY;
    for (int64_t r = 0; r < n_blocks; r++) {
        for (int64_t s = 0; s < length; s += BLOCK) {
            int n = (int)(length - s < BLOCK ? length - s : BLOCK);
            const float *bv = load(k, b, t, m, kind, at[r] + s, n, NULL);
            for (int i = 0; i < m; i++) {
                deltas(bv, k->tv[i], n, flat[r] + s, plain(keys[i], keep_thr, dare), k->d);
                uint32_t *o = out + (size_t)i * stride + r * length + s;
                for (int q = 0; q < n; q++) o[q] = mag_bits(k->d[q]);
            }
        }
    }
    blocks_free(k);
    return OK;
}

/* counts[i] += number of entries whose masked |δ_i| has bit pattern thr[i], for the active models. */
HOT int count_ties(const void *b, const void *const *t, int m, int kind, int64_t lo, int64_t hi, int64_t j0,
                   const uint64_t *keys, uint32_t keep_thr, int dare, const uint32_t *thr,
                   const uint8_t *active, int64_t *counts) {
    blocks *k = blocks_new(m);
    if (!k) return NO_MEMORY;
    for (int64_t s = lo; s < hi; s += BLOCK) {
        int n = (int)(hi - s < BLOCK ? hi - s : BLOCK);
        const float *bv = load(k, b, t, m, kind, s, n, active);
        for (int i = 0; i < m; i++) {
            if (!active[i]) continue;
            deltas(bv, k->tv[i], n, j0 + s, plain(keys[i], keep_thr, dare), k->d);
            int64_t c = 0;
            for (int q = 0; q < n; q++) c += mag_bits(k->d[q]) == thr[i];
            counts[i] += c;
        }
    }
    blocks_free(k);
    return OK;
}

/* Local index of the nth (1-based) entry in [lo, hi) whose masked |δ_i| has bit pattern thr, or hi;
   -1 when out of memory. */
HOT int64_t nth_tie(const void *b, const void *const *t, int m, int kind, int i, int64_t lo, int64_t hi,
                    int64_t j0, uint64_t key, uint32_t keep_thr, int dare, uint32_t thr, int64_t nth) {
    blocks *k = blocks_new(m);
    if (!k) return -1;
    int64_t seen = 0, found = hi;
    for (int64_t s = lo; s < hi && found == hi; s += BLOCK) {
        int n = (int)(hi - s < BLOCK ? hi - s : BLOCK);
        const float *bv = widen(b, kind, s, n, k->b);
        const float *tv = widen(t[i], kind, s, n, k->t);
        deltas(bv, tv, n, j0 + s, plain(key, keep_thr, dare), k->d);
        for (int q = 0; q < n; q++) {
            seen += mag_bits(k->d[q]) == thr;
            if (seen == nth) {
                found = s + q;
                break;
            }
        }
    }
    blocks_free(k);
    return found;
}

/* sums[i][0] += Σ|δ_i|, sums[i][1] += Σ|m_i ⊙ δ_i| in float64 (mergekit's DARE rescale: a tensor's L1
   norm adds up millions of terms). */
HOT int l1_pass(const void *b, const void *const *t, int m, int kind, int64_t lo, int64_t hi, int64_t j0,
                const uint64_t *keys, uint32_t keep_thr, double *sums) {
    blocks *k = blocks_new(m);
    if (!k) return NO_MEMORY;
    for (int64_t s = lo; s < hi; s += BLOCK) {
        int n = (int)(hi - s < BLOCK ? hi - s : BLOCK);
        const float *bv = load(k, b, t, m, kind, s, n, NULL);
        for (int i = 0; i < m; i++) {
            deltas(bv, k->tv[i], n, j0 + s, plain(keys[i], keep_thr, 0), k->d);
            double full = 0.0, masked = 0.0;
            for (int q = 0; q < n; q++) {
                double a = (double)(k->d[q] < 0.0f ? -k->d[q] : k->d[q]);
                full += a;
                masked += a * (double)(draw(keys[i], (uint64_t)(j0 + s + q)) < keep_thr);
            }
            sums[2 * i] += full;
            sums[2 * i + 1] += masked;
        }
    }
    blocks_free(k);
    return OK;
}

/* θ = b + scale · (merged δ) for the block's n entries into res; returns its sign conflicts (entries with
   both a positive and a negative kept delta). One loop over the block per model and step, so each
   vectorises whatever the number of models; the models are added in order, as the reference does. */
static inline int64_t combine(const float *restrict b, const float *restrict d, int m, int n, const float *w,
                              const float *ws, const float *wd, int mode, int mass, int norm, float total,
                              float scale, float *restrict res) {
    float acc[BLOCK], vote[BLOCK], den[BLOCK];
    uint8_t pos[BLOCK], neg[BLOCK];
    memset(pos, 0, sizeof pos);
    memset(neg, 0, sizeof neg);
    for (int i = 0; i < m; i++) {
        const float *di = d + (size_t)i * BLOCK;
        for (int q = 0; q < n; q++) {
            pos[q] |= di[q] > 0.0f;
            neg[q] |= di[q] < 0.0f;
        }
    }
    int64_t conflicts = 0;
    for (int q = 0; q < n; q++) conflicts += pos[q] & neg[q];
    for (int q = 0; q < n; q++) acc[q] = 0.0f;
    if (mode == 0) {
        for (int i = 0; i < m; i++) {
            const float *di = d + (size_t)i * BLOCK;
            for (int q = 0; q < n; q++) acc[q] += w[i] * di[q];
        }
        if (norm)
            for (int q = 0; q < n; q++) acc[q] /= total;
    } else {
        for (int q = 0; q < n; q++) vote[q] = den[q] = 0.0f;
        for (int i = 0; i < m; i++) {
            const float *di = d + (size_t)i * BLOCK;
            if (mass) {
                for (int q = 0; q < n; q++) vote[q] += ws[i] * di[q];
            } else {
                for (int q = 0; q < n; q++) {
                    float x = ws[i] * di[q];
                    vote[q] += (float)(x > 0.0f) - (float)(x < 0.0f);
                }
            }
        }
        for (int q = 0; q < n; q++) vote[q] = 2.0f * (float)(vote[q] >= 0.0f) - 1.0f;  // γ, +1 on a tie
        for (int i = 0; i < m; i++) {
            const float *di = d + (size_t)i * BLOCK;
            for (int q = 0; q < n; q++) {
                float x = di[q];
                float agree = (float)(ws[i] * x * vote[q] > 0.0f);  // zero deltas never agree
                acc[q] += w[i] * x * agree;
                den[q] += wd[i] * agree;
            }
        }
        if (norm)
            for (int q = 0; q < n; q++) acc[q] /= den[q] + (float)(den[q] == 0.0f);
    }
    for (int q = 0; q < n; q++) res[q] = b[q] + scale * acc[q];
    return conflicts;
}

/* Write the merged entries [lo, hi) to out; count kept deltas per model and sign conflicts.
   Per entry: δ_i = t_i − b, sparsified as in deltas() with thr[i], cut[i], factor[i].
   mode 0 (task arithmetic): θ = b + scale · Σ w_i δ_i (÷ total when norm).
   mode 1/2/3 (TIES paper/mergekit/peft): elect γ on δ_i (1, 3) or w_i δ_i (2) by mass (Σ) or count
   (Σ sgn), γ = +1 on a tie; A = {i : sgn = γ}; θ = b + scale · Σ_A w_i δ_i (÷ Σ_A w_i, or ÷ |A| in mode
   3, when norm). */
HOT int merge_pass(const void *b, const void *const *t, int m, int kind, void *out, int64_t lo, int64_t hi,
                   int64_t j0, const uint64_t *keys, uint32_t keep_thr, int dare, int trim,
                   const uint32_t *thr, const int64_t *cut, const float *factor, const float *w, int mode,
                   int mass, int norm, float total, float scale, int64_t *kept, int64_t *conflicts,
                   int check, int64_t *bad_j) {
    blocks *k = blocks_new(m);
    float *ws = malloc((size_t)m * 2 * sizeof(float));
    if (!k || !ws) {
        blocks_free(k);
        free(ws);
        return NO_MEMORY;
    }
    float *wd = ws + m;
    for (int i = 0; i < m; i++) {
        ws[i] = mode == 2 ? w[i] : 1.0f;  // election weights: mergekit elects on the weighted deltas
        wd[i] = mode == 3 ? 1.0f : w[i];  // denominator weights: peft divides by the agreeing models' count
    }
    float res[BLOCK];
    int who = OK;
    for (int64_t s = lo; s < hi && who == OK; s += BLOCK) {
        int n = (int)(hi - s < BLOCK ? hi - s : BLOCK);
        const float *bv = load(k, b, t, m, kind, s, n, NULL);
        for (int i = 0; i < m; i++) {
            float *di = k->d + (size_t)i * BLOCK;
            sparsify o = {keys[i], keep_thr, dare, trim, thr[i], cut[i], factor[i]};
            deltas(bv, k->tv[i], n, j0 + s, o, di);
            if (check && count_nonfinite(di, n)) {
                who = first_bad(bv, k->tv, m, s, n, bad_j);
                if (who != OK) break;
            }
            int64_t c = 0;
            for (int q = 0; q < n; q++) c += di[q] != 0.0f;
            kept[i] += c;
        }
        if (who != OK) break;
        *conflicts += combine(bv, k->d, m, n, w, ws, wd, mode, mass, norm, total, scale, res);
        narrow(out, kind, s, n, res);
    }
    free(ws);
    blocks_free(k);
    return who;
}

/* The rank-th largest (1-based) bit pattern among the candidates of one model, and the flat index below
   which entries with that pattern are kept (*cut, or -1 when every one is, or want_cut is 0).
   bits[r][:counts[r]] are range r's candidates, pos[r] their flat indexes (ascending within a range). A
   radix select digit by digit (11, 11, then 10 bits, each a counting pass with an L1-sized histogram)
   finds the value (fewer than 2³² candidates per range: the counts are 32-bit); the kept ties are the first ones in flat order. Returns OK, or NO_MEMORY. */
int select_candidates(const uint32_t *const *bits, const int64_t *const *pos, const int64_t *counts,
                      int64_t parts, int64_t rank, int want_cut, uint32_t *thr_out, int64_t *cut_out) {
    static const int shift[3] = {21, 10, 0}, width[3] = {11, 11, 10};
    enum { DIGITS = 1 << 11, COPIES = 4 };
    uint32_t sub[COPIES][DIGITS];  // the first pass counts in four copies: magnitudes crowd into a few
    int64_t hist[DIGITS];          // bins, and one counter would make each increment wait for the last
    memset(sub, 0, sizeof sub);
    for (int64_t r = 0; r < parts; r++) {
        int64_t q = 0;
        for (; q + COPIES <= counts[r]; q += COPIES)
            for (int c = 0; c < COPIES; c++) sub[c][bits[r][q + c] >> shift[0]]++;
        for (; q < counts[r]; q++) sub[0][bits[r][q] >> shift[0]]++;
    }
    for (int v = 0; v < DIGITS; v++) hist[v] = (int64_t)sub[0][v] + sub[1][v] + sub[2][v] + sub[3][v];
    uint32_t prefix = 0, decided = 0;  // the digits chosen so far, and their bits
    int64_t above = 0, top = DIGITS - 1;
    for (int d = 0;; d++) {
        while (above + hist[top] < rank) above += hist[top--];
        uint32_t digit = (1u << width[d]) - 1;
        prefix |= (uint32_t)top << shift[d];
        decided |= digit << shift[d];
        if (d == 2) break;
        memset(hist, 0, sizeof hist);  // the next digit, among the entries that match the digits so far
        uint32_t next = (1u << width[d + 1]) - 1;
        for (int64_t r = 0; r < parts; r++)
            for (int64_t q = 0; q < counts[r]; q++)
                if ((bits[r][q] & decided) == prefix) hist[(bits[r][q] >> shift[d + 1]) & next]++;
        top = next;
    }
    int64_t keep_ties = rank - above;  // hist[top] counts the candidates equal to the threshold
    *thr_out = prefix;
    *cut_out = -1;
    if (keep_ties == hist[top] || !want_cut) return OK;
    // each range's positions ascend: merge the ranges' ties in flat order up to the keep_ties-th
    int64_t *ptr = calloc((size_t)parts, sizeof(int64_t));
    if (!ptr) return NO_MEMORY;
    int64_t p = -1;
    for (int64_t kept = 0; kept < keep_ties; kept++) {
        int64_t best = -1;
        for (int64_t r = 0; r < parts; r++) {
            while (ptr[r] < counts[r] && bits[r][ptr[r]] != prefix) ptr[r]++;
            if (ptr[r] < counts[r] && (best < 0 || pos[r][ptr[r]] < pos[best][ptr[best]])) best = r;
        }
        p = pos[best][ptr[best]++];
    }
    *cut_out = p + 1;
    free(ptr);
    return OK;
}

/* Built by setuptools as an extension module so it installs like one; the kernels are reached by ctypes. */
static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_ckernels",
    .m_doc = "Merge kernels in C; see tbi_merging._kernels.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__ckernels(void) { return PyModule_Create(&module); }
