"""The ctypes structures of embstore._lib match include/embstore.h: a C
program compiled against the header prints sizeof and every offsetof, and
they must equal ctypes' figures.  Skipped when no C compiler is found."""
import ctypes
import os
import shutil
import subprocess

import pytest

from conftest import ROOT
from embstore import _lib


def test_struct_layouts_match_the_header(tmp):
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to read the header's layouts")
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "embstore.h"', 'int main(void) {']
    for s in _lib.STRUCTS:
        lines.append(f'    printf("{s.__name__} sizeof %zu\\n", sizeof({s.__name__}));')
        for f, _ in s._fields_:
            lines.append(f'    printf("{s.__name__} {f} %zu\\n", offsetof({s.__name__}, {f}));')
    lines += ['    return 0;', '}']
    src = tmp / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp / "layout"
    subprocess.run([cc, "-std=c11", "-I", os.path.join(ROOT, "include"), str(src), "-o", str(exe)], check=True)
    c = dict(line.rsplit(" ", 1) for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                              check=True).stdout.splitlines())
    bad = []
    for s in _lib.STRUCTS:
        if int(c[f"{s.__name__} sizeof"]) != ctypes.sizeof(s):
            bad.append(f"sizeof {s.__name__}: C {c[f'{s.__name__} sizeof']}, ctypes {ctypes.sizeof(s)}")
        for f, _ in s._fields_:
            if int(c[f"{s.__name__} {f}"]) != getattr(s, f).offset:
                bad.append(f"{s.__name__}.{f}: C {c[f'{s.__name__} {f}']}, ctypes {getattr(s, f).offset}")
    assert not bad, "\n".join(bad)

