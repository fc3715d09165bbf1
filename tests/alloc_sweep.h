/*
 * alloc_sweep.h — allocation-failure sweeps for tests.
 *
 * es_test_alloc_sweep(fn, ctx, max_n) runs fn(ctx) once with the 1st library
 * allocation made to fail (es__alloc_fail_at, core.h), then with the 2nd,
 * the 3rd, ... until a run finishes without reaching the injected failure.
 * Every run that did reach it must return a negative status, must not crash
 * and (under ASan/LeakSanitizer) must not leak; the final clean run must
 * return a non-negative status.
 *
 * Returns the number of failure points exercised (>= 0) when all runs
 * behaved, or -1 (after printing which run misbehaved and how) when one
 * returned a non-negative status despite a failed allocation, crashed,
 * leaked, hung, or when no clean run came within max_n points.
 *
 * How it runs: each run happens in a forked child, so a crash is reported
 * instead of killing the test runner and leaks are attributed to the exact
 * failure point.  Consequences for fn:
 *   - changes it makes to ctx or to globals are not seen by the caller;
 *   - it runs single-threaded (threads are set to 1 in the child, because
 *     an OpenMP thread pool does not survive fork); only allocations on the
 *     calling thread are counted and failed anyway;
 *   - it must not print on the success path of every run (output of 1000
 *     runs is noise); returning a status is enough.
 * Set ES_ALLOC_SWEEP_INPROC=1 to run in-process instead (for a debugger:
 * crashes then stop the runner and leaks show up only at exit).
 */
#ifndef ES_ALLOC_SWEEP_H
#define ES_ALLOC_SWEEP_H

int es_test_alloc_sweep(int (*fn)(void *ctx), void *ctx, int max_n);

#endif
