# embstore — plain Makefile.
#
#   make            library + CLI (build/embstore, build/libembstore.a,
#                   build/libembstore.so: exports only what embstore.h declares)
#   make install    header, both libraries and embstore.pc under PREFIX
#                   (default /usr/local; DESTDIR is honoured)
#   make test       quick test tier (build/test_runner)
#   make test-full  quick + slow tiers
#   make check      everything CI runs: all tiers, SAN=1 tier, fuzzers
#   make demo       train the default model on the bundled Criteo sample
#   make bench      speed/accuracy figures against peers (see docs/)
#   make fuzz       build libFuzzer targets (clang) and run each briefly
#   make deps       install the Debian packages the build and tests need
#                   (make bench installs its peers, PyTorch and faiss, itself)
#
# Options: SAN=1 (ASan+UBSan, own build dir), NATIVE=1 (-march=native),
#          NO_OMP=1 (no OpenMP), DEBUG=1 (-O0),
#          MPI=1 / MPI=0 (build/embstore trains across processes under
#          mpirun, docs/scale.md; default: 1 when $(MPICC) is found).  Only
#          the CLI's communicator (tools/mpi/comm.c) is compiled and linked
#          with mpicc: the libraries never depend on MPI.

CC      ?= cc
BUILD   ?= build
CSTD    := -std=c11 -D_GNU_SOURCE
WARN    := -Wall -Wextra -Wshadow -Wno-unused-parameter -Wstrict-prototypes -Wvla
OPT     := -O2 -g
ifeq ($(DEBUG),1)
OPT     := -O0 -g
endif
ifeq ($(NATIVE),1)
OPT     += -march=native
endif
OMP     := -fopenmp
ifeq ($(NO_OMP),1)
OMP     :=
endif
ifeq ($(SAN),1)
BUILD   := build/san
OPT     := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
SANLD   := -fsanitize=address,undefined
endif

CPPFLAGS := -Iinclude -Isrc -I/usr/include/x86_64-linux-gnu $(EXTRA_CPPFLAGS)
# -fPIC: the same objects make the static and the shared library.
# -fvisibility=hidden: only functions marked ES_API (the ones embstore.h
# declares) are exported from libembstore.so.
# -fno-math-errno: sqrtf and friends need not set errno (nothing reads it
# after a math call), so they compile to one instruction and loops around
# them vectorize; the results are the same IEEE values.
CFLAGS   := $(CSTD) $(WARN) $(OPT) $(OMP) -fno-math-errno -pthread -fPIC -fvisibility=hidden $(EXTRA_CFLAGS)
LDLIBS   := -lopenblas -llapacke -lxxhash -lz -lmicrohttpd -lcjson -lm -lpthread
LDFLAGS  := $(OMP) $(SANLD) -pthread $(EXTRA_LDFLAGS)

# MPI: the CLI's communicator over MPI, or the stand-in without it.
MPICC   ?= mpicc
ifeq ($(MPI),)
MPI     := $(shell command -v $(MPICC) >/dev/null 2>&1 && echo 1 || echo 0)
endif
ifeq ($(MPI),1)
CLI_MPI_OBJ := $(BUILD)/tools/mpi/comm.o
LINK_CLI    := $(MPICC)
else
CLI_MPI_OBJ := $(BUILD)/tools/mpi/none.o
LINK_CLI    := $(CC)
endif

LIB_SRC  := $(sort $(wildcard src/*/*.c))
TOOL_SRC := $(sort $(wildcard tools/*.c))
TEST_SRC := $(sort $(wildcard tests/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
TOOL_OBJ := $(TOOL_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
DEPS     := $(LIB_OBJ:.o=.d) $(TOOL_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(CLI_MPI_OBJ:.o=.d)

SO_MAJOR := 0
SO_VER   := 0.1.0
SONAME   := libembstore.so.$(SO_MAJOR)
PREFIX   ?= /usr/local
LIBDIR   ?= $(PREFIX)/lib

.PHONY: all test test-full check demo bench fuzz deps clean install examples
all: $(BUILD)/embstore $(BUILD)/libembstore.a $(BUILD)/libembstore.so

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libembstore.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# The shared library: soname libembstore.so.0, file libembstore.so.0.1.0,
# and the two links a build and a loader look for.
$(BUILD)/libembstore.so.$(SO_VER): $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--no-undefined $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/libembstore.so: $(BUILD)/libembstore.so.$(SO_VER)
	ln -sf libembstore.so.$(SO_VER) $(BUILD)/$(SONAME)
	ln -sf libembstore.so.$(SO_VER) $@

$(BUILD)/tools/mpi/comm.o: tools/mpi/comm.c
	@mkdir -p $(dir $@)
	$(MPICC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

# The link names the flavour it was built with, so that switching MPI=
# relinks.
$(BUILD)/.mpi-$(MPI):
	@mkdir -p $(BUILD)
	@rm -f $(BUILD)/.mpi-*
	@touch $@

$(BUILD)/embstore: $(TOOL_OBJ) $(CLI_MPI_OBJ) $(BUILD)/libembstore.a $(BUILD)/.mpi-$(MPI)
	$(LINK_CLI) $(LDFLAGS) -o $@ $(TOOL_OBJ) $(CLI_MPI_OBJ) $(BUILD)/libembstore.a $(LDLIBS)

# Example programs: clients of the public header, linked to the shared
# library (found next to them through the rpath); the tests run them.
EXAMPLES := $(patsubst examples/%.c,$(BUILD)/examples/%,$(wildcard examples/*.c))
examples: $(EXAMPLES)
$(BUILD)/examples/%: examples/%.c include/embstore.h $(BUILD)/libembstore.so
	@mkdir -p $(dir $@)
	$(CC) -Iinclude $(CSTD) $(WARN) $(OPT) -o $@ $< -L$(BUILD) -lembstore -Wl,-rpath,'$$ORIGIN/..' $(SANLD)

$(BUILD)/test_runner: $(TEST_OBJ) $(BUILD)/libembstore.a $(BUILD)/embstore $(EXAMPLES)
	$(CC) $(LDFLAGS) -o $@ $(TEST_OBJ) $(BUILD)/libembstore.a $(LDLIBS)

$(BUILD)/bench_system: bench/system.c $(BUILD)/libembstore.a
	$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $< $(BUILD)/libembstore.a $(LDFLAGS) $(LDLIBS)

# Tests run the CLI as $ES_BIN (the binary of this build flavour).
test: $(BUILD)/test_runner
	ES_BIN=$(BUILD)/embstore $(BUILD)/test_runner $(T)

test-full: $(BUILD)/test_runner
	ES_BIN=$(BUILD)/embstore $(BUILD)/test_runner --full $(T)

check:
	bash tests/check.sh

demo: $(BUILD)/embstore
	$(BUILD)/embstore train data/criteo_kaggle_train_first10k.tsv --valid-frac 0.2 \
	    --model dlrm --storage unified --budget 1/10 --chunks 4 --epochs 1 --seed 1

bench: all $(BUILD)/bench_system
	bash .ci/deps.sh bench
	ES_BIN=$(BUILD)/embstore bash bench/run.sh

fuzz:
	bash fuzz/run.sh

deps:
	bash .ci/deps.sh

install: all
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(LIBDIR)/pkgconfig
	install -m 644 include/embstore.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(BUILD)/libembstore.a $(DESTDIR)$(LIBDIR)/
	install -m 755 $(BUILD)/libembstore.so.$(SO_VER) $(DESTDIR)$(LIBDIR)/
	ln -sf libembstore.so.$(SO_VER) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf libembstore.so.$(SO_VER) $(DESTDIR)$(LIBDIR)/libembstore.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@VERSION@|$(SO_VER)|' \
	    embstore.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/embstore.pc

clean:
	rm -rf build

-include $(DEPS)
