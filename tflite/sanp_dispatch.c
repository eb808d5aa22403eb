/* The public kernel functions of sanp_gated_conv.h, forwarded to the variant of
 * sanp_gated_conv.c compiled for the best instruction set this CPU runs (see
 * sanp_isa in the header). One library then runs on any CPU of its architecture. */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sanp_gated_conv.h"

#define SANP_DECLARE_VARIANT(v)                                                            \
  const char* sanp_status_message_##v(SanpStatus status);                                  \
  SanpStatus sanp_gated_conv2d_output_shape_##v(const SanpTensor* x,                       \
                                                const SanpTensor* filter,                  \
                                                const SanpTensor* params,                  \
                                                int32_t out_dims[4]);                      \
  SanpStatus sanp_gated_conv2d_##v(const SanpTensor* x, const SanpTensor* scale,           \
                                   const SanpTensor* filter, const SanpTensor* bias,       \
                                   const SanpTensor* params, SanpTensor* out);             \
  SanpStatus sanp_se_gated_conv2d_##v(const SanpTensor* x, const SanpTensor* gate,         \
                                      const SanpTensor* filter, const SanpTensor* bias,    \
                                      const SanpTensor* params, const SanpTensor* residual,\
                                      SanpTensor* out, SanpTensor* decisions);             \
  SanpStatus sanp_se_gate_##v(const SanpTensor* x, const SanpTensor* gate,                 \
                              SanpTensor* scale, SanpTensor* decisions);

#define SANP_VARIANT_ENTRY(v, supported)                                                   \
  {#v, supported, sanp_gated_conv2d_##v, sanp_se_gated_conv2d_##v, sanp_se_gate_##v}

typedef struct {
  const char* name;
  int (*supported)(void);
  SanpStatus (*gated_conv2d)(const SanpTensor*, const SanpTensor*, const SanpTensor*,
                             const SanpTensor*, const SanpTensor*, SanpTensor*);
  SanpStatus (*se_gated_conv2d)(const SanpTensor*, const SanpTensor*, const SanpTensor*,
                                const SanpTensor*, const SanpTensor*, const SanpTensor*,
                                SanpTensor*, SanpTensor*);
  SanpStatus (*se_gate)(const SanpTensor*, const SanpTensor*, SanpTensor*, SanpTensor*);
} SanpIsa;

static int always(void) { return 1; }

SANP_DECLARE_VARIANT(generic)

#if defined(__x86_64__)
SANP_DECLARE_VARIANT(avx2)
SANP_DECLARE_VARIANT(avx512)

/* __builtin_cpu_supports also checks that the OS saves the wider registers. */
static int has_avx2(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static int has_avx512(void) {
  return has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vl");
}

static const SanpIsa isas[] = {
    SANP_VARIANT_ENTRY(generic, always),
    SANP_VARIANT_ENTRY(avx2, has_avx2),
    SANP_VARIANT_ENTRY(avx512, has_avx512),
};
#else
static const SanpIsa isas[] = {SANP_VARIANT_ENTRY(generic, always)};
#endif

enum { ISA_COUNT = sizeof(isas) / sizeof(isas[0]) };

static const SanpIsa* current = &isas[0];

/* At load: $SANP_ISA if this CPU runs it, else the best one it runs. */
__attribute__((constructor)) static void choose_isa(void) {
  const char* wanted = getenv("SANP_ISA");
  if (wanted != NULL && sanp_set_isa(wanted) == 0) return;
  for (int i = ISA_COUNT - 1; i >= 0; --i) {
    if (isas[i].supported()) {
      current = &isas[i];
      return;
    }
  }
}

int sanp_isa_count(void) { return ISA_COUNT; }

const char* sanp_isa_name(int index) {
  return index >= 0 && index < ISA_COUNT ? isas[index].name : NULL;
}

int sanp_isa_supported(int index) {
  return index >= 0 && index < ISA_COUNT && isas[index].supported();
}

const char* sanp_isa(void) { return current->name; }

int sanp_set_isa(const char* name) {
  for (int i = 0; i < ISA_COUNT; ++i) {
    if (name != NULL && strcmp(name, isas[i].name) == 0 && isas[i].supported()) {
      current = &isas[i];
      return 0;
    }
  }
  return -1;
}

const char* sanp_status_message(SanpStatus status) {
  return sanp_status_message_generic(status);
}

SanpStatus sanp_gated_conv2d_output_shape(const SanpTensor* x, const SanpTensor* filter,
                                          const SanpTensor* params, int32_t out_dims[4]) {
  return sanp_gated_conv2d_output_shape_generic(x, filter, params, out_dims);
}

SanpStatus sanp_gated_conv2d(const SanpTensor* x, const SanpTensor* scale,
                             const SanpTensor* filter, const SanpTensor* bias,
                             const SanpTensor* params, SanpTensor* out) {
  return current->gated_conv2d(x, scale, filter, bias, params, out);
}

SanpStatus sanp_se_gated_conv2d(const SanpTensor* x, const SanpTensor* gate,
                                const SanpTensor* filter, const SanpTensor* bias,
                                const SanpTensor* params, const SanpTensor* residual,
                                SanpTensor* out, SanpTensor* decisions) {
  return current->se_gated_conv2d(x, gate, filter, bias, params, residual, out, decisions);
}

SanpStatus sanp_se_gate(const SanpTensor* x, const SanpTensor* gate, SanpTensor* scale,
                        SanpTensor* decisions) {
  return current->se_gate(x, gate, scale, decisions);
}

/* ------------------------------------------------------------------ threads -- */

/* A fixed pool. The caller publishes a generation of tasks; workers, spinning a while
 * (yielding the core, which XNNPACK's own threads may want) then sleeping, take task
 * indices from `next`; the caller takes tasks too, and returns once every worker has
 * checked out of the generation, so that none is still inside it when the next starts.
 * Layers come back to back within an inference: spinning saves the wake-up latency,
 * where every thread has a core of its own. Beside ours the runtime runs its own pool
 * (sanp_set_runtime_threads; by default as many threads as ours, so that a model at n
 * threads has 2n - 1 in all); on fewer cores a spinning worker takes a core from
 * XNNPACK's between our layers, and ours sleep at once instead (2 threads on 2 cores,
 * ResNet-20 at 0.33: 0.34-0.56 ms from one process to the next when spinning,
 * 0.36-0.37 ms when sleeping). -DSANP_SPIN_ROUNDS=N fixes the rounds. */
enum { SPIN_ROUNDS = 20000 };

static int runtime_threads = 0;  /* the runtime's threads beside ours; 0: as many */

static int spin_rounds_for(int threads) {
#ifdef SANP_SPIN_ROUNDS
  (void)threads;
  return SANP_SPIN_ROUNDS;
#else
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  const long others = (runtime_threads > 0 ? runtime_threads : threads) - 1;
  return cores >= threads + others ? SPIN_ROUNDS : 0;
#endif
}

typedef struct {
  pthread_mutex_t lock;
  pthread_cond_t wake;
  pthread_t workers[SANP_MAX_THREADS];
  int count;  /* threads in all, the caller's included */
  int stop;   /* under `lock`, also read atomically */
  int sleepers;
  int spin_rounds; /* set before the workers start, read-only while they run */
  unsigned generation;
  void (*task)(void*, int);
  void* context;
  int tasks, next, checked_out;
} Pool;

static Pool pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, 1, 0, 0, 0, 0,
                    NULL, NULL, 0, 0, 0};
static long parallel_min_macs = 200000;  /* about 40 us of work at 5 GMAC/s */

static void run_tasks(void) {
  for (;;) {
    const int index = __atomic_fetch_add(&pool.next, 1, __ATOMIC_ACQ_REL);
    if (index >= pool.tasks) return;
    pool.task(pool.context, index);
  }
}

/* `start`: the generation when the worker was created (by the caller's thread, the
 * only one that publishes): a later one, published before the thread runs, is work. */
static void* worker(void* start) {
  unsigned seen = (unsigned)(uintptr_t)start;
  for (;;) {
    int rounds = 0;
    while (__atomic_load_n(&pool.generation, __ATOMIC_ACQUIRE) == seen &&
           !__atomic_load_n(&pool.stop, __ATOMIC_ACQUIRE)) {
      if (++rounds < pool.spin_rounds) {
        sched_yield();
        continue;
      }
      pthread_mutex_lock(&pool.lock);
      ++pool.sleepers;
      while (__atomic_load_n(&pool.generation, __ATOMIC_ACQUIRE) == seen && !pool.stop)
        pthread_cond_wait(&pool.wake, &pool.lock);
      --pool.sleepers;
      pthread_mutex_unlock(&pool.lock);
    }
    if (__atomic_load_n(&pool.stop, __ATOMIC_ACQUIRE)) return NULL;
    seen = __atomic_load_n(&pool.generation, __ATOMIC_ACQUIRE);
    run_tasks();
    __atomic_fetch_add(&pool.checked_out, 1, __ATOMIC_ACQ_REL);
  }
}

static void stop_workers(void) {
  pthread_mutex_lock(&pool.lock);
  __atomic_store_n(&pool.stop, 1, __ATOMIC_RELEASE);
  pthread_cond_broadcast(&pool.wake);
  pthread_mutex_unlock(&pool.lock);
  for (int i = 0; i < pool.count - 1; ++i) pthread_join(pool.workers[i], NULL);
  pool.stop = 0;
  pool.count = 1;
}

__attribute__((destructor)) static void end_pool(void) {
  if (pool.count > 1) stop_workers();
}

int sanp_set_num_threads(int threads) {
  if (threads < 1 || threads > SANP_MAX_THREADS) return -1;
  if (threads == pool.count) return 0;
  if (pool.count > 1) stop_workers();
  pool.spin_rounds = spin_rounds_for(threads);
  for (int i = 0; i < threads - 1; ++i) {
    void* start = (void*)(uintptr_t)__atomic_load_n(&pool.generation, __ATOMIC_ACQUIRE);
    if (pthread_create(&pool.workers[i], NULL, worker, start) != 0) {
      pool.count = i + 1;
      stop_workers();
      return -1;
    }
    pool.count = i + 2;
  }
  return 0;
}

int sanp_num_threads(void) { return pool.count; }

int sanp_set_runtime_threads(int threads) {
  if (threads < 0 || threads > SANP_MAX_THREADS) return -1;
  if (threads == runtime_threads) return 0;
  runtime_threads = threads;
  const int count = pool.count;  /* restarted: the workers read spin_rounds unlocked */
  if (count > 1) {
    stop_workers();
    return sanp_set_num_threads(count);
  }
  return 0;
}

int sanp_runtime_threads(void) { return runtime_threads; }
long sanp_parallel_min_macs(void) { return parallel_min_macs; }
void sanp_set_parallel_min_macs(long macs) { parallel_min_macs = macs < 0 ? 0 : macs; }

void sanp_parallel(int tasks, void (*task)(void* context, int index), void* context) {
  if (pool.count == 1 || tasks <= 1) {
    for (int i = 0; i < tasks; ++i) task(context, i);
    return;
  }
  pool.task = task;
  pool.context = context;
  pool.tasks = tasks;
  __atomic_store_n(&pool.next, 0, __ATOMIC_RELAXED);
  __atomic_store_n(&pool.checked_out, 0, __ATOMIC_RELAXED);
  __atomic_fetch_add(&pool.generation, 1, __ATOMIC_ACQ_REL);  /* publishes the above */
  pthread_mutex_lock(&pool.lock);
  if (pool.sleepers > 0) pthread_cond_broadcast(&pool.wake);
  pthread_mutex_unlock(&pool.lock);
  run_tasks();
  while (__atomic_load_n(&pool.checked_out, __ATOMIC_ACQUIRE) < pool.count - 1) sched_yield();
}
