"""Loading libembstore.so and the ctypes mirror of include/embstore.h.

Only what the package calls is declared.  Every structure here must match
the header field for field (tests/test_layout.py compiles a C program that
prints sizeof/offsetof of each and compares them with these).
"""
import ctypes
import ctypes.util
import os

c_int, c_uint, c_double, c_float, c_char = ctypes.c_int, ctypes.c_uint, ctypes.c_double, ctypes.c_float, ctypes.c_char
c_size_t, c_uint64, c_int64, c_int32, c_uint32 = ctypes.c_size_t, ctypes.c_uint64, ctypes.c_int64, ctypes.c_int32, ctypes.c_uint32
c_char_p, c_void_p, POINTER = ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER

ERR_NAMES = {0: "OK", -1: "EINVAL", -2: "ENOMEM", -3: "EIO", -4: "EPARSE", -5: "EFORMAT", -6: "ECHECKSUM",
             -7: "EVERSION", -8: "EBUDGET", -9: "ENOTFOUND", -10: "EUNSUPPORTED", -11: "ERANGE", -12: "EEOF"}


class es_err(ctypes.Structure):
    _fields_ = [("code", c_int), ("msg", c_char * 512)]


class es_batch(ctypes.Structure):
    _fields_ = [("cap", c_int), ("n", c_int), ("n_dense", c_int), ("n_fields", c_int),
                ("label", POINTER(c_float)), ("dense", POINTER(c_float)), ("off", POINTER(c_uint32)),
                ("val", POINTER(c_uint64)), ("wt", POINTER(c_float)), ("val_cap", c_size_t)]


class es_reader_params(ctypes.Structure):
    _fields_ = [("format", c_int), ("delim", c_char), ("header", c_int), ("columns", c_char_p),
                ("multi_sep", c_char), ("pool", c_int), ("label_threshold", c_double), ("has_label", c_int),
                ("num_cat", c_int), ("n_fields_hint", c_int), ("skip_bad", c_int), ("max_line", c_size_t),
                ("threads", c_int)]


class es_metrics(ctypes.Structure):
    _fields_ = [("auc", c_double), ("logloss", c_double), ("calibration", c_double), ("base_rate", c_double),
                ("mean_pred", c_double), ("rows", c_uint64)]


class es_progress(ctypes.Structure):
    _fields_ = [("epoch", c_int), ("epochs", c_int), ("rows", c_uint64), ("rows_total", c_uint64),
                ("rows_per_s", c_double), ("loss", c_double), ("phase", c_char_p),
                ("comm_bytes_per_step", c_double), ("comm_seconds", c_double)]


PROGRESS_FN = ctypes.CFUNCTYPE(None, POINTER(es_progress), c_void_p)


class es_train_params(ctypes.Structure):
    _fields_ = [("train_path", c_char_p), ("valid_path", c_char_p), ("valid_frac", c_double),
                ("reader", es_reader_params), ("model", c_char_p), ("dim", c_int),
                ("bottom", c_int * 8), ("n_bottom", c_int), ("top", c_int * 8), ("n_top", c_int),
                ("n_cross", c_int), ("norm_rows", c_int), ("pairs_only", c_int),
                ("storage", c_char_p), ("budget", c_double), ("storage_opts", c_char_p),
                ("epochs", c_int), ("batch", c_int), ("lr", c_float), ("emb_lr", c_float),
                ("optim", c_char_p), ("emb_optim", c_char_p), ("emb_l2", c_float), ("emb_l2_freq", c_float),
                ("emb_init_acc", c_float), ("emb_init_scale", c_float), ("emb_init_shift", c_float),
                ("ftrl_alpha", c_float), ("ftrl_beta", c_float), ("ftrl_l1", c_float), ("ftrl_l2", c_float),
                ("weight_decay", c_float), ("dropout", c_float), ("precision", c_char_p), ("qtrain", c_char_p),
                ("threads", c_int), ("seed", c_uint64), ("max_rows", c_uint64), ("out_path", c_char_p),
                ("command_line", c_char_p), ("checkpoint_every", c_int), ("checkpoint_path", c_char_p),
                ("resume", c_int), ("early_stop", c_int), ("eval_every", c_int), ("refit", c_int),
                ("stop_metric", c_char_p), ("test_path", c_char_p), ("progress", PROGRESS_FN),
                ("progress_ctx", c_void_p), ("comm", c_void_p), ("matryoshka", c_char_p), ("matryoshka_weights", c_char_p),
                ("rank_memory", c_double), ("shard_files", c_int), ("in_memory", c_int)]


class es_train_stage(ctypes.Structure):
    _fields_ = [("name", c_char * 16), ("seconds", c_double), ("result", c_char * 1024)]


class es_train_prefix(ctypes.Structure):
    _fields_ = [("dim", c_int), ("valid", es_metrics), ("test", es_metrics), ("emb_bytes", c_size_t)]


class es_train_result(ctypes.Structure):
    _fields_ = [("valid", es_metrics), ("train_loss", c_double), ("train_rows", c_uint64),
                ("emb_bytes", c_size_t), ("emb_param_bytes", c_size_t), ("emb_state_bytes", c_size_t),
                ("full_bytes", c_size_t), ("net_bytes", c_size_t), ("param_bytes", c_size_t),
                ("train_rows_per_s", c_double), ("eval_rows_per_s", c_double), ("seconds", c_double),
                ("threads", c_int), ("resumed", c_int), ("bad_lines", c_uint64), ("bad_report", c_char * 1024),
                ("test", es_metrics), ("n_evals", c_int), ("best_eval", c_int), ("best_epoch", c_int),
                ("best_rows", c_uint64), ("stopped_early", c_int), ("evals", es_metrics * 128),
                ("refit", c_int), ("refit_rows", c_uint64), ("ranks", c_int), ("comm_steps", c_uint64),
                ("comm_sparse_bytes_per_step", c_double), ("comm_dense_bytes_per_step", c_double),
                ("comm_seconds", c_double), ("comm_broken", c_int),
                ("rank_table_bytes", c_size_t), ("rank_table_bytes_max", c_size_t),
                ("rows_dropped", c_uint64), ("n_stages", c_int),
                ("stages", es_train_stage * 4), ("n_prefixes", c_int), ("prefixes", es_train_prefix * 8),
                ("in_memory_bytes", c_uint64)]


class es_index_params(ctypes.Structure):
    _fields_ = [("kind", c_int), ("metric", c_int), ("dim", c_int), ("search_dim", c_int), ("pca", c_int),
                ("rerank", c_int), ("binary_bits", c_int), ("itq_iters", c_int), ("pq_m", c_int),
                ("pq_bits", c_int), ("opq_iters", c_int), ("hnsw_m", c_int), ("ef_construction", c_int),
                ("ef_search", c_int), ("order", c_int), ("nlist", c_int), ("nprobe", c_int),
                ("ivf_codes", c_int), ("kmeans_iters", c_int), ("train_max", c_size_t), ("seed", c_uint64),
                ("threads", c_int)]


class es_filter(ctypes.Structure):
    _fields_ = [("attr", c_int), ("n_values", c_int), ("values", POINTER(c_int32))]


class es_vec_read_params(ctypes.Structure):
    _fields_ = [("format", c_int), ("dim", c_int), ("tensor", c_char_p), ("max_rows", c_size_t),
                ("sets_by_label", c_int), ("set_size", c_int)]


class es_vecs(ctypes.Structure):
    _fields_ = [("n", c_size_t), ("dim", c_int), ("x", POINTER(c_float)), ("i", POINTER(c_int32)),
                ("labels", POINTER(c_char_p)), ("n_sets", c_size_t), ("set_off", POINTER(c_size_t)),
                ("priv_", c_void_p)]


class es_diag_params(ctypes.Structure):
    _fields_ = [("k", c_int), ("sample", c_size_t), ("seed", c_uint64), ("top_k", c_int), ("dead_rel", c_double),
                ("dup_cos", c_double), ("threads", c_int)]


class es_diag_spectrum(ctypes.Structure):
    _fields_ = [("n", c_size_t), ("d", c_int), ("m", c_int), ("sv", POINTER(c_double)), ("method", c_char_p),
                ("erank", c_double), ("erank_centered", c_double), ("nuclear", c_double), ("frobenius", c_double),
                ("nuclear_norm", c_double), ("condition", c_double), ("rank", c_int), ("top_k", c_int),
                ("energy_top_k", c_double), ("k90", c_int), ("k99", c_int)]


class es_diag_id(ctypes.Structure):
    _fields_ = [("n_used", c_size_t), ("k", c_int), ("twonn", c_double), ("twonn_lo", c_double),
                ("twonn_hi", c_double), ("twonn_fit", c_double), ("mle", c_double), ("mle_lo", c_double),
                ("mle_hi", c_double), ("mle_lb", c_double), ("local_q", c_double * 5)]


class es_diag_rows(ctypes.Structure):
    _fields_ = [("n", c_size_t), ("norm_min", c_double), ("norm_median", c_double), ("norm_mean", c_double),
                ("norm_max", c_double), ("zero", c_size_t), ("dead", c_size_t), ("sampled", c_size_t),
                ("dup_exact", c_size_t), ("dup_near", c_size_t), ("max_cos_median", c_double)]


class es_diag_report(ctypes.Structure):
    _fields_ = [("spec", es_diag_spectrum), ("rows", es_diag_rows), ("id", es_diag_id), ("id_ok", c_int),
                ("id_note", c_char * 160), ("vendi", c_double), ("vendi_ok", c_int), ("vendi_note", c_char * 160),
                ("seconds", c_double)]


# Structures whose layout tests/test_layout.py checks against the header.
STRUCTS = [es_err, es_batch, es_reader_params, es_metrics, es_progress, es_train_params, es_train_result,
           es_index_params, es_filter, es_vec_read_params, es_vecs, es_diag_params, es_diag_spectrum, es_diag_id,
           es_diag_rows, es_diag_report]


def _candidates():
    """Where the library is looked for, in order (docs/python.md)."""
    env = os.environ.get("EMBSTORE_LIB")
    if env:
        return [env], True
    here = os.path.dirname(os.path.abspath(__file__))
    out = []
    try:  # written by setup.py at install time: the build the package was installed from
        from . import _libpath  # type: ignore
        out.append(_libpath.LIBRARY)
    except ImportError:
        pass
    out.append(os.path.join(here, "libembstore.so"))
    out.append(os.path.normpath(os.path.join(here, "..", "..", "build", "libembstore.so")))  # in-tree: python/embstore
    found = ctypes.util.find_library("embstore")  # installed with `make install` (ldconfig)
    out.append(found or "libembstore.so.0")
    return out, False


def _load():
    paths, from_env = _candidates()
    errors = []
    for p in paths:
        if not from_env and os.path.sep in p and not os.path.exists(p):
            errors.append(f"{p}: not found")
            continue
        try:
            return ctypes.CDLL(p), p
        except OSError as e:
            errors.append(f"{p}: {e}")
    raise ImportError("embstore: cannot load libembstore.so (run `make` in the repository, or set EMBSTORE_LIB "
                      "to the library's path); tried:\n  " + "\n  ".join(errors))


lib, LIBRARY_PATH = _load()


def _fn(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


P = POINTER
ES = type("ES", (), {})()  # namespace of the declared functions
for _name, _res, *_args in [
    ("es_strerror", c_char_p, c_int),
    ("es_key", c_uint64, c_char_p, c_size_t),
    ("es_transform_num", c_float, c_double),
    ("es_set_threads", c_int, c_int),
    ("es_batch_alloc", c_int, P(es_batch), c_int, c_int, c_int, c_size_t),
    ("es_batch_free", None, P(es_batch)),
    ("es_reader_open", c_int, P(c_void_p), c_char_p, P(es_reader_params), P(es_err)),
    ("es_reader_free", None, c_void_p),
    ("es_reader_next", c_int, c_void_p, P(es_batch)),
    ("es_reader_errmsg", c_char_p, c_void_p),
    ("es_reader_n_dense", c_int, c_void_p),
    ("es_reader_n_fields", c_int, c_void_p),
    ("es_train_params_default", es_train_params),
    ("es_train", c_int, P(es_train_params), P(es_train_result), P(es_err)),
    ("es_model_load", c_int, P(c_void_p), c_char_p, c_uint, P(es_err)),
    ("es_model_free", None, c_void_p),
    ("es_model_errmsg", c_char_p, c_void_p),
    ("es_model_meta", c_char_p, c_void_p, c_char_p),
    ("es_model_reader_params", es_reader_params, c_void_p),
    ("es_model_n_fields", c_int, c_void_p),
    ("es_model_n_dense", c_int, c_void_p),
    ("es_model_emb_dim", c_int, c_void_p),
    ("es_model_predict_batch", c_int, c_void_p, P(es_batch), P(c_float)),
    ("es_model_predict_file", c_int, c_void_p, c_char_p, c_int, c_char_p, P(c_uint64)),
    ("es_model_predict_mem", c_int, c_void_p, c_char_p, c_size_t, c_char_p, c_int, P(c_float), c_size_t,
     P(c_size_t)),
    ("es_model_set_predict_digits", c_int, c_void_p, c_int),
    ("es_model_eval_file", c_int, c_void_p, c_char_p, P(es_metrics)),
    ("es_model_train_batch", c_int, c_void_p, P(es_batch), P(c_double)),
    ("es_model_embedding", c_int, c_void_p, c_int, c_uint64, P(c_float)),
    ("es_model_save", c_int, c_void_p, c_char_p, c_uint),
    ("es_model_quantize", c_int, c_void_p, c_char_p, P(es_err)),
    ("es_model_set_prefix", c_int, c_void_p, c_int),
    ("es_model_slice", c_int, c_void_p, c_int, P(c_void_p), P(es_err)),
    ("es_model_n_tensors", c_int, c_void_p),
    ("es_model_tensor", c_int, c_void_p, c_int, P(c_char_p), P(c_char_p), P(c_int), P(c_uint64), P(c_void_p)),
    ("es_index_params_default", es_index_params),
    ("es_index_create", c_int, P(c_void_p), P(es_index_params), P(es_err)),
    ("es_index_train", c_int, c_void_p, c_size_t, P(c_float)),
    ("es_index_add", c_int, c_void_p, c_size_t, P(c_float)),
    ("es_index_set_attrs", c_int, c_void_p, c_size_t, c_int, P(c_int32)),
    ("es_index_search_ex", c_int, c_void_p, c_size_t, P(c_float), c_int, P(es_filter), P(c_int64), P(c_float),
     P(es_err)),
    ("es_index_set", c_int, c_void_p, c_char_p, c_double),
    ("es_index_size", c_size_t, c_void_p),
    ("es_index_dim", c_int, c_void_p),
    ("es_index_params_of", P(es_index_params), c_void_p),
    ("es_index_bytes", c_size_t, c_void_p),
    ("es_index_save", c_int, c_void_p, c_char_p),
    ("es_index_load", c_int, P(c_void_p), c_char_p, P(es_err)),
    ("es_index_free", None, c_void_p),
    ("es_index_errmsg", c_char_p, c_void_p),
    ("es_index_kind_name", c_char_p, c_int),
    ("es_metric_name", c_char_p, c_int),
    ("es_index_kind_parse", c_int, c_char_p, P(c_int)),
    ("es_metric_parse", c_int, c_char_p, P(c_int)),
    ("es_vec_read_params_default", es_vec_read_params),
    ("es_vecs_read", c_int, P(es_vecs), c_char_p, P(es_vec_read_params), P(es_err)),
    ("es_vecs_free", None, P(es_vecs)),
    ("es_diag_params_default", es_diag_params),
    ("es_diag_run", c_int, P(c_float), c_size_t, c_int, P(es_diag_params), P(es_diag_report), P(es_err)),
    ("es_diag_report_free", None, P(es_diag_report)),
]:
    setattr(ES, _name, _fn(_name, _res, *_args))
