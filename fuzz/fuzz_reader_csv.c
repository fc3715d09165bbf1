/*
 * fuzz_reader_csv.c — libFuzzer target for the delimited-text reader:
 * quoting, headers, column specs, multi-valued fields, label thresholds.
 * Byte 0: options (fuzz_reader_common.h); bits 5-7 pick one of eight
 * configurations below.  Seeds: fuzz/corpus/reader_csv/.
 */
#include "fuzz_reader_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int opt = data[0];
    es_reader_params p = es_reader_params_default();
    p.format = ES_FMT_CSV;
    fuzz_spec_order = 0;
    switch (opt >> 5) {
    case 0: break; /* header, first column label, rest categorical */
    case 1: p.columns = "0:label,1:num,2:cat,3:multi"; break;
    case 2: p.header = 0; p.columns = "0:label,1:num,2:cat,3:multi"; break;
    case 3: p.columns = "rating:label,userId:cat,movieId:cat,genres:multi"; p.label_threshold = 4; break;
    case 4: /* fields renumbered in spec order: cat (column 2) before multi (column 1) */
        p.header = 0; p.delim = '\t'; p.pool = ES_POOL_MEAN; p.columns = "2:cat,1:multi,0:label"; fuzz_spec_order = 1; break;
    case 5: p.has_label = 0; break;
    case 6: p.delim = ';'; p.multi_sep = ','; p.columns = "y:label,x:num,t:multi"; break;
    default: p.header = 0; p.has_label = 0; p.columns = "0:cat,1:num,2:ignore"; break;
    }
    fuzz_reader_run(data + 1, size - 1, "fuzz.csv", p, opt);
    return 0;
}
