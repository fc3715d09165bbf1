#!/usr/bin/env bash
# tests/check_includes.sh — enforce the layering of src/ (docs/architecture.md).
#
# Each folder of src/ may include headers only from the folders listed for
# it below (its own folder is always allowed, and so is the public header
# embstore.h).  tools/ (the CLI) is a client of the public API: it may
# include embstore.h and its own headers only.  include/embstore.h includes
# no project header at all.
#
# An include is resolved as the compiler does with -Iinclude -Isrc: a name
# without a slash that exists next to the including file is that file;
# otherwise include/<name>, then src/<name>.  Both "..." and <...> forms are
# checked (a <core/core.h> would still reach into src/); system headers
# resolve to nothing and are ignored.
#
# Prints one line per violation,
#     file:line: <folder> may not include <target>
# and exits 1 if there is any (0 otherwise).  Run from anywhere:
#     bash tests/check_includes.sh
set -uo pipefail
cd "$(dirname "$0")/.."

# folder -> the other src/ folders it may include (embstore.h is always fine)
declare -A ALLOW=(
    [core]=""
    [optim]="core"
    [data]="core format"
    [format]="core"
    [storage]="core optim format"
    [model]="core optim format"
    [index]="core format"
    [train]="core optim data format storage model index"
    [diag]="core optim data format storage model index train"
    [serve]="" # the HTTP server: a client of embstore.h only, like tools/
)

violations=0
report() { # file line folder target
    echo "$1:$2: $3 may not include $4"
    violations=$((violations + 1))
}

# The folder of src/ (or "include", "tools") a header resolves to, or "" for
# a system header.  $1 = including file, $2 = include name.
resolve() {
    local from=$1 name=$2
    if [[ $name != */* && -f "$(dirname "$from")/$name" ]]; then
        local d=$(dirname "$from")
        case $d in
            src/*) echo "${d#src/}" ;;
            *) echo "$d" ;;
        esac
        return
    fi
    if [[ -f "include/$name" ]]; then echo "include"; return; fi
    if [[ -f "src/$name" ]]; then
        local first=${name%%/*}
        [[ $first == "$name" ]] && echo "src" || echo "$first"
        return
    fi
    echo ""
}

# Every #include line of a file as "line<TAB>name".
includes() {
    grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"][^>"]+[>"]' "$1" |
        sed -E 's/^([0-9]+):[[:space:]]*#[[:space:]]*include[[:space:]]*[<"]([^>"]+)[>"].*/\1\t\2/'
}

shopt -s nullglob
for file in src/*/*.[ch]; do
    folder=${file#src/}
    folder=${folder%%/*}
    if [[ -z ${ALLOW[$folder]+set} ]]; then
        report "$file" 1 "$folder" "anything (src/$folder is not in the table of tests/check_includes.sh)"
        continue
    fi
    while IFS=$'\t' read -r line name; do
        [[ -z $line ]] && continue
        target=$(resolve "$file" "$name")
        [[ -z $target || $target == "$folder" ]] && continue
        if [[ $target == include ]]; then
            [[ $name == embstore.h ]] && continue
        fi
        ok=0
        for a in ${ALLOW[$folder]}; do [[ $a == "$target" ]] && ok=1; done
        [[ $ok == 1 ]] || report "$file" "$line" "$folder" "$name"
    done < <(includes "$file")
done
for file in src/*.[ch]; do report "$file" 1 "src" "anything (sources belong in a folder of src/)"; done

for file in tools/*.[ch]; do
    while IFS=$'\t' read -r line name; do
        [[ -z $line ]] && continue
        target=$(resolve "$file" "$name")
        [[ -z $target || $target == tools ]] && continue
        [[ $target == include && $name == embstore.h ]] && continue
        [[ $target == serve && $name == serve/serve.h ]] && continue # cmd_serve: the server, a peer client
        report "$file" "$line" "tools" "$name"
    done < <(includes "$file")
done

for file in include/*.h; do
    while IFS=$'\t' read -r line name; do
        [[ -z $line ]] && continue
        target=$(resolve "$file" "$name")
        [[ -z $target ]] && continue
        report "$file" "$line" "include" "$name"
    done < <(includes "$file")
done

if [ "$violations" -gt 0 ]; then
    echo "$violations include(s) break the layering (table: docs/architecture.md, tests/check_includes.sh)"
    exit 1
fi
exit 0
