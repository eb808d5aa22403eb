"""Running exported models: the stock LiteRT interpreter, or the C kernels via ctypes.

Both runners have the same call shape: `runner(x)` returns the "output" array of the
model's signature, `runner.run(x)` the dict of every output (decisions included when
exported with `decisions=True`); batch as exported.
"""

import ctypes
import os
import shutil
import subprocess

import numpy as np

TFLITE_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "tflite")
PACKAGED_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "_kernels")
LIBRARY_NAME = "libsanp_tflite.so"
LIBRARY_ENV = "SANP_TFLITE_LIB"


def _source_tree():
    """The `tflite/` folder of a source checkout, or None in an installed package."""
    makefile = os.path.join(TFLITE_DIR, "Makefile")
    return os.path.abspath(TFLITE_DIR) if os.path.exists(makefile) else None


def library_path():
    """The kernel library: $SANP_TFLITE_LIB, else the one `make -C tflite` builds in a
    source checkout, else the one `pip install .` built into the package."""
    if os.environ.get(LIBRARY_ENV):
        return os.environ[LIBRARY_ENV]
    tree = _source_tree()
    if tree is not None:
        return os.path.join(tree, "build", LIBRARY_NAME)
    return os.path.join(PACKAGED_DIR, LIBRARY_NAME)


def build_kernels(quiet=True):
    """The kernel library, built first where it can be: in a source checkout `make -C
    tflite` with the system C compiler (nothing to do once built); in an installed
    package the library its install built. Returns its path.

    Raises:
        RuntimeError: when no C compiler is found (naming $CC) or the build fails.
        FileNotFoundError: in an installed package built without a C compiler.
    """
    if os.environ.get(LIBRARY_ENV):
        return library_path()
    tree = _source_tree()
    if tree is None:
        path = library_path()
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"No kernel library at {path}: this sanp_keras was installed without a C "
                "compiler. Install one (gcc or clang, and make) and reinstall sanp_keras "
                "(pip install --force-reinstall --no-deps sanp-keras) to build it.")
        return path
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler.split()[0]) is None or shutil.which("make") is None:
        raise RuntimeError(
            f"Building the kernels needs a C compiler and make: found no {compiler!r} "
            f"(the CC environment variable) or no make on PATH.")
    result = subprocess.run(["make", "-C", tree], capture_output=quiet, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"Building the kernels failed:\n{result.stdout}\n{result.stderr}")
    return library_path()


def _litert_library():
    """The pinned ai-edge-litert wheel's libLiteRt.so."""
    import ai_edge_litert

    return os.path.join(os.path.dirname(ai_edge_litert.__file__), "libLiteRt.so")


_LOADED = {}


def load_library(library=None):
    """The kernel library loaded by ctypes (once per path), LiteRT loaded before it.

    `libLiteRt.so` is loaded globally first, so that a library built without linking
    it (an install whose build had no LiteRT at hand) resolves its symbols there.
    The default library is built on first use in a source checkout (`build_kernels`).
    """
    if library is None and not os.path.exists(library_path()):
        build_kernels()  # make -C tflite; an install built without a compiler says so
    library = os.path.abspath(library or library_path())
    if library not in _LOADED:
        if not os.path.exists(library):
            raise FileNotFoundError(
                f"No kernel library at {library}. Build it with `make -C tflite` "
                "(or sanp_keras.export.build_kernels()).")
        ctypes.CDLL(_litert_library(), mode=ctypes.RTLD_GLOBAL)
        lib = ctypes.CDLL(library)
        lib.sanp_isa_name.restype = ctypes.c_char_p
        lib.sanp_isa_name.argtypes = [ctypes.c_int]
        lib.sanp_isa_supported.argtypes = [ctypes.c_int]
        lib.sanp_isa.restype = ctypes.c_char_p
        lib.sanp_set_isa.argtypes = [ctypes.c_char_p]
        lib.sanp_parallel_min_macs.restype = ctypes.c_long
        lib.sanp_set_parallel_min_macs.argtypes = [ctypes.c_long]
        _LOADED[library] = lib
    return _LOADED[library]


def kernel_isas(library=None):
    """The instruction sets the kernels were built for: dict name -> whether this CPU
    runs it, in order (the last one it runs is the default)."""
    lib = load_library(library)
    return {lib.sanp_isa_name(i).decode(): bool(lib.sanp_isa_supported(i))
            for i in range(lib.sanp_isa_count())}


def kernel_isa(library=None):
    """The instruction set the kernels run now."""
    return load_library(library).sanp_isa().decode()


def set_kernel_isa(name, library=None):
    """Runs the kernels of instruction set `name` from now on (for tests and timing;
    $SANP_ISA chooses at load)."""
    isas = kernel_isas(library)
    if not isas.get(name):
        raise ValueError(
            f"Invalid value for argument `name`. Expected one of the instruction sets "
            f"this CPU runs, {[n for n, ok in isas.items() if ok]}. Received: name={name!r}")
    load_library(library).sanp_set_isa(name.encode())


def parallel_min_macs(library=None):
    """The MACs from which a gated convolution splits over the runner's threads."""
    return int(load_library(library).sanp_parallel_min_macs())


def set_parallel_min_macs(macs, library=None):
    """Splits every gated convolution of at least `macs` MACs over the runner's threads
    (`KernelRunner(num_threads=...)`); 0 splits every one (for tests), returns the
    previous value."""
    if not isinstance(macs, int) or macs < 0:
        raise ValueError("Invalid value for argument `macs`. Expected an int >= 0. "
                         f"Received: macs={macs!r}")
    previous = parallel_min_macs(library)
    load_library(library).sanp_set_parallel_min_macs(macs)
    return previous


class Interpreter:
    """A `.tflite` file in the stock LiteRT interpreter (XNNPACK on)."""

    def __init__(self, path, num_threads=1):
        from ai_edge_litert import interpreter as litert

        self._interpreter = litert.Interpreter(model_path=path, num_threads=num_threads)
        self._runner = self._interpreter.get_signature_runner()

    def run(self, x):
        return self._runner(image=np.asarray(x, np.float32))

    def __call__(self, x):
        return self.run(x)["output"]


def _read_model(path):
    """The `.tflite` at `path` as the flatbuffer schema's ModelT."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        return schema.ModelT.InitFromPackedBuf(bytearray(f.read()), 0)


def _signature_outputs(path):
    """{name: shape} of the first signature's outputs."""
    model = _read_model(path)
    tensors = model.subgraphs[0].tensors
    return {
        (o.name.decode() if isinstance(o.name, bytes) else o.name):
        tuple(int(v) for v in tensors[o.tensorIndex].shape)
        for o in model.signatureDefs[0].outputs
    }


def uses_sanp_kernels(path):
    """Whether the `.tflite` at `path` holds sanp custom ops (a `kernels` export)."""
    try:
        model = _read_model(path)
    except Exception:  # noqa: BLE001  (not a model: the runtime says why, naming the path)
        return False
    return any((code.customCode or b"").startswith(b"Sanp") for code in model.operatorCodes)


def runtime_threads_for(num_threads, sanp_kernels, cores=None):
    """XNNPACK's threads for a model run at `num_threads`: all of them, but for a model
    with sanp custom ops on a machine with fewer than 2 * num_threads - 1 cores, 1.

    Such a model alternates small XNNPACK partitions with custom ops, and the two
    pools then wake each other's threads on shared cores at every layer. On 2 cores at
    2 threads (bench/results/kernel_threads.md, ResNet-20 with random half-open gates):
    both pools at 2 threads 1.005 ms, XNNPACK at 2 with the kernels at 1 0.943 ms,
    everything at 1 thread 0.940 ms, XNNPACK at 1 with the kernels' pool at 2 (its
    workers then spin between layers) 0.896 ms; the shipped SANP models alike (FIXED-K,
    with 3 custom ops among 16 builtin convolutions: every split within noise).
    """
    cores = os.cpu_count() if cores is None else cores
    return 1 if sanp_kernels and cores < 2 * num_threads - 1 else num_threads


class KernelRunner:
    """A `.tflite` file through LiteRT's CompiledModel API with the sanp kernels.

    Runs models of every kind (custom ops or not), so that latencies of all kinds are
    measured through the same runtime. Batch 1 for `kernels` models. `num_threads`:
    the sanp kernels' threads (a gated convolution of at least `parallel_min_macs()`
    MACs splits its channels or pixel blocks over them; the kernels' pool is the
    process's, set to this runner's count at each run) and XNNPACK's, unless
    `runtime_threads` gives XNNPACK another count (None: `runtime_threads_for`).
    """

    def __init__(self, path, num_threads=1, library=None, runtime_threads=None):
        lib = load_library(library)
        lib.sanp_runner_create_split.restype = ctypes.c_void_p
        lib.sanp_runner_create_split.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
                                                 ctypes.c_char_p, ctypes.c_size_t]
        for name in ("sanp_runner_input_bytes", "sanp_runner_output_bytes"):
            getattr(lib, name).restype = ctypes.c_size_t
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        for name in ("sanp_runner_num_inputs", "sanp_runner_num_outputs"):
            getattr(lib, name).restype = ctypes.c_size_t
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        for name in ("sanp_runner_set_input", "sanp_runner_get_output"):
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                           ctypes.c_size_t]
        lib.sanp_runner_output_name.restype = ctypes.c_char_p
        lib.sanp_runner_output_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.sanp_runner_invoke.argtypes = [ctypes.c_void_p]
        lib.sanp_runner_time.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                         ctypes.POINTER(ctypes.c_double)]
        lib.sanp_runner_destroy.argtypes = [ctypes.c_void_p]
        lib.sanp_kernel_time_ms.restype = ctypes.c_double
        lib.sanp_kernel_calls.restype = ctypes.c_long
        self._lib = lib
        error = ctypes.create_string_buffer(512)
        if runtime_threads is None:
            runtime_threads = runtime_threads_for(int(num_threads), uses_sanp_kernels(path))
        elif isinstance(runtime_threads, bool) or not isinstance(runtime_threads, int) or \
                runtime_threads < 1:
            raise ValueError("Invalid value for argument `runtime_threads`: expected None or "
                             f"an integer >= 1. Received: runtime_threads={runtime_threads!r}")
        self.num_threads, self.runtime_threads = int(num_threads), int(runtime_threads)
        self._handle = lib.sanp_runner_create_split(os.fsencode(path), self.num_threads,
                                                    self.runtime_threads, error, 512)
        if not self._handle:
            raise RuntimeError(error.value.decode())
        self._in_bytes = lib.sanp_runner_input_bytes(self._handle, 0)
        shapes = _signature_outputs(path)
        self._outputs = []
        for i in range(lib.sanp_runner_num_outputs(self._handle)):
            name = lib.sanp_runner_output_name(self._handle, i).decode()
            self._outputs.append((name, shapes[name]))

    def _check(self, status, what):
        if status != 0:
            detail = "LiteRT failed" if status < 0 else f"a sanp kernel returned status {status}"
            raise RuntimeError(f"{what}: {detail}.")

    def __call__(self, x):
        return self.run(x)["output"]

    def run(self, x):
        x = np.ascontiguousarray(x, np.float32)
        if x.nbytes != self._in_bytes:
            raise ValueError(
                f"Input of {x.nbytes} bytes (shape {x.shape}); the model takes "
                f"{self._in_bytes} bytes."
            )
        self._check(self._lib.sanp_runner_set_input(self._handle, 0, x.ctypes.data, x.nbytes),
                    "Setting the input")
        self._check(self._lib.sanp_runner_invoke(self._handle), "Running the model")
        result = {}
        for i, (name, shape) in enumerate(self._outputs):
            out = np.empty(shape, np.float32)
            self._check(self._lib.sanp_runner_get_output(self._handle, i, out.ctypes.data,
                                                         out.nbytes), f"Reading {name}")
            result[name] = out
        return result

    def time(self, x, runs=200, warmup=20):
        """Latency of `runs` invocations on `x` after `warmup`, in milliseconds (array)."""
        self.run(x)
        times = (ctypes.c_double * runs)()
        self._check(self._lib.sanp_runner_time(self._handle, warmup, runs, times), "Timing")
        return np.frombuffer(times, np.float64).copy()

    def kernel_time(self, x, runs=200):
        """Mean milliseconds per run spent inside the sanp kernels, and their calls.

        The rest of a run's latency is the builtin ops (XNNPACK) and the runtime.
        """
        self.run(x)
        self._lib.sanp_reset_kernel_time()
        self._check(self._lib.sanp_runner_time(self._handle, 0, runs, (ctypes.c_double * runs)()),
                    "Timing")
        return self._lib.sanp_kernel_time_ms() / runs, self._lib.sanp_kernel_calls() / runs

    def close(self):
        if getattr(self, "_handle", None):  # None too when __init__ failed
            self._lib.sanp_runner_destroy(self._handle)
            self._handle = None

    def __del__(self):
        self.close()


def time_side_by_side(paths, x, num_threads=1, runs=200, warmup=20, chunk=10):
    """Median latency (ms) of every `.tflite` in `paths` (dict name -> path) on `x`.

    Each model is warmed up, then all are run in turn in chunks of `chunk` runs (each
    after one untimed run), so that the noise of a shared machine, which comes in
    phases longer than a run, hits every model alike: compare the medians of one
    call, not of two.
    """
    runners = {name: KernelRunner(p, num_threads=num_threads) for name, p in paths.items()}
    try:
        return time_runners(runners, x, runs, warmup, chunk)
    finally:
        for runner in runners.values():
            runner.close()


def time_runners(runners, x, runs=200, warmup=20, chunk=10):
    """`time_side_by_side` for runners made by the caller (dict name -> KernelRunner,
    each with its own thread counts): median ms of each, interleaved in chunks."""
    samples = {name: [] for name in runners}
    for runner in runners.values():
        runner.time(x, runs=1, warmup=warmup)
    chunk = max(1, min(chunk, runs))
    for _ in range(-(-runs // chunk)):
        for name, runner in runners.items():
            samples[name].extend(runner.time(x, runs=chunk, warmup=1))
    return {name: float(np.median(s)) for name, s in samples.items()}
