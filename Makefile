# gpt2.nvim - build, test, bench, weights, demo.
#
# `make` builds build/gpt2 (the helper and CLI) from native/ with gcc. The
# libraries come from Debian: cJSON (JSON), PCRE2 (the tokenizer's Unicode
# regex), OpenBLAS (GEMM), libuv and msgpack-c (the rpc helper). `make deps`
# installs whatever is missing when run as root and prints the apt-get line
# otherwise; `make test` and `make demo` run it first.

CC      ?= gcc
PYTHON  ?= /usr/bin/python3
BUILD   := build
PKGS    := openblas libpcre2-8 libcjson libuv msgpack
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -Wall -Wextra -Wshadow -Wno-unused-parameter -Wno-psabi -pthread -MMD -MP
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
LDLIBS  = $(PKG_LIBS) -lm -pthread -ldl

# CUDA: the backend is a shared object beside the binary, built whenever nvcc
# is found (it is on every machine here, so every CI run compiles and links
# it); build/gpt2 itself never links CUDA and falls back to the CPU.
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90
KERNELS := $(wildcard native/kernels/*.cu)
CUDA_LIB := $(if $(NVCC),$(BUILD)/gpt2-cuda.so)

SRC := native/common.c native/safetensors.c native/tokenizer.c native/model.c \
       native/sampler.c native/generate.c native/cpu/pool.c native/cpu/forward.c \
       native/cpu/ops.c native/cpu/packed.c native/cpu/amx.c native/cpu/topk.c native/log.c native/msgguard.c native/rpc.c native/reply.c \
       native/sched.c native/server.c native/device.c native/gpu.c
OBJ := $(SRC:%.c=$(BUILD)/%.o)
UNIT_SRC := tests/unit/test_main.c

.PHONY: all help deps deps-test test test-unit test-py test-asan test-nvim test-gpu fuzz bench bench-gpu \
        weights demo doc fixtures clean

all: $(BUILD)/gpt2 $(CUDA_LIB) ## build build/gpt2 (and build/gpt2-cuda.so with nvcc)

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | sed 's/:.*## /\t/' | expand -t 14

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -c $< -o $@

# the hot loops: let gcc vectorise fully and fuse multiply-adds (one rounding
# instead of two; no fast-math: sums keep their order)
$(BUILD)/native/cpu/%.o: CFLAGS += -O3 -ffp-contract=fast

$(BUILD)/gpt2: $(OBJ) $(BUILD)/native/main.o
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/kernels/%.o: native/kernels/%.cu native/kernels/common.cuh native/kernels/kernels.h
	@mkdir -p $(dir $@)
	$(NVCC) -O3 -std=c++17 -Xcompiler -fPIC $(CUDA_ARCH) -c $< -o $@

$(BUILD)/cuda.o: native/cuda.c native/gpu.h native/kernels/kernels.h native/model.h
	$(CC) $(CFLAGS) -fPIC -I$(CUDA_HOME)/include $(PKG_CFLAGS) -c $< -o $@

$(BUILD)/gpt2-cuda.so: $(BUILD)/cuda.o $(KERNELS:native/kernels/%.cu=$(BUILD)/kernels/%.o)
	$(CC) -shared -o $@ $^ -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++

$(BUILD)/test_unit: $(OBJ) $(BUILD)/tests/unit/test_main.o $(BUILD)/tests/unit/test_kernels.o $(BUILD)/tests/unit/test_topk.o
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/bench/bench_cpu.o: CFLAGS += -O3
$(BUILD)/bench_cpu: $(OBJ) $(BUILD)/tests/bench/bench_cpu.o
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# The same helper under AddressSanitizer + UndefinedBehaviorSanitizer, each
# file with the arithmetic of the release build: the CPU kernels fuse
# multiply-adds there too, so both builds give the same bits (tests compare
# routes bit for bit, and GNU vector code is only fused where gcc may fuse).
ASAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -Wno-psabi
ASAN_OBJ := $(patsubst %.c,$(BUILD)/asan/%.o,$(SRC) native/main.c)
$(BUILD)/asan/%.o: %.c $(wildcard native/*.h native/cpu/*.h)
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -Wall -pthread $(ASAN_FLAGS) $(PKG_CFLAGS) -c $< -o $@
$(BUILD)/asan/native/cpu/%.o: ASAN_FLAGS += -O3 -ffp-contract=fast
$(BUILD)/asan/gpt2: $(ASAN_OBJ)
	$(CC) -pthread $(ASAN_FLAGS) -o $@ $^ $(LDLIBS)

# libFuzzer target for the message decoder (msgguard + msgpack-c), clang only.
FUZZ_SECONDS ?= 20
$(BUILD)/fuzz/fuzz_msg: tests/fuzz/fuzz_msg.c native/msgguard.c native/common.c native/msgguard.h
	@mkdir -p $(dir $@)
	clang -g -O1 -fsanitize=fuzzer,address,undefined $(filter %.c,$^) -lmsgpackc -o $@

deps: ## install the build dependencies (Debian packages) if missing
	@scripts/deps.sh build

deps-test: ## install the test dependencies (Debian packages) if missing
	@scripts/deps.sh test

test: deps-test ## build and run every test (what CI runs)
	@$(MAKE) --no-print-directory all $(BUILD)/test_unit $(BUILD)/asan/gpt2 $(BUILD)/fuzz/fuzz_msg
	@if [ -z "$(NVCC)" ]; then echo "SKIP cuda build: nvcc not found"; fi
	@$(MAKE) --no-print-directory test-unit test-py test-nvim test-asan fuzz

test-unit: $(BUILD)/test_unit ## C unit tests
	$(BUILD)/test_unit data/gpt2-tokenizer

test-py: $(BUILD)/gpt2 ## oracle, checkpoint, CLI and rpc tests (pytest)
	$(PYTHON) -m pytest -q -rs tests

test-gpu: all ## GPU results against the CPU path (needs a GPU; fails without one)
	GPT2_REQUIRE_GPU=1 $(PYTHON) -m pytest -v -s -rs tests/test_gpu.py

test-asan: $(BUILD)/asan/gpt2 ## the rpc suite and the CPU formats against the ASan/UBSan build
	GPT2_BIN=$(BUILD)/asan/gpt2 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 $(PYTHON) -m pytest -q tests/test_serve.py tests/test_cpu_formats.py

test-nvim: $(BUILD)/gpt2 ## the plugin in a real headless Neovim against the real helper
	nvim --headless -u NONE -i NONE --cmd 'set rtp^=.' -S tests/nvim/run.lua

doc: ## regenerate the options section of doc/gpt2.txt from the config schema
	nvim --headless -u NONE -i NONE -c 'set rtp^=.' -c 'luafile scripts/gen-doc.lua' -c q

fuzz: $(BUILD)/fuzz/fuzz_msg ## fuzz the message decoder for FUZZ_SECONDS (default 20)
	@mkdir -p $(BUILD)/fuzz/corpus
	@$(BUILD)/fuzz/fuzz_msg -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -rss_limit_mb=1024 \
	    -artifact_prefix=$(BUILD)/fuzz/ -print_final_stats=1 $(BUILD)/fuzz/corpus \
	    tests/fuzz/corpus > $(BUILD)/fuzz/log 2>&1; rc=$$?; tail -n 5 $(BUILD)/fuzz/log; \
	    if [ $$rc -eq 0 ]; then echo "fuzz: 1 passed, 0 failed"; else echo "fuzz: 0 passed, 1 failed"; fi; exit $$rc

bench: deps $(BUILD)/gpt2 $(BUILD)/bench_cpu ## timings on a random gpt2-shaped (124M) checkpoint, and a typing session
	@scripts/bench.sh

bench-gpu: deps all $(BUILD)/bench_cpu ## GPU figures: kernels, the helper and transformers on gpt2/gpt2-medium shapes
	$(PYTHON) tests/bench/bench_gpu.py

weights: ## download a checkpoint: make weights [MODEL=gpt2|gpt2-medium|...]
	@scripts/fetch-weights.sh $(or $(MODEL),gpt2)

demo: deps $(BUILD)/gpt2 ## open Neovim on a sample text with the plugin and the best model present
	@scripts/demo.sh

fixtures: ## regenerate the oracle fixtures (needs torch + transformers)
	@scripts/make-fixtures.sh

clean: ## remove build/
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
