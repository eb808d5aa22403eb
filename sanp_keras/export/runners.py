"""Running exported models: the stock LiteRT interpreter, or the C kernels via ctypes.

Both runners have the same call shape: `runner(x)` returns the "output" array of the
model's signature, `runner.run(x)` the dict of every output (decisions included when
exported with `decisions=True`); batch as exported.
"""

import ctypes
import os
import subprocess

import numpy as np

TFLITE_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "tflite")
LIBRARY_ENV = "SANP_TFLITE_LIB"


def library_path():
    """Where `make -C tflite` puts the kernels (override with $SANP_TFLITE_LIB)."""
    return os.environ.get(
        LIBRARY_ENV, os.path.abspath(os.path.join(TFLITE_DIR, "build", "libsanp_tflite.so"))
    )


def build_kernels(quiet=True):
    """Builds tflite/ with the system C compiler (`make -C tflite`); returns the library."""
    if not os.path.isdir(TFLITE_DIR):
        raise FileNotFoundError(
            f"No tflite/ folder at {os.path.abspath(TFLITE_DIR)}: the kernels are built from a "
            "source checkout (pip install -e .)."
        )
    result = subprocess.run(["make", "-C", os.path.abspath(TFLITE_DIR)],
                            capture_output=quiet, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"Building the kernels failed:\n{result.stdout}\n{result.stderr}")
    return library_path()


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


def _signature_outputs(path):
    """{name: shape} of the first signature's outputs."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.ModelT.InitFromPackedBuf(bytearray(f.read()), 0)
    tensors = model.subgraphs[0].tensors
    return {
        (o.name.decode() if isinstance(o.name, bytes) else o.name):
        tuple(int(v) for v in tensors[o.tensorIndex].shape)
        for o in model.signatureDefs[0].outputs
    }


class KernelRunner:
    """A `.tflite` file through LiteRT's CompiledModel API with the sanp kernels.

    Runs models of every kind (custom ops or not), so that latencies of all kinds are
    measured through the same runtime. Batch 1 for `kernels` models.
    """

    def __init__(self, path, num_threads=1, library=None):
        library = library or library_path()
        if not os.path.exists(library):
            raise FileNotFoundError(
                f"No kernel library at {library}. Build it with `make -C tflite` "
                "(or sanp_keras.export.build_kernels())."
            )
        lib = ctypes.CDLL(library)
        lib.sanp_runner_create.restype = ctypes.c_void_p
        lib.sanp_runner_create.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                           ctypes.c_size_t]
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
        self._handle = lib.sanp_runner_create(os.fsencode(path), int(num_threads), error, 512)
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
        if self._handle:
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
    samples = {name: [] for name in paths}
    for runner in runners.values():
        runner.time(x, runs=1, warmup=warmup)
    chunk = max(1, min(chunk, runs))
    for _ in range(-(-runs // chunk)):
        for name, runner in runners.items():
            samples[name].extend(runner.time(x, runs=chunk, warmup=1))
    for runner in runners.values():
        runner.close()
    return {name: float(np.median(s)) for name, s in samples.items()}
