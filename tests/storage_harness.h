/*
 * storage_harness.h — generic checks that any storage method must pass,
 * driven by the method's registry name, so that a new method gets the same
 * scrutiny as the old ones by adding a few lines to its own test file:
 *
 *   es_sh_cfg c = es_sh_cfg_make("qr", 1);      // method, share mode
 *   c.opts = "op=concat";                      // optional method options
 *   CHECK(es_sh_gradcheck(&c));                // finite differences
 *   CHECK(es_sh_budget(&c, fracs, n));         // bytes <= budget, >= 95%
 *   CHECK(es_sh_roundtrip(&c));                // meta + tensors -> same lookups
 *   CHECK(es_sh_determinism(&c));              // same seed -> same bits
 *   CHECK(es_sh_threads(&c));                  // disjoint ranges on threads
 *   CHECK(es_sh_alloc_failures(&c));           // every failed allocation is clean
 *
 * Every check returns 1 when it passed and 0 when it failed, after
 * reporting the reason with es_test_fail (so a caller's CHECK only stops
 * the test).  Checks print one short line with the figures they compared.
 *
 * The data is synthetic and deterministic: a vocabulary whose fields have
 * very different distinct counts (es_sh_distinct), so per-field budget
 * splits are exercised, and batches mixing single-valued fields, weighted
 * multi-valued fields (0 to 5 values, empty pairs included), values
 * repeated inside a pair and across rows and fields, and keys the
 * vocabulary never saw.
 */
#ifndef ES_STORAGE_HARNESS_H
#define ES_STORAGE_HARNESS_H

#include "core/core.h"
#include "storage/storage.h"

typedef struct es_sh_cfg {
    const char *method;
    int share;            /* option share= (methods that take it) */
    const char *opts;     /* method options "k=v,..." (NULL: none) */
    int n_fields;         /* default 4 */
    int dim;              /* default 8 */
    /* Budget for the gradient, round-trip, determinism, thread and
     * allocation checks: bytes (> 1) or a fraction of the synthetic
     * vocabulary's full table.  Default 4096 bytes: small enough for many
     * collisions and a cheap exhaustive finite-difference check. */
    double budget;
    uint64_t seed;        /* default 7 */
    int use_vocab;        /* 1 (default): give create() the synthetic vocabulary */
    int chunks;           /* option chunks= (methods that take it; default 1) */
    int max_batch;        /* default 64 */
    float init_scale;     /* default 0.05 */
    es_precision precision; /* rows' precision (default fp32) */
    int qtrain;           /* with a precision: ES_QTRAIN_QAT or _ALPT (default none) */
    /* es_sh_gradcheck_arch: an L1 penalty arch_l1 * sum |a| over the checked
     * tensor that arch_backward adds to the loss (autosrh's l1=; default 0) */
    double arch_l1;
} es_sh_cfg;

/* Append option key=v to p->opts when p's method takes it (the knobs that
 * were es_storage_params fields: share, chunks, subtables, min_count); the
 * string lives in a rotating static buffer (tests run on one thread). */
void es_sh_opt(es_storage_params *p, const char *key, long long v);
es_sh_cfg es_sh_cfg_make(const char *method, int share);

/* Distinct values of field f in the synthetic vocabulary (37, 5000, 5,
 * 800, 20000, 120, repeating). */
uint64_t es_sh_distinct(int f);
/* The i-th key of field f (i < es_sh_distinct(f) are in the vocabulary). */
uint64_t es_sh_key(int f, uint64_t i);
/* The synthetic vocabulary of F fields (NULL when out of memory). */
es_vocab *es_sh_vocab(int F);
/* A random batch of n rows and F fields (see the file comment), from seed.
 * Allocated with es_batch_alloc; free with es_batch_free.  0 on success. */
int es_sh_batch(es_batch *b, int n, int F, uint64_t seed);

/* Storage parameters of a configuration (opt: row-wise Adagrad, lr 0.05). */
es_storage_params es_sh_params(const es_sh_cfg *c);
/* es__storage_create with the configuration and, when c->use_vocab, the
 * vocabulary v (created by the caller with es_sh_vocab(c->n_fields)). */
int es_sh_create(es_storage **s, const es_sh_cfg *c, const es_vocab *v, es_optim opt, float lr, es_err *err);

/* Sum of nbytes of the F32 tensors not named "opt.*" and the code tensors
 * ("*.q", u8) (the learnable parameters as served) and of those named
 * "opt.*" (optimizer and training state). */
int es_sh_tensor_bytes(es_storage *s, size_t *param, size_t *state);

/* Finite-difference gradient check: L = sum(out * G) for a random G over
 * a random batch; analytic gradient = old - new after one backward with
 * SGD, lr = 1, on every F32 tensor not named "opt.*" or "serve.*" (serving
 * arrays derived by tensors()), and on those named "opt.train.*" (learnable
 * training-only parameters of pruned tables); numeric gradient by
  * central differences on every element (a random sample of 3000 when a
 * method has more); |a - n| <= 2e-4 + 1e-3 max(|a|, |n|).  Also checks
 * that some parameter received a gradient.  Runs three batches (seeds). */
int es_sh_gradcheck(const es_sh_cfg *c);
/* Finite-difference check of a multi-stage method's architecture step
 * (ops->staged->arch_backward) on the f32 tensor `name` (autodim:
 * "opt.arch.alpha"), on 3 batches; also that the step changes no
 * parameter tensor (only "opt." state). */
int es_sh_gradcheck_arch(const es_sh_cfg *c, const char *name);

/* Budget check at each of fracs[0..n) of the synthetic vocabulary's full
 * table, and at a few byte budgets: param + aux bytes <= budget and >=
 * 95% of it; param_bytes equals the parameter tensors' bytes and
 * state_bytes the optimizer tensors' bytes (the figures are what is
 * allocated); optimizers SGD, Adagrad and row-wise Adagrad.  A budget of
 * 8 bytes must fail with ES_EBUDGET (a clean refusal, not a crash). */
int es_sh_budget(const es_sh_cfg *c, const double *fracs, int n);

/* Save/load round trip: train a storage for two steps, copy its tensors
 * (optimizer state included) into a fresh storage created from its meta
 * passed as opts (vocab NULL, a different seed, budget = the saved byte
 * budget and, separately, budget 0), run after_load; lookups must match
 * bit for bit, and so must the tensors after one more backward step. */
int es_sh_roundtrip(const es_sh_cfg *c);

/* Two storages from the same configuration hold identical tensors and
 * give identical lookups before and after three backward steps; another
 * seed gives different parameters; lookups of sub-ranges of rows equal
 * the matching slices of a whole-batch lookup. */
int es_sh_determinism(const es_sh_cfg *c);

/* Lookups of disjoint row ranges on 4 threads at once equal a 1-thread
 * lookup bit for bit. */
int es_sh_threads(const es_sh_cfg *c);

/* es_test_alloc_sweep over create + lookup + backward + tensors + free:
 * every failed allocation gives an error, no crash, no leak. */
int es_sh_alloc_failures(const es_sh_cfg *c);

/* Training at a precision (c->precision, c->qtrain; methods with row
 * tables): the gradients are checked against finite differences of the
 * forward pass as it runs, through an fp32 twin whose rows are the
 * dequantized codes (its lookups must match).  QAT, SGD lr 1: the master
 * copy moves by exactly the finite-difference gradient (straight-through).
 * ALPT, SGD lr 0.01: every touched row's step moves as one Adagrad step
 * on ln(step) with LSQ's gradient (es__alpt_step_grad, itself checked
 * against finite differences in test_qtrain.c) at the row the optimizer
 * made from the finite-difference gradient. */
int es_sh_gradcheck_qtrain(const es_sh_cfg *c);

/* The tensor of s named name (refs has room for max; NULL when absent). */
es_tensor_ref *es_sh_tensor(es_storage *s, es_tensor_ref *refs, int max, const char *name);
/* One training step on a random batch of 32 rows (from seed) with a random
 * target: dout = out - 0.3 N(0, 1).  0, or the error of lookup/backward. */
int es_sh_step(es_storage *s, uint64_t seed);

/* The training run the method tests use on the bundled Criteo sample:
 * fm, dim 8, row-wise Adagrad tables at lr 0.01, 2 epochs, the last 20%
 * of the rows held out, no early stopping or refit, 1 thread, seed 1,
 * `method` with `opts` at `budget`, saved to out. */
es_train_params es_sh_criteo_fm(const char *method, const char *opts, double budget, const char *out);

/* All of the above except es_sh_budget. */
int es_sh_all(const es_sh_cfg *c);

#endif
