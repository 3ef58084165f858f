# sluice build. `make` builds build/sluice and build/loadgen; `make check`
# runs the tests against local servers; `make demo` runs a demo ingest;
# `make bench` / `make bench-quick` run the benchmarks.
# Every target that needs packages runs tools/deps.sh first (quick when
# nothing is missing), so a fresh Debian 12 machine needs no manual step.

CC ?= cc
BUILD ?= build
PKGS := liburing librabbitmq libpq openssl

WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
	-Wformat=2 -Wno-format-nonliteral -Wundef
CFLAGS ?= -O2 -g
ALL_CFLAGS = -std=gnu11 $(WARN) $(CFLAGS) -D_GNU_SOURCE -pthread -Isrc -MMD -MP \
	$(shell pkg-config --cflags $(PKGS)) \
	-DLIBURING_VERSION='"$(shell pkg-config --modversion liburing)"'
# mimalloc first, so that it interposes malloc for everything after it.
LIBS = -lmimalloc $(shell pkg-config --libs $(PKGS)) -pthread -lm

LIB_SRCS := $(filter-out src/main.c,$(wildcard src/*.c src/*/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
LOADGEN_SRCS := $(wildcard bench/loadgen/*.c)

.PHONY: all deps check soak demo bench bench-quick static fuzz sanitize image-test servers-start servers-stop clean

all: $(BUILD)/sluice $(BUILD)/loadgen

deps:
	@tools/deps.sh

$(BUILD)/obj/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libsluice.a: $(LIB_OBJS)
	$(AR) rcs $@ $^

$(BUILD)/sluice: $(BUILD)/obj/src/main.o $(BUILD)/libsluice.a
	$(CC) $(ALL_CFLAGS) $^ -o $@ $(LIBS)

$(BUILD)/loadgen: $(LOADGEN_SRCS) | deps
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 $(WARN) $(CFLAGS) -D_GNU_SOURCE $^ -o $@ -lrabbitmq -lpthread -lm

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libsluice.a
	@mkdir -p $(dir $@) $(BUILD)/obj/tests
	$(CC) $(ALL_CFLAGS) -MF $(BUILD)/obj/tests/$*.d $(filter %.c %.a,$^) -o $@ $(LIBS)

# check: the unit and integration tests (the static build is part of it:
# test_emptyroot runs it as distroless would), a short run of each fuzz
# target, and the tests again under ASan/UBSan: all in tests/run.sh.
check: all $(UNIT_BINS) static
	@tools/sanitize.sh
	@tools/servers.sh start
	@tests/run.sh

# soak: the fault-injection test's long form, SLUICE_SOAK_SECONDS (default 600) of faults on its own servers.
soak: all
	@SLUICE_SOAK_SECONDS=$${SLUICE_SOAK_SECONDS:-600} /usr/bin/python3 -u tests/integration/test_faults.py

# libFuzzer targets tests/fuzz/fuzz_*.c (clang, ASan+UBSan) into build/fuzz,
# 10 minutes each (FUZZ_SECONDS=N to change).
fuzz: | deps
	@tests/fuzz/run.sh --long

# sluice and the unit tests under ASan/UBSan/LSan (build/asan), then the
# unit and integration tests with them (the asan/* tests of check).
sanitize: | deps
	@tools/sanitize.sh
	@tools/servers.sh start
	@tests/run.sh asan/

# build/static/sluice and loadgen, fully static, from Debian sources (libpq,
# mimalloc) and Debian's static archives; pinned versions in tools/static.sh.
static: | deps
	@tools/static.sh

demo: all
	@tools/demo.sh

# Benchmarks: sluice against the broker's and PostgreSQL's limits and peer
# consumers, side by side in one run (bench/run.py; results in bench/results).
bench: all
	@tools/servers.sh start
	@/usr/bin/python3 bench/run.py --plot

bench-quick: all
	@tools/servers.sh start
	@/usr/bin/python3 bench/run.py --quick --plot

# image-test: Dockerfile.distroless built with podman from local stand-ins for
# its base images (debootstrap'd debian:bookworm, a distroless/static root; no
# registry), then sluice from the image drains the local servers under podman's
# default seccomp profile (epoll) and deploy/seccomp-io_uring.json (io_uring);
# also checks compose.yaml. Cache and podman storage in build/image.
image-test: all
	@tools/servers.sh start
	@tools/image-test.sh

servers-start:
	@tools/servers.sh start

servers-stop:
	@tools/servers.sh stop

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
