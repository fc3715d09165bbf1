/*
 * cmd_train.c — `embstore train`, `embstore eval`, `embstore predict`.
 */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* ---- train ------------------------------------------------------------------------ */

static const char train_help[] =
    "usage: embstore train FILE [options]\n"
    "\n"
    "Train a click-through-rate model on a labeled click log, evaluate it on held-out\n"
    "rows and print one JSON line with the metrics, bytes and speed.  The defaults\n"
    "(logistic regression on a full table with FTRL, early stopping on the last 20% of\n"
    "the rows, then a refit on all rows) come from the study in docs/training.md.\n"
    "FILE may be '-' (standard input) or a pipe, with --format: training reads it\n"
    "more than once, so it is first copied to a temporary file in $TMPDIR (/tmp),\n"
    "removed when the command ends.\n"
    "\n"
    "data:\n"
    "  --valid FILE          validation file (default: hold out --valid-frac of FILE)\n"
    "  --valid-frac F        hold out the LAST fraction F of FILE's rows (default 0.2; 0 = none)\n"
    "  --max-rows N          read at most N rows of FILE\n"
    "  --test FILE           evaluate the final model on FILE too (reported only, never\n"
    "                        used for a decision)\n"
    "  --cache [PATH.esd]    read FILE through a binary dataset cache (default FILE.esd, or\n"
    "                        --cache=PATH): built before training when missing (one parse to\n"
    "                        count, one to write; see 'embstore convert'), reused by every\n"
    "                        epoch and by later runs, REBUILT when FILE changed since; a\n"
    "                        corrupt cache, one of another file or one built with other input\n"
    "                        options is an error.  The model is bit-identical to one trained\n"
    "                        from FILE itself.  FILE may also be a cache made by convert.\n"
    "  --in-memory           keep FILE's rows in memory, parsed and hashed, after the first\n"
    "                        pass that reads them all, and read every later pass (the\n"
    "                        epochs, a refit) from there: about 8 bytes a categorical value;\n"
    "                        the JSON says how many (in_memory_bytes).  No file is written;\n"
    "                        the model is bit-identical to one trained without it\n" CLI_READER_HELP
    "model:\n"
    "  --model M             lr | fm | ffm | dlrm | dcn (default lr)\n"
    "  --dim K               embedding dimension (default 4; dlrm, dcn: 16)\n"
    "  --bottom A,B,..       DLRM bottom MLP widths (last = K; default 64,K)\n"
    "  --top A,B,..          DLRM top / DCN deep MLP widths (default 64,32; a final 1 is added)\n"
    "  --cross N             DCN-v2 cross layers (default 2)\n"
    "  --norm-rows           fm/ffm: normalise each row x to x/|x| as libffm and xLearn do:\n"
    "                        pairs times 1/|x|^2, linear terms times 1/|x| (off)\n"
    "  --pairs-only          fm/ffm: the pair term alone, no bias or linear terms (libffm's FFM)\n"
    "embedding storage:\n"
    "  --storage S           full | hash | unified | ... (default full)\n"
    "  --budget B            serving bytes of the table: bytes (e.g. 2000000, 4M, 1G) or a\n"
    "                        fraction of the full table (e.g. 0.1 or 1/100); default 0.1 of\n"
    "                        the full table (full, mde, or an option that sizes the table\n"
    "                        such as rows=: none)\n"
    "                        multi-stage: autodim searches a dimension per field on rows\n"
    "                        held out by --valid-frac (AutoDim), then retrains as fielddim\n"
    "                        optembed prunes rows (learned L1-norm thresholds), trains a\n"
    "                        supernet of dimension prefixes and searches a dimension per\n"
    "                        field on those rows (OptEmbed), then retrains as fielddim\n"
    "                        autosrh learns soft selection weights per (field, frequency\n"
    "                        block, coordinate) with an L1 penalty on those rows, prunes\n"
    "                        the smallest to the budget (AutoSrh), then retrains as blockdim\n"
    "                        (a dimension per field and frequency block; retrain=fielddim)\n"
    "  --storage-opts S      method-specific options 'k=v,k=v'; an unknown key is an error\n"
    "  --help-storage        list the methods and their options (with --storage S: S only)\n"
    "  --precision P         fp32 | fp16 | int16 | int8 | int4 | int2: the table's rows in\n"
    "                        training and in the saved model (row-table methods; default\n"
    "                        fp32); --budget then counts rows at P (int4: ~8x the rows)\n"
    "  --qtrain M            how to train at --precision: qat (default: fp32 master copy,\n"
    "                        quantized forward, straight-through gradient) | alpt (codes\n"
    "                        only, learned per-row step, stochastic rounding; int kinds)\n"
    "  --min-count N         same as --storage-opts min_count=N (full, mde, adapt)\n"
    "  --chunks K            same as --storage-opts chunks=K (unified: lookups per field)\n"
    "  --subtables T         same as --storage-opts subtables=T (unified)\n"
    "  --share fields|none   same as --storage-opts share=1|0: one parameter space for all\n"
    "                        fields, or one per field (the methods with a share option)\n"
    "optimisation:\n"
    "  --epochs E            passes over the training rows (default 100 with early stopping,\n"
    "                        else 1)\n"
    "  --early-stop P        evaluate on the validation rows after every epoch, keep the best\n"
    "                        model, stop after P evaluations without improvement (0 = off;\n"
    "                        default 2 when there are validation rows, else 0)\n"
    "  --refit, --no-refit   after early stopping on rows carved from FILE, retrain on ALL its\n"
    "                        rows for the chosen number of passes (default: on when it applies);\n"
    "                        the test metrics and --out are the refit model's, auc/logloss\n"
    "                        those of the model early stopping chose\n"
    "  --eval-every K        with --early-stop: also evaluate every K batches of an epoch\n"
    "  --stop-metric M       logloss (default) | auc: what the best model is chosen by\n"
    "  --batch N             rows per step (default 64)\n"
    "  --lr X                dense optimizer learning rate (default: lr with adagrad 0.1;\n"
    "                        fm, ffm 0.01; dlrm, dcn 0.001)\n"
    "  --optim O             adam | adagrad | sgd for dense layers (default: adagrad for lr,\n"
    "                        adam for the others)\n"
    "  --emb-lr X            table learning rate (default 0.05)\n"
    "  --emb-optim O         rowwise | adagrad | sgd | ftrl for tables (default: ftrl for lr, fm,\n"
    "                        ffm on full, hash, unified, robe, adapt; else rowwise)\n"
    "  --emb-l2 X            lazy L2 on table rows, X >= 0 (default 0; not with ftrl)\n"
    "  --emb-l2-freq P       frequency-aware --emb-l2: a row touched c times decays\n"
    "                        with strength X * (1 + c)^-P, P in [0, 4] (0 = off,\n"
    "                        default; 0.5 typical); needs --emb-l2 > 0\n"
    "  --emb-init-acc X      table Adagrad initial accumulator (default 0; libffm: 1)\n"
    "  --emb-init-scale S    table rows start U(-S, S) (default 0.05; zeros for lr)\n"
    "  --emb-init-shift M    ... U(M-S, M+S) (default 0; libffm: S = M = 1/(2 sqrt(K)))\n"
    "  --ftrl-alpha X        FTRL alpha, > 0 (default 0.05)\n"
    "  --ftrl-beta X         FTRL beta (default 0.01)\n"
    "  --ftrl-l1 X           FTRL L1 strength (default 0.01)\n"
    "  --ftrl-l2 X           FTRL L2 strength (default 0.3)\n"
    "  --weight-decay X      L2 on dense weights (default 0)\n"
    "  --dropout P           dlrm, dcn: dropout on hidden MLP units, P in [0, 1) (default 0;\n"
    "                        training only, eval/predict never drop)\n"
    "  --matryoshka P1,..,K  Matryoshka training (fm, ffm, dlrm, dcn; not lr): the loss is\n"
    "                        the weighted sum of the log losses of the model at each prefix\n"
    "                        dimension (only the first Pi columns of every embedding; dlrm\n"
    "                        also cuts the bottom MLP output to Pi).  Strictly increasing,\n"
    "                        at most 8, the last = --dim; e.g. --dim 16 --matryoshka 2,4,8,16.\n"
    "                        eval/predict --dim Pi and 'embstore slice' use the prefixes\n"
    "  --matryoshka-weights W1,..  one loss weight per prefix (default all 1, as Kusupati et\n"
    "                        al. 2022); docs/methods.md, \"matryoshka\"\n"
    "  --threads T           threads (default 1; 0 = all cores)\n"
    "  --seed S              random seed (default 1); --threads 1 runs are repeatable\n"
    "output:\n"
    "  --out MODEL           write the trained model file\n"
    "  --checkpoint-every N  every N batches write a checkpoint (model + optimizer state +\n"
    "                        data position) to MODEL.ckpt (or --checkpoint PATH)\n"
    "  --resume              continue from the checkpoint if it exists; the result equals an\n"
    "                        uninterrupted run (bit for bit with --threads 1).  The checkpoint\n"
    "                        records every setting that changes the result and the data file\n"
    "                        (size, checksum of its first MiB); a command that differs is\n"
    "                        refused with the list of differences.  Free to change on resume:\n"
    "                        --epochs (to train longer), --valid FILE, --threads, --out,\n"
    "                        --checkpoint-every, --quiet\n"
    "  --quiet               no progress line\n"
    "  --progress            the progress line even when stderr is not a terminal (under\n"
    "                        mpirun, whose output is a pipe: rank 0's, with bytes sent per step)\n"
    "\n"
    "The last line on stdout is JSON: auc, logloss, calibration, rows, emb_bytes,\n"
    "param_bytes, train_rows_per_s, bad_lines (skipped by --skip-bad), ...\n"
    "The run fails, rather than report rows it never read, when FILE or --valid changes\n"
    "while it is read; a model that cannot fit in memory (physical, ulimit -v/-d) is\n"
    "refused before anything is allocated.\n"
    "\n"
    "Across processes (the MPI build): `mpirun -np N embstore train FILE ...` trains one\n"
    "model with the tables' rows split over N ranks (N a power of two up to 16; storage\n"
    "full, hash, unified, adapt, qr, mde, multihash; dhe and tt replicated); with --threads 1\n"
    "the model file is the same for any N, rank 0 writes it, and the JSON adds ranks and\n"
    "comm_*_bytes_per_step; checkpoints are one file per rank (<ckpt>.rank<k>of<N>),\n"
    "resumed on as many ranks (docs/scale.md).\n"
    "No rank holds more than its shard: evaluations run on the shards and rank 0 writes\n"
    "the model file from them in rounds.  --rank-memory BYTES (e.g. 64M) caps the table\n"
    "bytes one process may hold (rows and optimizer state; checked when its shard is\n"
    "made, before training): a table 4x the cap trains on 4 ranks, and is refused on 1\n"
    "with the number of ranks it needs.  The JSON adds rank_table_bytes(_max).\n"
    "FILE may name several files, read in order as one stream: a glob ('logs/day-*.tsv.gz',\n"
    "quoted) or @LIST (a file with one path a line).  Under mpirun, --shard-files makes it\n"
    "data-parallel input: rank k reads only files k, k+N, ...; each global batch takes\n"
    "batch/N rows from every rank, each epoch N x the fewest rows a rank holds (the rest:\n"
    "rows_dropped in the JSON); validation from --valid FILE or none; the model then\n"
    "depends on N (without it every rank reads the whole input and it does not).\n"
    "\n"
    "examples:\n"
    "  embstore train data/criteo_kaggle_train_first10k.tsv            # the studied defaults\n"
    "  embstore train data/criteo_kaggle_train_first10k.tsv --model dlrm \\\n"
    "      --storage unified --budget 0.1 --out model.es              # a compressed DLRM\n";


static void progress_cb(const es_progress *p, void *ctx) {
    (void)ctx;
    if (!strcmp(p->phase, "train") || !strcmp(p->phase, "refit")) {
        double pct = p->rows_total ? 100.0 * (double)p->rows / (double)p->rows_total : 0;
        fprintf(stderr, "\r  %s %d/%d  %5.1f%%  %10llu rows  %9.0f rows/s  loss %.5f   ",
                strcmp(p->phase, "refit") ? "epoch" : "refit pass", p->epoch, p->epochs, pct,
                (unsigned long long)p->rows, p->rows_per_s, p->loss);
        if (p->comm_bytes_per_step > 0) /* across processes */
            fprintf(stderr, " %8.0f B/step sent, %.2f s comm   ", p->comm_bytes_per_step, p->comm_seconds);
        if (p->rows_total && p->rows >= p->rows_total) fputc('\n', stderr);
    } else {
        if (!strcmp(p->phase, "eval")) fprintf(stderr, "\r  evaluating ...%40s\n", "");
        else fprintf(stderr, "\r  %s: %llu rows   ", p->phase, (unsigned long long)p->rows);
    }
    fflush(stderr);
}

static char *join_argv(int argc, char **argv) {
    size_t n = 16;
    for (int i = 0; i < argc; i++) n += strlen(argv[i]) + 1;
    char *s = malloc(n);
    if (!s) return NULL;
    strcpy(s, "embstore");
    for (int i = 0; i < argc; i++) {
        strcat(s, " ");
        strcat(s, argv[i]);
    }
    return s;
}

static void json_num(FILE *f, const char *key, double v, int last) {
    if (isfinite(v)) fprintf(f, "\"%s\":%.6g%s", key, v, last ? "" : ",");
    else fprintf(f, "\"%s\":null%s", key, last ? "" : ",");
}

static void report_stale(const char *tmp, long pid, void *ctx) {
    fprintf(stderr, "embstore %s: removed stale temporary file '%s' (left by process %ld, which no longer runs)\n", (const char *)ctx,
            tmp, pid);
}

/* The outputs (model, checkpoint) must not be the data files or each other;
 * and a temporary file that a killed run (kill -9) left next to them is
 * removed before this run writes there. */
static int check_train_paths(const char *cmd, const es_train_params *p) {
    char ckpt_buf[4096];
    const char *ckpt = p->checkpoint_path;
    if (!ckpt && p->out_path && (p->checkpoint_every > 0 || p->resume)) {
        snprintf(ckpt_buf, sizeof ckpt_buf, "%s.ckpt", p->out_path);
        ckpt = ckpt_buf;
    }
    const cli_path in[] = {{"FILE", p->train_path, "the input file"},
                           {"--valid", p->valid_path, "the validation file"},
                           {"--test", p->test_path, "the test file"}};
    const cli_path out[] = {{"--out", p->out_path, NULL}, {"--checkpoint", ckpt, NULL}};
    if (cli_check_outputs(cmd, in, 3, out, ckpt ? 2 : 1) != 0) return -1;
    if (ckpt) es_temp_files_remove_stale(ckpt, report_stale, (void *)cmd);
    if (p->out_path) es_temp_files_remove_stale(p->out_path, report_stale, (void *)cmd);
    if (p->out_path && p->early_stop) { /* the best model while training: "<out>.best.tmp.<pid>" */
        char best[4200];
        snprintf(best, sizeof best, "%s.best", p->out_path);
        es_temp_files_remove_stale(best, report_stale, (void *)cmd);
    }
    return 0;
}

/* --help-storage: the option tables of one method or of all. */
static int help_storage_print(const char *cmd, const char *method) {
    es_err err = {0};
    int n = es_storage_help(method, NULL, 0, &err);
    if (n < 0) return cli_usage(cmd, "%s", err.msg);
    char *buf = malloc((size_t)n + 1);
    if (!buf) return cli_fail(cmd, "out of memory");
    es_storage_help(method, buf, (size_t)n + 1, &err);
    fputs(buf, stdout);
    free(buf);
    return 0;
}

int cmd_train(int argc, char **argv) {
    const char *cmd = "train";
    es_train_params p = es_train_params_default();
    const char *file = NULL;
    int quiet = 0, force_progress = 0, help_storage = 0, storage_given = 0, use_cache = 0;
    const char *cache_path = NULL;
    long long ll;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int r = cli_reader_opt(cmd, argc, argv, &i, &p.reader);
        if (r == 0) r = cli_train_opt(cmd, argc, argv, &i, &p);
        if (r < 0) return ES_EXIT_USAGE;
        if (r > 0) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(train_help, stdout);
            return 0;
        } else if (!strcmp(a, "--help-storage")) {
            help_storage = 1;
        } else if (!strcmp(a, "--storage")) {
            if (!(p.storage = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
            storage_given = 1;
        } else if (!strcmp(a, "--budget")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_budget(cmd, v, &p.budget)) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--share")) {
            if (!(v = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
            if (strcmp(v, "fields") != 0 && strcmp(v, "none") != 0)
                return cli_usage(cmd, "--share expects fields or none, got '%s'", v);
            if (cli_storage_opts_add(cmd, &p, !strcmp(v, "fields") ? "share=1" : "share=0")) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--out") || !strcmp(a, "-o")) {
            if (!(p.out_path = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--shard-files")) {
            p.shard_files = 1;
        } else if (!strcmp(a, "--rank-memory")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_budget(cmd, v, &p.rank_memory)) return ES_EXIT_USAGE;
            if (!(p.rank_memory > 1)) {
                cli_usage(cmd, "--rank-memory expects bytes (e.g. 64M), got '%s'", v);
                return ES_EXIT_USAGE;
            }
        } else if (!strcmp(a, "--checkpoint-every")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, INT32_MAX, &ll)) return ES_EXIT_USAGE;
            p.checkpoint_every = (int)ll;
        } else if (!strcmp(a, "--checkpoint")) {
            if (!(p.checkpoint_path = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--resume")) {
            p.resume = 1;
        } else if (!strcmp(a, "--refit")) {
            p.refit = 1;
        } else if (!strcmp(a, "--no-refit")) {
            p.refit = 0;
        } else if (!strcmp(a, "--early-stop")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, INT32_MAX, &ll)) return ES_EXIT_USAGE;
            p.early_stop = (int)ll;
        } else if (!strcmp(a, "--eval-every")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, INT32_MAX, &ll)) return ES_EXIT_USAGE;
            p.eval_every = (int)ll;
        } else if (!strcmp(a, "--stop-metric")) {
            if (!(v = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
            if (strcmp(v, "logloss") != 0 && strcmp(v, "auc") != 0) return cli_usage(cmd, "--stop-metric expects logloss or auc, got '%s'", v);
            p.stop_metric = v;
        } else if (!strcmp(a, "--test")) {
            if (!(p.test_path = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--cache")) {
            /* optional value: only a path ending in .esd, so that FILE after
             * --cache is not taken for it */
            use_cache = 1;
            size_t n = i + 1 < argc ? strlen(argv[i + 1]) : 0;
            if (n > 4 && !strcmp(argv[i + 1] + n - 4, ".esd")) cache_path = argv[++i];
        } else if (!strncmp(a, "--cache=", 8)) {
            use_cache = 1;
            cache_path = a + 8;
            if (!*cache_path) return cli_usage(cmd, "--cache= needs a path");
        } else if (!strcmp(a, "--in-memory")) {
            p.in_memory = 1;
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            quiet = 1;
        } else if (!strcmp(a, "--progress")) {
            force_progress = 1;
        } else if (!strcmp(a, "--json")) {
            /* JSON is always the last line; accepted for scripts that ask for it */
        } else if (a[0] == '-' && a[1]) {
            return cli_usage(cmd, "unknown option '%s'", a);
        } else if (!file) {
            file = a;
        } else {
            return cli_usage(cmd, "unexpected argument '%s' (one training file)", a);
        }
    }
    if (help_storage) return help_storage_print(cmd, storage_given ? p.storage : NULL);
    if (!file) return cli_usage(cmd, "no training file given");
    const int stream = cli_is_stream(file); /* "-" or a pipe: copied to a temporary file below */
    if (stream && p.reader.format == ES_FMT_AUTO)
        return cli_usage(cmd, "FILE '%s' (standard input or a pipe) has no file name to tell the format from: give --format "
                              "(criteo, csv, libsvm or libffm; gzip is recognised by its bytes)", file);
    if (stream && use_cache && !cache_path)
        return cli_usage(cmd, "--cache: FILE '%s' is standard input or a pipe; say where the cache goes (--cache PATH.esd)", file);
    if (p.valid_path) p.valid_frac = 0;
    p.train_path = file;
    es_train_params_resolve(&p); /* the automatic defaults, so that the report shows them */
    if (check_train_paths(cmd, &p) != 0) return ES_EXIT_USAGE;
    int mrc = 0;
    const es_comm *comm = cli_mpi_comm(cmd, &mrc); /* under mpirun: one rank of a run across processes */
    if (mrc) return mrc;
    p.comm = comm;
    const int rank = comm ? comm->rank : 0;
    if (stream) {
        /* training reads FILE more than once (counting, the vocabulary,
         * every epoch): a copy of the stream, removed at exit */
        if (comm && comm->size > 1) {
            int st = cli_fail(cmd, "[rank %d of %d] FILE '%s' is standard input or a pipe, which reaches one process only; give "
                                   "every rank a file (or --shard-files)", comm->rank, comm->size, file);
            cli_mpi_finish();
            return st;
        }
        if (!(file = cli_spool(cmd, file, quiet))) return ES_EXIT_FAIL;
        p.train_path = file;
    }
    char cache_buf[4096];
    if (use_cache) {
        if (!cache_path && (file[0] == '@' || strpbrk(file, "*?["))) {
            cli_usage(cmd, "--cache: FILE '%s' names several files; say where the cache goes (--cache PATH.esd)", file);
            return ES_EXIT_USAGE;
        }
        if (!cache_path) {
            snprintf(cache_buf, sizeof cache_buf, "%s.esd", file);
            cache_path = cache_buf;
        }
        const cli_path cin[] = {{"FILE", file, "the input file"}, {"--valid", p.valid_path, "the validation file"},
                                {"--test", p.test_path, "the test file"}, {"--out", p.out_path, "the model output"}};
        const cli_path cout[] = {{"--cache", cache_path, NULL}};
        if (cli_check_outputs(cmd, cin, 4, cout, 1) != 0) return ES_EXIT_USAGE;
        es_dataset_info ci;
        es_err cerr = {0};
        /* a stream's copy is new on every run: its cache is built again
         * (es_dataset_cache would call it a cache of another file) */
        int crc = stream ? es_dataset_convert(file, &p.reader, cache_path, &ci, &cerr) : es_dataset_cache(file, &p.reader, cache_path, &ci, &cerr);
        if (stream && crc == 0) ci.built = 1;
        if (crc != 0) return cli_fail(cmd, "--cache: %s", cerr.msg);
        if (!quiet) {
            if (ci.built)
                fprintf(stderr, "%s cache %s: %llu rows, %llu bytes (%.2f s)\n", ci.stale ? "rebuilt stale" : "built", cache_path,
                        (unsigned long long)ci.rows, (unsigned long long)ci.bytes, ci.seconds);
            else
                fprintf(stderr, "reading cache %s (%llu rows)\n", cache_path, (unsigned long long)ci.rows);
        }
        p.train_path = cache_path;
    }
    char *cl = join_argv(argc, argv);
    p.command_line = cl;
    if (!quiet && (cli_tty() || force_progress) && rank == 0) p.progress = progress_cb;
    es_train_result res;
    es_err err = {0};
    int rc = es_train(&p, &res, &err);
    free(cl);
    if (rc != 0 && comm) { /* every rank says it, with the rank that failed first in the message */
        int st = cli_fail(cmd, "[rank %d of %d] %s", comm->rank, comm->size, err.msg[0] ? err.msg : es_strerror(rc));
        if (res.comm_broken) cli_mpi_abort(st); /* the others may wait for this rank in a collective */
        cli_mpi_finish(); /* after every rank has printed: mpirun ends the job at the first non-zero exit */
        return st;
    }
    cli_mpi_finish();
    if (rc != 0) return cli_fail(cmd, "%s", err.msg[0] ? err.msg : es_strerror(rc));
    if (rank != 0) return 0; /* rank 0 reports the run */
    if (res.bad_lines) /* a warning about the data, shown even with --quiet */
        fprintf(stderr, "skipped %llu bad line%s (--skip-bad); the first:\n%s\n", (unsigned long long)res.bad_lines,
                res.bad_lines == 1 ? "" : "s", res.bad_report);
    if (!quiet) {
        char frac[128] = "";
        if (res.full_bytes && res.emb_bytes > res.emb_param_bytes) /* a value -> row map besides the parameters */
            snprintf(frac, sizeof frac, " (parameters %zu bytes, %.4g of the full table)", res.emb_param_bytes,
                     (double)res.emb_param_bytes / (double)res.full_bytes);
        else if (res.full_bytes)
            snprintf(frac, sizeof frac, " (%.4g of full)", (double)res.emb_bytes / (double)res.full_bytes);
        fprintf(stderr, "trained %s + %s on %llu rows x %s%d epochs (%.1f s, %d threads); embedding %zu bytes%s%s\n", p.model, p.storage,
                (unsigned long long)res.train_rows, p.early_stop ? "at most " : "", p.epochs, res.seconds, res.threads, res.emb_bytes, frac,
                comm ? " on rank 0 (its shard)" : "");
        if (comm)
            fprintf(stderr, "across %d ranks: %.0f bytes all-to-all (tables) and %.0f bytes allreduce (dense) sent per step by rank 0 (%llu steps, %.2f s communicating)\n",
                    res.ranks, res.comm_sparse_bytes_per_step, res.comm_dense_bytes_per_step, (unsigned long long)res.comm_steps,
                    res.comm_seconds);
        if (res.valid.rows)
            fprintf(stderr, "validation: AUC %.4f  logloss %.4f  calibration %.3f  (%llu rows)\n", res.valid.auc, res.valid.logloss,
                    res.valid.calibration, (unsigned long long)res.valid.rows);
        if (res.n_evals)
            fprintf(stderr, "early stopping: best model after %llu rows of epoch %d (evaluation %d of %d)%s\n",
                    (unsigned long long)res.best_rows, res.best_epoch, res.best_eval + 1, res.n_evals,
                    res.stopped_early ? "; stopped early" : "");
        if (res.refit)
            fprintf(stderr, "refit: retrained on all %llu rows for the chosen passes (%llu rows in all); test and saved model are the refit's\n",
                    (unsigned long long)res.train_rows + res.valid.rows, (unsigned long long)res.refit_rows);
        if (res.test.rows)
            fprintf(stderr, "test: AUC %.4f  logloss %.4f  calibration %.3f  (%llu rows)\n", res.test.auc, res.test.logloss,
                    res.test.calibration, (unsigned long long)res.test.rows);
        for (int i = 0; i < res.n_stages; i++)
            fprintf(stderr, "stage %d %-8s %7.2f s  %s\n", i + 1, res.stages[i].name, res.stages[i].seconds, res.stages[i].result);
        if (p.out_path) fprintf(stderr, "model written to %s\n", p.out_path);
    }
    printf("{\"model\":\"%s\",\"storage\":\"%s\",", p.model, p.storage);
    double nan = NAN;
    json_num(stdout, "auc", res.valid.rows ? res.valid.auc : nan, 0);
    json_num(stdout, "logloss", res.valid.rows ? res.valid.logloss : nan, 0);
    json_num(stdout, "calibration", res.valid.rows ? res.valid.calibration : nan, 0);
    printf("\"valid_rows\":%llu,\"rows\":%llu,\"epochs\":%d,", (unsigned long long)res.valid.rows, (unsigned long long)res.train_rows,
           p.epochs);
    printf("\"emb_bytes\":%zu,\"emb_param_bytes\":%zu,\"emb_state_bytes\":%zu,\"full_bytes\":%zu,\"net_bytes\":%zu,\"param_bytes\":%zu,",
           res.emb_bytes, res.emb_param_bytes, res.emb_state_bytes, res.full_bytes, res.net_bytes, res.param_bytes);
    if (res.test.rows) {
        json_num(stdout, "test_auc", res.test.auc, 0);
        json_num(stdout, "test_logloss", res.test.logloss, 0);
        printf("\"test_rows\":%llu,", (unsigned long long)res.test.rows);
    }
    if (p.early_stop) {
        printf("\"best_epoch\":%d,\"best_rows\":%llu,\"stopped_early\":%s,\"evals\":[", res.best_epoch,
               (unsigned long long)res.best_rows, res.stopped_early ? "true" : "false");
        for (int e = 0; e < res.n_evals && e < ES_TRAIN_MAX_EVALS; e++) {
            if (!res.evals[e].rows) { /* made before a --resume: not known to this run */
                printf("%snull", e ? "," : "");
                continue;
            }
            printf("%s{", e ? "," : "");
            json_num(stdout, "auc", res.evals[e].auc, 0);
            json_num(stdout, "logloss", res.evals[e].logloss, 1);
            printf("}");
        }
        printf("],");
    }
    printf("\"refit\":%s,\"refit_rows\":%llu,", res.refit ? "true" : "false", (unsigned long long)res.refit_rows);
    if (res.n_stages) { /* a multi-stage method: each stage's name, seconds and result (a JSON object) */
        printf("\"stages\":[");
        for (int i = 0; i < res.n_stages; i++) {
            printf("%s{\"name\":\"%s\",", i ? "," : "", res.stages[i].name);
            json_num(stdout, "seconds", res.stages[i].seconds, 0);
            printf("\"result\":%s}", res.stages[i].result);
        }
        printf("],");
    }
    if (res.n_prefixes) { /* Matryoshka: the model at each trained prefix */
        printf("\"prefixes\":[");
        for (int i = 0; i < res.n_prefixes; i++) {
            printf("%s{\"dim\":%d,\"emb_bytes\":%zu", i ? "," : "", res.prefixes[i].dim, res.prefixes[i].emb_bytes);
            if (res.prefixes[i].valid.rows) {
                printf(",");
                json_num(stdout, "auc", res.prefixes[i].valid.auc, 0);
                json_num(stdout, "logloss", res.prefixes[i].valid.logloss, 1);
            }
            if (res.prefixes[i].test.rows) {
                printf(",");
                json_num(stdout, "test_auc", res.prefixes[i].test.auc, 0);
                json_num(stdout, "test_logloss", res.prefixes[i].test.logloss, 1);
            }
            printf("}");
        }
        printf("],");
    }
    if (comm) { /* rank 0's communication per training step (docs/scale.md) */
        printf("\"ranks\":%d,\"comm_steps\":%llu,", res.ranks, (unsigned long long)res.comm_steps);
        json_num(stdout, "comm_alltoall_bytes_per_step", res.comm_sparse_bytes_per_step, 0);
        json_num(stdout, "comm_allreduce_bytes_per_step", res.comm_dense_bytes_per_step, 0);
        json_num(stdout, "comm_seconds", res.comm_seconds, 0);
    }
    printf("\"rank_table_bytes\":%zu,\"rank_table_bytes_max\":%zu,", res.rank_table_bytes, res.rank_table_bytes_max);
    if (p.shard_files) printf("\"rows_dropped\":%llu,", (unsigned long long)res.rows_dropped);
    if (p.in_memory) printf("\"in_memory_bytes\":%llu,", (unsigned long long)res.in_memory_bytes);
    json_num(stdout, "train_loss", res.train_loss, 0);
    json_num(stdout, "train_rows_per_s", res.train_rows_per_s, 0);
    json_num(stdout, "eval_rows_per_s", res.eval_rows_per_s, 0);
    struct rusage ru;
    long long rss = getrusage(RUSAGE_SELF, &ru) == 0 ? (long long)ru.ru_maxrss * 1024 : -1;
    printf("\"peak_rss_bytes\":%lld,\"threads\":%d,\"seed\":%llu,\"bad_lines\":%llu,\"resumed\":%s}\n", rss, res.threads,
           (unsigned long long)p.seed, (unsigned long long)res.bad_lines, res.resumed ? "true" : "false");
    return 0;
}

/* ---- eval ---------------------------------------------------------------------------- */

#define MODEL_INPUT_HELP                                                                              \
    "input (default: as the model was trained; a CSV file with a header is matched by column\n"     \
    "name, so columns may come in any order and extra ones are ignored):\n"                          \
    "  --columns SPEC   read the columns this way instead, e.g. 'r:label,u:cat,m:cat' (as many\n"     \
    "                   cat/multi and num entries as the model has fields and numeric features;\n"  \
    "                   matched by name when the names are the model's, else in SPEC's order)\n"   \
    "  --format F       criteo | csv | libsvm | libffm | auto\n"                                     \
    "  --delim C        CSV delimiter (one character, or 'tab')\n"                                   \
    "  --no-header      the CSV file has no header line (columns by position)\n"                    \
    "  --multi-sep C    separator inside multi-valued fields\n"

static const char eval_help[] =
    "usage: embstore eval MODEL FILE [options]\n"
    "\n"
    "Evaluate a saved model on a labeled file (read with the model's own input\n"
    "settings) and print one JSON line: auc, logloss, calibration, rows.\n"
    "FILE may be '-' (standard input) or a pipe: it is read once.\n"
    "  --no-verify    skip tensor checksums when loading (faster for large models)\n"
    "  --map          map the model file instead of reading it (opens a large model\n"
    "                 at once with --no-verify); the file must then only be replaced\n"
    "                 by rename: a cp over it while in use kills the process (SIGBUS)\n"
    "  --threads T    threads (default 1; 0 = all cores)\n"
    "  --dim P        a Matryoshka model (train --matryoshka) at prefix P: only the first\n"
    "                 P columns of every embedding; P must be one of its trained prefixes\n"
    "  --label-threshold X  label = (label column >= X) instead of the model's setting\n" MODEL_INPUT_HELP;

static const char predict_help[] =
    "usage: embstore predict MODEL FILE [--out PATH] [--unlabeled] [--digits N] [options]\n"
    "\n"
    "Write one click probability per input row (6 decimals), in input order.\n"
    "FILE may be '-' (standard input) or a pipe: it is read once.\n"
    "The output is written to a temporary file and renamed, so a failed run\n"
    "leaves nothing behind.\n"
    "  --out PATH     output file (default: stdout)\n"
    "  --digits N     N significant digits (1..9, printf %.Ng) instead of 6 decimals;\n"
    "                 9 prints each float exactly: it reads back (strtof) to the\n"
    "                 same bits, as the server's predictions (embstore serve)\n"
    "  --unlabeled    FILE has no label column (e.g. the 39-column Criteo test file, or a\n"
    "                 CSV file without the label column; a label column present is ignored)\n"
    "  --no-verify    skip tensor checksums when loading\n"
    "  --map          map the model file instead of reading it (see 'eval --help')\n"
    "  --threads T    threads (default 1; 0 = all cores)\n"
    "  --dim P        a Matryoshka model at its trained prefix P (see 'eval --help'); the\n"
    "                 same bits as the model 'embstore slice --dim P' writes\n" MODEL_INPUT_HELP;

/* Reader options of eval/predict: those that say how a file is laid out.
 * --skip-bad would drop rows (predictions would no longer line up with the
 * input) and --pool changes what the model computes, so they are refused. */
static int model_reader_opt(const char *cmd, int predict, int argc, char **argv, int *i, es_reader_params *rp, int *changed,
                            int *format_given) {
    const char *a = argv[*i];
    if (!strcmp(a, "--format")) *format_given = 1;
    if (!strcmp(a, "--skip-bad") || !strcmp(a, "--pool") || (predict && !strcmp(a, "--label-threshold"))) {
        cli_usage(cmd, "%s is not an option of %s (%s)", a, cmd,
                  !strcmp(a, "--skip-bad") ? "skipped lines would leave rows without a prediction"
                  : !strcmp(a, "--pool")   ? "the pooling is part of the model"
                                           : "predict does not read labels");
        return -1;
    }
    int r = cli_reader_opt(cmd, argc, argv, i, rp);
    if (r > 0) *changed = 1;
    return r;
}

static int model_cmd(int argc, char **argv, int predict) {
    const char *cmd = predict ? "predict" : "eval";
    const char *model = NULL, *file = NULL, *out = NULL;
    unsigned flags = 0;
    long long ll;
    int threads = 1, has_label = 1, digits = 0, prefix = 0;
    /* reader options are collected here and applied over the model's own
     * settings once it is loaded */
    es_reader_params ov;
    memset(&ov, 0, sizeof ov);
    ov.format = ES_FMT_AUTO;
    ov.header = -1;
    ov.label_threshold = NAN;
    int changed = 0, format_given = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int r = model_reader_opt(cmd, predict, argc, argv, &i, &ov, &changed, &format_given);
        if (r < 0) return ES_EXIT_USAGE;
        if (r > 0) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(predict ? predict_help : eval_help, stdout);
            return 0;
        } else if (!strcmp(a, "--no-verify")) {
            flags |= ES_LOAD_NO_VERIFY;
        } else if (!strcmp(a, "--map")) {
            flags |= ES_LOAD_MAP;
        } else if (!strcmp(a, "--threads")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, 1024, &ll)) return ES_EXIT_USAGE;
            threads = (int)ll;
        } else if (!strcmp(a, "--dim")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 4096, &ll)) return ES_EXIT_USAGE;
            prefix = (int)ll;
        } else if (predict && (!strcmp(a, "--out") || !strcmp(a, "-o"))) {
            if (!(out = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (predict && !strcmp(a, "--unlabeled")) {
            has_label = 0;
        } else if (predict && !strcmp(a, "--digits")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 9, &ll)) return ES_EXIT_USAGE;
            digits = (int)ll;
        } else if (!strcmp(a, "--json")) {
        } else if (a[0] == '-' && a[1]) {
            return cli_usage(cmd, "unknown option '%s'", a);
        } else if (!model) {
            model = a;
        } else if (!file) {
            file = a;
        } else {
            return cli_usage(cmd, "unexpected argument '%s'", a);
        }
    }
    if (!model || !file) return cli_usage(cmd, "expected MODEL and FILE");
    if (!strcmp(file, "-")) file = "/dev/stdin"; /* read once, in order: a pipe is fine */
    const cli_path ins[] = {{"MODEL", model, "the model file"}, {"FILE", file, "the input file"}};
    const cli_path outs[] = {{"--out", out, NULL}};
    if (cli_check_outputs(cmd, ins, 2, outs, 1) != 0) return ES_EXIT_USAGE;
    es_set_threads(threads);
    es_model *m = NULL;
    es_err err = {0};
    int rc = es_model_load(&m, model, flags, &err);
    if (rc != 0) return cli_fail(cmd, "%s", err.msg);
    if (prefix && es_model_set_prefix(m, prefix) != 0) {
        rc = cli_fail(cmd, "%s: %s", model, es_model_errmsg(m));
        es_model_free(m);
        return rc;
    }
    if (changed) {
        es_reader_params rp = es_model_reader_params(m);
        /* --format, or --columns alone (a spec is for CSV) */
        es_format fmt = format_given ? ov.format : ov.columns ? ES_FMT_CSV : rp.format;
        if (fmt != rp.format) {
            /* another format: the model's CSV settings no longer apply */
            rp.columns = NULL;
            rp.delim = 0; /* from the file name, unless --delim */
            rp.format = fmt;
        }
        if (ov.columns) rp.columns = ov.columns;
        if (ov.delim) rp.delim = ov.delim;
        if (ov.header == 0) rp.header = 0;
        if (ov.multi_sep) rp.multi_sep = ov.multi_sep;
        if (!isnan(ov.label_threshold)) rp.label_threshold = ov.label_threshold;
        if (es_model_set_reader_params(m, &rp) != 0) {
            es_model_free(m);
            return cli_fail(cmd, "out of memory");
        }
    }
    if (predict) {
        uint64_t rows = 0;
        rc = es_model_set_predict_digits(m, digits);
        if (rc == 0) rc = es_model_predict_file(m, file, has_label, out, &rows);
        if (rc != 0) rc = cli_fail(cmd, "%s", es_model_errmsg(m));
        else if (out) fprintf(stderr, "wrote %llu predictions to %s\n", (unsigned long long)rows, out);
    } else {
        es_metrics mt;
        rc = es_model_eval_file(m, file, &mt);
        if (rc != 0) rc = cli_fail(cmd, "%s", es_model_errmsg(m));
        else {
            printf("{");
            json_num(stdout, "auc", mt.auc, 0);
            json_num(stdout, "logloss", mt.logloss, 0);
            json_num(stdout, "calibration", mt.calibration, 0);
            printf("\"rows\":%llu}\n", (unsigned long long)mt.rows);
        }
    }
    /* once, whether or not the run succeeded: which columns were not read */
    if (es_model_input_note(m)[0]) fprintf(stderr, "embstore %s: note: %s\n", cmd, es_model_input_note(m));
    es_model_free(m);
    return rc;
}

int cmd_eval(int argc, char **argv) { return model_cmd(argc, argv, 0); }
int cmd_predict(int argc, char **argv) { return model_cmd(argc, argv, 1); }
