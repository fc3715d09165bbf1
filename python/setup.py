"""Build hook: record where libembstore.so is, so an installed package finds it.

The package is pure Python (ctypes); it needs the shared library at run
time.  At build time this writes embstore/_libpath.py (into the build
directory only, never into the source tree) holding the absolute path of
  $EMBSTORE_LIB, when set, else
  ../build/libembstore.so next to this directory (the repository's `make`),
when that file exists.  At run time the package tries EMBSTORE_LIB, that
recorded path, a libembstore.so inside the package, the in-tree build, and
finally the system loader (`make install` + ldconfig).  docs/python.md.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPy(build_py):
    def run(self):
        super().run()
        lib = os.environ.get("EMBSTORE_LIB") or os.path.join(os.path.dirname(HERE), "build", "libembstore.so")
        if os.path.exists(lib):
            target = os.path.join(self.build_lib, "embstore", "_libpath.py")
            with open(target, "w") as f:
                f.write("# written by setup.py at install time\nLIBRARY = %r\n" % os.path.realpath(lib))
        else:
            self.announce("embstore: %s not found; the installed package will look for the library at run time "
                          "(EMBSTORE_LIB or the system loader)" % lib, level=3)


setup(cmdclass={"build_py": BuildPy})
