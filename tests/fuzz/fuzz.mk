# Builds the libFuzzer targets tests/fuzz/fuzz_*.c into build/fuzz/ with
# clang, against the project's sources (every src/*.c and src/*/*.c except
# src/main.c), all compiled with AddressSanitizer and UndefinedBehaviorSanitizer.
# A standalone makefile: tests/fuzz/run.sh runs it as
#     make -f tests/fuzz/fuzz.mk [FUZZ_CC=clang-14] [targets]
# Targets: all (the fuzzers), seeds (regenerate tests/fuzz/corpus/ with
# tests/fuzz/gen_seeds.c), clean.
#
# The library objects are compiled with -fsanitize=fuzzer-no-link (coverage
# feedback, no main), the fuzzers are linked with -fsanitize=fuzzer. UBSan is
# made fatal (-fno-sanitize-recover) so that undefined behaviour is a crash
# the fuzzer keeps.
# mimalloc: src/version.c calls mi_version() (--version, which fuzz_config
# reaches), so -lmimalloc is linked, last. ASan's allocator is linked into the
# executable itself and so still interposes malloc for everything; mimalloc
# only supplies mi_version.

FUZZ_CC ?= $(shell command -v clang-14 >/dev/null 2>&1 && echo clang-14 || echo clang)
FUZZ_OUT ?= build/fuzz
PKGS := liburing librabbitmq libpq openssl

SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS := -std=gnu11 -g -O1 -D_GNU_SOURCE -pthread -Isrc -Wall -Wextra -Wno-unused-parameter \
	$(shell pkg-config --cflags $(PKGS)) \
	-DLIBURING_VERSION='"$(shell pkg-config --modversion liburing)"'
FUZZ_LIBS := -lrabbitmq -lpq -luring -lssl -lcrypto -lpthread -lm -lmimalloc

LIB_SRCS := $(filter-out src/main.c,$(wildcard src/*.c src/*/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(FUZZ_OUT)/obj/%.o)
TARGETS := $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
BINS := $(TARGETS:%=$(FUZZ_OUT)/%)

.PHONY: all seeds clean
# Keep the objects (make deletes intermediates of chained pattern rules).
.SECONDARY:
all: $(BINS)

# Dependency files are named .dep, not .d: the top-level Makefile includes
# every *.d under build/.
$(FUZZ_OUT)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(SAN) -fsanitize=fuzzer-no-link -MMD -MP -MF $(@:.o=.dep) \
		-c $< -o $@

$(FUZZ_OUT)/%: $(FUZZ_OUT)/obj/tests/fuzz/%.o $(LIB_OBJS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(SAN) -fsanitize=fuzzer $^ -o $@ $(FUZZ_LIBS)

# The seed generator: plain build, no sanitizers, only what it needs.
$(FUZZ_OUT)/gen_seeds: tests/fuzz/gen_seeds.c src/amqp/frame.c src/buf.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $^ -o $@ -lrabbitmq

seeds: $(FUZZ_OUT)/gen_seeds
	$(FUZZ_OUT)/gen_seeds tests/fuzz/corpus

clean:
	rm -rf $(FUZZ_OUT)

-include $(shell find $(FUZZ_OUT)/obj -name '*.dep' 2>/dev/null)
