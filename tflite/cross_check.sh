#!/usr/bin/env bash
# The kernels for Android arm64, checked on an x86-64 machine:
#   1. cross-compiled with clang (--target=aarch64-linux-gnu: this machine has no NDK
#      sysroot for aarch64-linux-android), warnings as errors: the library and
#      run_model (LiteRT's C API as a JNI layer calls it);
#   2. the fuzz test of that clang build run under user-mode emulation (qemu-aarch64);
#   3. the fuzz test built by gcc with AddressSanitizer + UBSan (this clang has no
#      aarch64 sanitizer runtime) under qemu-aarch64, leak checking off (LeakSanitizer
#      cannot run under emulation).
# Needs clang, gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user-static:
#   apt-get install clang gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
#
#   tflite/cross_check.sh [ITERATIONS]     (default 1000 fuzz cases per build)
set -euo pipefail
cd "$(dirname "$0")"
iterations="${1:-1000}"
qemu="$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)"
for tool in clang aarch64-linux-gnu-gcc "$qemu"; do
  if [ -z "$tool" ] || ! command -v "$tool" > /dev/null; then
    echo "cross_check: missing ${tool:-qemu-aarch64} (see the header of $0)" >&2
    exit 2
  fi
done
sysroot=/usr/aarch64-linux-gnu
clang_cc="clang --target=aarch64-linux-gnu"
rm -rf build-aarch64-clang build-aarch64-clang-fuzz build-aarch64-gcc-asan build-aarch64-cmake

echo "Command: tflite/cross_check.sh $iterations"
echo "Tools: $(clang --version | head -1); $(aarch64-linux-gnu-gcc --version | head -1); $("$qemu" --version | head -1)"
echo "== clang --target=aarch64-linux-gnu: library and run_model (-Wall -Wextra -Werror)"
make -s CC="$clang_cc" BUILD=build-aarch64-clang LITERT_LIB= all program
file build-aarch64-clang/libsanp_tflite.so build-aarch64-clang/run_model | sed 's/, BuildID.*//'

if command -v cmake > /dev/null; then
  echo "== CMakeLists.txt with an aarch64 clang toolchain (the NDK's route, no NDK here)"
  mkdir -p build-aarch64-cmake
  printf '%s\n' "set(CMAKE_SYSTEM_NAME Linux)" "set(CMAKE_SYSTEM_PROCESSOR aarch64)" \
    "set(CMAKE_C_COMPILER clang)" "set(CMAKE_C_COMPILER_TARGET aarch64-linux-gnu)" \
    > build-aarch64-cmake/toolchain.cmake
  cmake -S . -B build-aarch64-cmake -DCMAKE_TOOLCHAIN_FILE=build-aarch64-cmake/toolchain.cmake \
    > /dev/null
  cmake --build build-aarch64-cmake > /dev/null
  file build-aarch64-cmake/libsanp_tflite.so build-aarch64-cmake/run_model | sed 's/, BuildID.*//'
fi

echo "== clang build, fuzz test under $(basename "$qemu")"
make -s CC="$clang_cc" BUILD=build-aarch64-clang-fuzz LITERT_LIB= SANITIZE="-O2 -g" \
  build-aarch64-clang-fuzz/fuzz_gated_conv
"$qemu" -L "$sysroot" build-aarch64-clang-fuzz/fuzz_gated_conv "$iterations"

echo "== gcc build with ASan + UBSan, fuzz test under $(basename "$qemu")"
make -s CC=aarch64-linux-gnu-gcc BUILD=build-aarch64-gcc-asan LITERT_LIB= \
  build-aarch64-gcc-asan/fuzz_gated_conv
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1 \
  "$qemu" -L "$sysroot" build-aarch64-gcc-asan/fuzz_gated_conv "$iterations"
