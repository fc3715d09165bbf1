/*
 * train_predict.c — embstore's step-level API from a program that owns the
 * training loop (docs/api.md).  It trains a DLRM with a Unified Embedding
 * table on a Criteo-format file, saves the model, loads it back and writes
 * one click probability per row, exactly what
 *
 *   embstore train FILE --valid-frac 0 --model dlrm --storage unified \
 *       --budget 0.1 --epochs 1 --seed 1 --threads 1 --out MODEL
 *   embstore predict MODEL FILE --out PRED
 *
 * does; with one thread the predictions are the same bits (the test suite
 * checks it).  Only the public header is used.
 *
 *   usage: train_predict TRAIN.tsv MODEL.es PRED.txt [THREADS]
 */
#include <embstore.h>

#include <stdio.h>
#include <stdlib.h>

static int fail(const char *what, const char *msg) {
    fprintf(stderr, "train_predict: %s: %s\n", what, msg);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s TRAIN.tsv MODEL.es PRED.txt [THREADS]\n", argv[0]);
        return 2;
    }
    const char *data = argv[1], *model_path = argv[2], *pred_path = argv[3];
    es_set_threads(argc > 4 ? atoi(argv[4]) : 1);
    es_err err = {0};
    es_reader *r = NULL;
    es_vocab *vocab = NULL;
    es_model *m = NULL, *loaded = NULL;
    es_batch b = {0};
    float *prob = NULL;
    int rc = 1, n;

    /* 1. the data: the reader knows the schema once the file is open */
    if (es_reader_open(&r, data, NULL, &err) != 0) return fail("open", err.msg);
    es_model_params mp = es_model_params_default(); /* dlrm, dim 16, unified, batch 256, Adam + row-wise Adagrad */
    mp.budget = 0.1;                                /* a tenth of the full table's bytes */
    mp.n_dense = es_reader_n_dense(r);
    mp.n_fields = es_reader_n_fields(r);
    if (es_batch_alloc(&b, mp.batch, mp.n_dense, mp.n_fields, 0) != 0) goto out;

    /* 2. value counts: a budget given as a fraction of the full table needs them */
    if (es_vocab_create(&vocab, mp.n_fields) != 0) goto out;
    while ((n = es_reader_next(r, &b)) > 0)
        if (es_vocab_add_batch(vocab, &b) != 0) goto out;
    if (n < 0) {
        fail(data, es_reader_errmsg(r));
        goto out;
    }

    /* 3. create the model and train one epoch, one step per batch */
    if (es_model_create(&m, &mp, vocab, &err) != 0) {
        fail("create", err.msg);
        goto out;
    }
    if (es_model_set_reader(m, r) != 0 || es_reader_rewind(r) != 0) goto out;
    double loss = 0;
    uint64_t rows = 0;
    while ((n = es_reader_next(r, &b)) > 0) {
        if (es_model_train_batch(m, &b, &loss) != 0) {
            fail("train", es_model_errmsg(m));
            goto out;
        }
        rows += (uint64_t)n;
    }
    if (n < 0 || rows == 0) {
        fail(data, n < 0 ? es_reader_errmsg(r) : "no rows");
        goto out;
    }
    printf("trained %llu rows, mean log loss %.6f, table %zu bytes, dense %zu bytes\n", (unsigned long long)rows,
           loss / (double)rows, es_model_table_bytes(m), es_model_net_bytes(m));
    if (es_model_set_meta(m, "user.example", "examples/train_predict.c") != 0 || es_model_save(m, model_path, 0) != 0) {
        fail("save", es_model_errmsg(m));
        goto out;
    }

    /* 4. load it back (as a server would) and predict every row */
    if (es_model_load(&loaded, model_path, 0, &err) != 0) {
        fail("load", err.msg);
        goto out;
    }
    FILE *fp = fopen(pred_path, "w");
    if (!fp || !(prob = malloc((size_t)b.cap * sizeof *prob)) || es_reader_rewind(r) != 0) {
        if (fp) fclose(fp);
        fail(pred_path, "cannot write");
        goto out;
    }
    while ((n = es_reader_next(r, &b)) > 0 && es_model_predict_batch(loaded, &b, prob) == 0)
        for (int i = 0; i < n; i++) fprintf(fp, "%.6f\n", prob[i]);
    if (fclose(fp) != 0 || n != 0) {
        fail("predict", n < 0 ? es_reader_errmsg(r) : es_model_errmsg(loaded));
        goto out;
    }
    printf("model written to %s, predictions to %s\n", model_path, pred_path);
    rc = 0;
out:
    free(prob);
    es_batch_free(&b);
    es_model_free(m);
    es_model_free(loaded);
    es_vocab_free(vocab);
    es_reader_free(r);
    return rc;
}
