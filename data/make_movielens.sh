#!/bin/sh
# make_movielens.sh — build data/ml-latest-small.csv from GroupLens
# MovieLens ml-latest-small (ratings.csv + movies.csv), deterministically.
#
#   sh data/make_movielens.sh [SRC_DIR] [OUT]
#   SRC_DIR default: /work/shared/data/movielens/ml-latest-small
#   OUT     default: data/ml-latest-small.csv (relative to the repo root)
#
# Output: CSV with LF line endings and the header
#   rating,userId,movieId,genres
# one row per rating, genres pipe-separated (e.g. Adventure|Animation),
# rows ordered by timestamp with ties kept in ratings.csv order (a stable
# sort), so the last 20% of the file are the most recent ratings and make
# an honest time-based validation split.  The timestamp itself is left out.
#
# Input notes: both files have CRLF line endings; in movies.csv only the
# title can be quoted or contain commas, so movieId is the text before the
# first comma and genres the text after the last one.
set -eu
LC_ALL=C
export LC_ALL

here=$(cd "$(dirname "$0")" && pwd)
src=${1:-/work/shared/data/movielens/ml-latest-small}
out=${2:-$here/ml-latest-small.csv}

for f in ratings.csv movies.csv; do
    if [ ! -r "$src/$f" ]; then
        echo "make_movielens.sh: cannot read $src/$f" >&2
        exit 1
    fi
done

tmp="$out.tmp.$$"
trap 'rm -f "$tmp" "$tmp.body"' EXIT INT TERM

# Join: movies first (genres by movieId), then ratings.  Each output line is
# prefixed with "timestamp<TAB>input line number<TAB>" for the stable sort.
awk -v FS=',' '
    { sub(/\r$/, "") }
    FNR == 1 { next }                      # headers
    FILENAME ~ /movies\.csv$/ {
        id = substr($0, 1, index($0, ",") - 1)
        g = $0
        sub(/^.*,/, "", g)
        genres[id] = g
        next
    }
    {
        if (NF != 4) { printf "make_movielens.sh: %s:%d: expected 4 fields, got %d\n", FILENAME, FNR, NF > "/dev/stderr"; bad = 1; exit 1 }
        if (!($2 in genres)) { printf "make_movielens.sh: %s:%d: movie %s not in movies.csv\n", FILENAME, FNR, $2 > "/dev/stderr"; bad = 1; exit 1 }
        printf "%s\t%d\t%s,%s,%s,%s\n", $4, FNR, $3, $1, $2, genres[$2]
    }
    END { if (bad) exit 1 }
' "$src/movies.csv" "$src/ratings.csv" >"$tmp.body"

{
    printf 'rating,userId,movieId,genres\n'
    sort -t "$(printf '\t')" -k1,1n -k2,2n "$tmp.body" | cut -f3-
} >"$tmp"
rm -f "$tmp.body"
mv "$tmp" "$out"
trap - EXIT INT TERM
echo "wrote $out ($(($(wc -l <"$out") - 1)) rows)"
