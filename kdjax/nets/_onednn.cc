// kdjax's CPU convolutions in oneDNN and the 2x2 max-pools after them, as typed XLA FFI handlers (see
// kdjax/nets/onednn_conv.py and kdjax/nets/onednn_pool.py).
//
// A "SAME" KxK stride-1 convolution of NHWC float32 activations with HWIO float32 weights:
//   y[n, h, w, d] = b[d] + sum_{i, j, c} x[n, h + i - K/2, w + j - K/2, c] * k[i, j, c, d]   (0 outside the image)
// and its two gradients, dx = conv_transpose(dy, k) (oneDNN backward-data) and dk, db (oneDNN backward-weights).
// A 2x2 stride-2 max-pool, y[n, i, j, c] = max of x[n, 2i..2i+1, 2j..2j+1, c] with XLA's NaN and signed-zero
// rules, whose forward records each window's argmax in a workspace and whose backward puts dy there (loops of its
// own, below: oneDNN's pooling primitive turns NaN into a finite number).
//
// The activations stay NHWC (XLA's layout, no copies); the weights go to the layout oneDNN picks for the shape
// (format_tag::any) through a reorder: with plain HWIO weights the backward primitives fall back to oneDNN's
// im2col + GEMM kernel (3x slower on a 12-channel conv), with every tensor in a blocked layout the weight
// gradient is 2x slower. Primitives are created once per (kind, N, H, W, C, D, K) and cached.
//
// Scratchpads: every primitive takes its scratch memory from one buffer the extension keeps, grown to the largest
// need and never freed (oneDNN's default allocates and frees it at every call; measured on a student-CE step at
// batch 128, 64x64: about 5,000 minor page faults a step before, 25 after).
//
// Threads: one mutex serialises every oneDNN execution, and every execution runs on one thread the extension keeps
// (Executor, below), whose OpenMP team size is the count kdjax_onednn_set_threads chose.

#include <emmintrin.h>
#include <fcntl.h>
#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum Kind : int { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// (kind, N, H, W, C, D, K)
using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>;

struct Cached {
  dnnl::primitive conv;
  dnnl::memory::desc user_weights;   // HWIO, what JAX holds
  dnnl::memory::desc conv_weights;   // the layout the primitive chose
  bool reorder_weights = false;
  dnnl::reorder weights_reorder;     // user -> conv (forward, backward data); conv -> user (backward weights)
  dnnl::memory::desc scratchpad;     // what the primitive needs from g_scratchpad
  std::string impl;
};

std::mutex g_mutex;   // guards everything below, and every execution
int g_threads = 0;    // 0: leave OpenMP's count as it is
std::map<Key, std::unique_ptr<Cached>>* g_cache = nullptr;
dnnl::engine* g_engine = nullptr;
dnnl::stream* g_stream = nullptr;
void* g_scratchpad = nullptr;      // the scratch memory of every primitive (scratchpad_mode::user), 64-byte aligned
size_t g_scratchpad_bytes = 0;

// Primitive attributes: scratch memory is passed in at execution (Scratchpad()), not allocated by oneDNN.
dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// The shared scratch buffer as a primitive's scratchpad memory of `desc`, grown first if it needs more (caller holds
// g_mutex).
dnnl::memory Scratchpad(const dnnl::memory::desc& desc) {
  const size_t bytes = desc.get_size();
  if (bytes > g_scratchpad_bytes) {
    std::free(g_scratchpad);
    g_scratchpad = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (g_scratchpad == nullptr) {
      g_scratchpad_bytes = 0;
      throw std::bad_alloc();
    }
    g_scratchpad_bytes = bytes;
  }
  return dnnl::memory(desc, *g_engine, g_scratchpad);
}

void EnsureEngine() {
  if (g_engine == nullptr) {
    g_engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
    g_stream = new dnnl::stream(*g_engine);
    g_cache = new std::map<Key, std::unique_ptr<Cached>>();
  }
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Key& key) {
  auto [kind, n, h, w, c, d, k] = key;
  (void)kind;
  const int64_t pad = k / 2;
  dnnl::memory::desc src({n, c, h, w}, dt::f32, tag::nhwc);
  dnnl::memory::desc weights({d, c, k, k}, dt::f32, tag::any);
  dnnl::memory::desc bias({d}, dt::f32, tag::a);
  dnnl::memory::desc dst({n, d, h, w}, dt::f32, tag::nhwc);
  return dnnl::convolution_forward::primitive_desc(
      *g_engine, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, weights, bias, dst,
      {1, 1}, {pad, pad}, {pad, pad}, UserScratchpad());
}

// The cached primitive of `key`, created on first use (caller holds g_mutex).
Cached& Lookup(const Key& key) {
  EnsureEngine();
  auto found = g_cache->find(key);
  if (found != g_cache->end()) return *found->second;
  auto [kind, n, h, w, c, d, k] = key;
  const int64_t pad = k / 2;
  auto entry = std::make_unique<Cached>();
  entry->user_weights = dnnl::memory::desc({d, c, k, k}, dt::f32, tag::hwio);
  dnnl::memory::desc act_in({n, c, h, w}, dt::f32, tag::nhwc);
  dnnl::memory::desc act_out({n, d, h, w}, dt::f32, tag::nhwc);
  dnnl::memory::desc any_weights({d, c, k, k}, dt::f32, tag::any);
  dnnl::memory::desc bias({d}, dt::f32, tag::a);
  auto forward = ForwardDesc(key);
  if (kind == kForward) {
    entry->conv_weights = forward.weights_desc();
    entry->scratchpad = forward.scratchpad_desc();
    entry->impl = forward.impl_info_str();
    entry->conv = dnnl::convolution_forward(forward);
  } else if (kind == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        *g_engine, dnnl::algorithm::convolution_direct, act_in, any_weights, act_out, {1, 1}, {pad, pad},
        {pad, pad}, forward, UserScratchpad());
    entry->conv_weights = pd.weights_desc();
    entry->scratchpad = pd.scratchpad_desc();
    entry->impl = pd.impl_info_str();
    entry->conv = dnnl::convolution_backward_data(pd);
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        *g_engine, dnnl::algorithm::convolution_direct, act_in, any_weights, bias, act_out, {1, 1}, {pad, pad},
        {pad, pad}, forward, UserScratchpad());
    entry->conv_weights = pd.diff_weights_desc();
    entry->scratchpad = pd.scratchpad_desc();
    entry->impl = pd.impl_info_str();
    entry->conv = dnnl::convolution_backward_weights(pd);
  }
  entry->reorder_weights = entry->conv_weights != entry->user_weights;
  if (entry->reorder_weights) {
    entry->weights_reorder = kind == kBackwardWeights
        ? dnnl::reorder(dnnl::reorder::primitive_desc(*g_engine, entry->conv_weights, *g_engine,
                                                      entry->user_weights))
        : dnnl::reorder(dnnl::reorder::primitive_desc(*g_engine, entry->user_weights, *g_engine,
                                                      entry->conv_weights));
  }
  Cached& result = *entry;
  g_cache->emplace(key, std::move(entry));
  return result;
}

void SetThreads() {
  if (g_threads > 0 && omp_get_max_threads() != g_threads) omp_set_num_threads(g_threads);
}

// Whether more tasks are runnable on the machine than there are cores this process may use: the running count of
// /proc/loadavg (which counts the calling thread) against the affinity mask's size, read at most every 20 ms
// (a read costs a few microseconds); false where /proc/loadavg cannot be read.
bool Oversubscribed() {
  static const int cores = [] {
    cpu_set_t set;
    return sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  }();
  static std::atomic<int64_t> next_read_us{0};
  static std::atomic<bool> oversubscribed{false};
  const int64_t now_us = std::chrono::duration_cast<std::chrono::microseconds>(
      std::chrono::steady_clock::now().time_since_epoch()).count();
  if (now_us < next_read_us.load(std::memory_order_relaxed)) return oversubscribed.load(std::memory_order_relaxed);
  next_read_us.store(now_us + 20000, std::memory_order_relaxed);
  char text[128] = {0};   // "0.61 0.53 0.41 3/812 12345": the 4th field is running/total
  const int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const ssize_t size = read(fd, text, sizeof(text) - 1);
  close(fd);
  long running = 0;
  if (size > 0) std::sscanf(text, "%*s %*s %*s %ld/", &running);
  oversubscribed.store(running > cores, std::memory_order_relaxed);
  return running > cores;
}

// Every oneDNN execution runs on one thread the extension keeps, whichever XLA thread calls (Executor).
//
// Why: OpenMP's team belongs to the thread that starts a parallel region, and XLA calls from its pool's threads,
// so each of them would lead a team of its own. GNU OpenMP then manages more threads than there are cores, and its
// idle workers stop spinning after ~100 checks (its "throttled" spin) and sleep; every call wakes them again, and on
// this 2-core machine after any idle moment the woken threads queue on one core while the other stays idle (seen
// with `perf sched`: a student step 45-57 ms instead of 20 after 50 ms idle, ~50 involuntary context switches a
// step). One team, led by the executor, keeps its workers spinning between calls as PyTorch's does.
//
// The handover spins briefly on both sides before sleeping on a condition variable: the caller for
// kCallerSpin (most convs of these nets take longer; then it sleeps and its core is free for oneDNN's team), the
// executor for kExecutorSpin after each call (the next call usually comes within microseconds). Neither spins while
// the machine is oversubscribed (Oversubscribed(): more runnable tasks than cores this process may use): there a
// spinning thread takes the core that the thread it waits for needs, and each wait lasts a scheduler time slice
// (issue 36: a tiny teacher step 688 ms against XLA's 3.8 at load 19, GNU OpenMP's own spin the larger part; its
// wait policy is set passive where the extension is loaded, kdjax/nets/onednn_conv.py).
class Executor {
 public:
  // Runs fn on the executor thread and returns once it has run (an exception is passed back to the caller).
  void Run(const std::function<void()>& fn) {
    if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
    task_ = &fn;
    error_ = nullptr;
    const uint64_t ticket = posted_.load(std::memory_order_relaxed) + 1;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      posted_.store(ticket, std::memory_order_release);
    }
    work_.notify_one();
    spin_ = !Oversubscribed();
    if (!spin_ || !SpinUntil([&] { return finished_.load(std::memory_order_acquire) == ticket; }, kCallerSpin)) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [&] { return finished_.load(std::memory_order_acquire) == ticket; });
    }
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static constexpr auto kCallerSpin = std::chrono::microseconds(30);
  static constexpr auto kExecutorSpin = std::chrono::microseconds(200);

  template <typename Done>
  static bool SpinUntil(Done done, std::chrono::microseconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (!done()) {
      for (int i = 0; i < 64; ++i) __builtin_ia32_pause();
      if (std::chrono::steady_clock::now() > until) return done();
    }
    return true;
  }

  void Loop() {
    uint64_t seen = 0;
    while (true) {
      auto posted = [&] { return posted_.load(std::memory_order_acquire) != seen; };
      if (!spin_.load(std::memory_order_relaxed) || !SpinUntil(posted, kExecutorSpin)) {
        std::unique_lock<std::mutex> lock(mutex_);
        work_.wait(lock, posted);
      }
      seen = posted_.load(std::memory_order_acquire);
      try {
        (*task_)();
      } catch (...) {
        error_ = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        finished_.store(seen, std::memory_order_release);
      }
      done_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable work_, done_;
  std::thread thread_;
  const std::function<void()>* task_ = nullptr;   // written before posted_ is raised, read after
  std::exception_ptr error_;
  std::atomic<uint64_t> posted_{0}, finished_{0};
  std::atomic<bool> spin_{true};   // whether the last caller found the machine not oversubscribed
};

Executor* g_executor = new Executor();   // never destroyed: its thread lives as long as the process

// Runs fn (a oneDNN execution) on the executor, one call at a time (g_mutex), with oneDNN's errors as FFI errors.
template <typename Fn>
ffi::Error Guarded(Fn&& fn) {
  try {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_executor->Run([&] {
      SetThreads();
      fn();
      if (g_stream != nullptr) g_stream->wait();   // none yet where only pools have run
    });
    return ffi::Error::Success();
  } catch (const dnnl::error& error) {
    return ffi::Error::Internal(std::string("oneDNN: ") + error.what());
  } catch (const std::exception& error) {
    return ffi::Error::Internal(std::string("kdjax oneDNN: ") + error.what());
  }
}

// Checks x [N, H, W, C], k [K, K, C, D] (K odd) and fills the key; empty string when they fit.
std::string ShapeKey(int kind, ffi::Span<const int64_t> x, ffi::Span<const int64_t> k, Key* key) {
  if (x.size() != 4 || k.size() != 4) return "expects rank-4 NHWC activations and HWIO weights";
  if (k[0] != k[1] || k[0] % 2 != 1 || k[2] != x[3]) return "expects an odd square kernel [K, K, C, D]";
  *key = Key(kind, x[0], x[1], x[2], x[3], k[3], k[0]);
  return "";
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> bias,
                   ffi::ResultBuffer<ffi::F32> y) {
  Key key;
  std::string problem = ShapeKey(kForward, x.dimensions(), kernel.dimensions(), &key);
  if (!problem.empty()) return ffi::Error::InvalidArgument(problem);
  return Guarded([&] {
    Cached& p = Lookup(key);
    auto [kind, n, h, w, c, d, k] = key;
    (void)kind;
    dnnl::memory src({{n, c, h, w}, dt::f32, tag::nhwc}, *g_engine, x.untyped_data());
    dnnl::memory user_weights(p.user_weights, *g_engine, kernel.untyped_data());
    dnnl::memory bias_mem({{d}, dt::f32, tag::a}, *g_engine, bias.untyped_data());
    dnnl::memory dst({{n, d, h, w}, dt::f32, tag::nhwc}, *g_engine, y->untyped_data());
    dnnl::memory weights = user_weights;
    if (p.reorder_weights) {
      weights = dnnl::memory(p.conv_weights, *g_engine);
      p.weights_reorder.execute(*g_stream, user_weights, weights);
    }
    p.conv.execute(*g_stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_BIAS, bias_mem},
                               {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, Scratchpad(p.scratchpad)}});
  });
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx) {
  Key key;
  std::string problem = ShapeKey(kBackwardData, dx->dimensions(), kernel.dimensions(), &key);
  if (!problem.empty()) return ffi::Error::InvalidArgument(problem);
  return Guarded([&] {
    Cached& p = Lookup(key);
    auto [kind, n, h, w, c, d, k] = key;
    (void)kind;
    dnnl::memory diff_src({{n, c, h, w}, dt::f32, tag::nhwc}, *g_engine, dx->untyped_data());
    dnnl::memory user_weights(p.user_weights, *g_engine, kernel.untyped_data());
    dnnl::memory diff_dst({{n, d, h, w}, dt::f32, tag::nhwc}, *g_engine, dy.untyped_data());
    dnnl::memory weights = user_weights;
    if (p.reorder_weights) {
      weights = dnnl::memory(p.conv_weights, *g_engine);
      p.weights_reorder.execute(*g_stream, user_weights, weights);
    }
    p.conv.execute(*g_stream, {{DNNL_ARG_DIFF_SRC, diff_src}, {DNNL_ARG_WEIGHTS, weights},
                               {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_SCRATCHPAD, Scratchpad(p.scratchpad)}});
  });
}

ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dkernel,
                           ffi::ResultBuffer<ffi::F32> dbias) {
  Key key;
  std::string problem = ShapeKey(kBackwardWeights, x.dimensions(), dkernel->dimensions(), &key);
  if (!problem.empty()) return ffi::Error::InvalidArgument(problem);
  return Guarded([&] {
    Cached& p = Lookup(key);
    auto [kind, n, h, w, c, d, k] = key;
    (void)kind;
    dnnl::memory src({{n, c, h, w}, dt::f32, tag::nhwc}, *g_engine, x.untyped_data());
    dnnl::memory diff_dst({{n, d, h, w}, dt::f32, tag::nhwc}, *g_engine, dy.untyped_data());
    dnnl::memory user_weights(p.user_weights, *g_engine, dkernel->untyped_data());
    dnnl::memory diff_bias({{d}, dt::f32, tag::a}, *g_engine, dbias->untyped_data());
    dnnl::memory weights = p.reorder_weights ? dnnl::memory(p.conv_weights, *g_engine) : user_weights;
    p.conv.execute(*g_stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                               {DNNL_ARG_DIFF_WEIGHTS, weights}, {DNNL_ARG_DIFF_BIAS, diff_bias},
                               {DNNL_ARG_SCRATCHPAD, Scratchpad(p.scratchpad)}});
    if (p.reorder_weights) p.weights_reorder.execute(*g_stream, weights, user_weights);
  });
}

// 2x2 stride-2 max pooling of NHWC float32 (H, W even), in loops of its own rather than oneDNN's pooling
// primitive: oneDNN's max starts from -FLT_MAX and takes a corner only when it is strictly greater, so a NaN never
// wins (a window [1, nan, 0, 0] gave 1, an all-NaN or all--inf window -3.4e38) and a -0.0 / +0.0 tie kept -0.0.
// These loops compute XLA's max (kdjax.nets.pooling.max_pool_2x2, nn.max_pool), values and gradients bit for bit:
//   y = max(max(a, b), max(c, d)),  max(p, q) = NaN if either is NaN, +0 for a -0 / +0 tie, else the larger
//   workspace = the first of the corners (a, b, c, d) equal to y (0..3), 3 where none is (y is NaN)
//   dx = dy at the workspace's corner, +0 at the other three
// (a, b, c, d = x[n, 2i, 2j], x[n, 2i, 2j+1], x[n, 2i+1, 2j], x[n, 2i+1, 2j+1]). Memory-bound: one pass each way,
// 4 channels at a time (SSE2, any x86_64), the window rows split over the executor's OpenMP team.

inline __m128 Select(__m128 mask, __m128 yes, __m128 no) {
  return _mm_or_ps(_mm_and_ps(mask, yes), _mm_andnot_ps(mask, no));
}

// XLA's max, 4 lanes. maxps gives q where either is NaN or p == q; a tie takes p AND q (+0 over -0, else the value
// itself), an unordered pair p + q (a quiet NaN, the first NaN operand's payload).
inline __m128 Max(__m128 p, __m128 q) {
  const __m128 larger = Select(_mm_cmpeq_ps(p, q), _mm_and_ps(p, q), _mm_max_ps(p, q));
  return Select(_mm_cmpunord_ps(p, q), _mm_add_ps(p, q), larger);
}

inline float Max(float p, float q) { return _mm_cvtss_f32(Max(_mm_set_ss(p), _mm_set_ss(q))); }

inline uint8_t FirstEqual(float a, float b, float c, float y) { return a == y ? 0 : b == y ? 1 : c == y ? 2 : 3; }

// Rows r of the output (n * H/2 + i), each from input rows 2r and 2r + 1; w the input's width, c its channels.
void PoolForwardLoops(const float* x, float* y, uint8_t* workspace, int64_t rows, int64_t w, int64_t c) {
  const int64_t in_row = w * c, out_row = w / 2 * c;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* top = x + 2 * r * in_row;
    const float* bottom = top + in_row;
    for (int64_t j = 0; j < w / 2; ++j) {
      const float *a = top + 2 * j * c, *b = a + c, *cc = bottom + 2 * j * c, *d = cc + c;
      float* out = y + r * out_row + j * c;
      uint8_t* arg = workspace + r * out_row + j * c;
      int64_t k = 0;
      for (; k + 4 <= c; k += 4) {
        const __m128 va = _mm_loadu_ps(a + k), vb = _mm_loadu_ps(b + k), vc = _mm_loadu_ps(cc + k);
        const __m128 m = Max(Max(va, vb), Max(vc, _mm_loadu_ps(d + k)));
        _mm_storeu_ps(out + k, m);
        __m128i index = _mm_set1_epi32(3);   // the first corner equal to m, as FirstEqual
        index = _mm_castps_si128(Select(_mm_cmpeq_ps(vc, m), _mm_castsi128_ps(_mm_set1_epi32(2)),
                                        _mm_castsi128_ps(index)));
        index = _mm_castps_si128(Select(_mm_cmpeq_ps(vb, m), _mm_castsi128_ps(_mm_set1_epi32(1)),
                                        _mm_castsi128_ps(index)));
        index = _mm_castps_si128(_mm_andnot_ps(_mm_cmpeq_ps(va, m), _mm_castsi128_ps(index)));
        const __m128i bytes = _mm_packus_epi16(_mm_packs_epi32(index, index), index);
        const int32_t four = _mm_cvtsi128_si32(bytes);
        std::memcpy(arg + k, &four, 4);
      }
      for (; k < c; ++k) {
        out[k] = Max(Max(a[k], b[k]), Max(cc[k], d[k]));
        arg[k] = FirstEqual(a[k], b[k], cc[k], out[k]);
      }
    }
  }
}

void PoolBackwardLoops(const float* dy, const uint8_t* workspace, float* dx, int64_t rows, int64_t w, int64_t c) {
  const int64_t in_row = w * c, out_row = w / 2 * c;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float* top = dx + 2 * r * in_row;
    float* bottom = top + in_row;
    for (int64_t j = 0; j < w / 2; ++j) {
      float *a = top + 2 * j * c, *b = a + c, *cc = bottom + 2 * j * c, *d = cc + c;
      const float* grad = dy + r * out_row + j * c;
      const uint8_t* arg = workspace + r * out_row + j * c;
      int64_t k = 0;
      for (; k + 4 <= c; k += 4) {
        int32_t four;
        std::memcpy(&four, arg + k, 4);
        const __m128i zero = _mm_setzero_si128();
        const __m128i index = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(four), zero), zero);
        const __m128 g = _mm_loadu_ps(grad + k);
        auto at = [&](int corner) {
          return _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(index, _mm_set1_epi32(corner))), g);
        };
        _mm_storeu_ps(a + k, at(0));
        _mm_storeu_ps(b + k, at(1));
        _mm_storeu_ps(cc + k, at(2));
        _mm_storeu_ps(d + k, at(3));
      }
      for (; k < c; ++k) {
        a[k] = arg[k] == 0 ? grad[k] : 0.0f;
        b[k] = arg[k] == 1 ? grad[k] : 0.0f;
        cc[k] = arg[k] == 2 ? grad[k] : 0.0f;
        d[k] = arg[k] == 3 ? grad[k] : 0.0f;
      }
    }
  }
}

// Checks an NHWC input shape of even height and width; empty string when it fits.
std::string PoolShape(ffi::Span<const int64_t> x) {
  if (x.size() != 4 || x[1] % 2 != 0 || x[2] % 2 != 0) return "expects NHWC input of even height and width";
  return "";
}

ffi::Error PoolForward(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y,
                       ffi::ResultBuffer<ffi::U8> workspace) {
  auto shape = x.dimensions();
  std::string problem = PoolShape(shape);
  if (problem.empty() && workspace->element_count() != y->element_count()) problem = "pool workspace size";
  if (!problem.empty()) return ffi::Error::InvalidArgument(problem);
  return Guarded([&] {
    PoolForwardLoops(x.typed_data(), y->typed_data(), workspace->typed_data(), shape[0] * shape[1] / 2, shape[2],
                     shape[3]);
  });
}

ffi::Error PoolBackward(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::U8> workspace, ffi::ResultBuffer<ffi::F32> dx) {
  auto shape = dx->dimensions();
  std::string problem = PoolShape(shape);
  if (problem.empty() && workspace.element_count() != dy.element_count()) problem = "pool workspace size";
  if (!problem.empty()) return ffi::Error::InvalidArgument(problem);
  return Guarded([&] {
    PoolBackwardLoops(dy.typed_data(), workspace.typed_data(), dx->typed_data(), shape[0] * shape[1] / 2, shape[2],
                      shape[3]);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(kdjax_onednn_conv_forward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x [N, H, W, C]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // kernel [K, K, C, D]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // bias [D]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // y [N, H, W, D]

XLA_FFI_DEFINE_HANDLER_SYMBOL(kdjax_onednn_conv_backward_data, BackwardData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // kernel [K, K, C, D]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dy [N, H, W, D]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dx [N, H, W, C]

XLA_FFI_DEFINE_HANDLER_SYMBOL(kdjax_onednn_conv_backward_weights, BackwardWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x [N, H, W, C]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dy [N, H, W, D]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dkernel [K, K, C, D]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dbias [D]

XLA_FFI_DEFINE_HANDLER_SYMBOL(kdjax_onednn_pool_forward, PoolForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x [N, H, W, C]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // y [N, H/2, W/2, C]
                                  .Ret<ffi::Buffer<ffi::U8>>());  // workspace (the windows' argmax)

XLA_FFI_DEFINE_HANDLER_SYMBOL(kdjax_onednn_pool_backward, PoolBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dy [N, H/2, W/2, C]
                                  .Arg<ffi::Buffer<ffi::U8>>()    // workspace of the forward
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dx [N, H, W, C]

// Plain C entry points for the Python wrapper (ctypes).
extern "C" {

// OpenMP threads of every later oneDNN call (0: OpenMP's own default).
void kdjax_onednn_set_threads(int threads) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_threads = threads > 0 ? threads : 0;
}

// Bytes of the shared scratch buffer: the largest scratchpad of the primitives executed so far.
int64_t kdjax_onednn_scratchpad_bytes() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return static_cast<int64_t>(g_scratchpad_bytes);
}

int kdjax_onednn_get_threads() {
  std::lock_guard<std::mutex> lock(g_mutex);
  SetThreads();
  return omp_get_max_threads();
}

// The implementation oneDNN picked for `kind` (0 forward, 1 backward data, 2 backward weights) at a shape,
// written to `out` (NUL-terminated, truncated to `size`); returns the number of cached primitives, or -1 on error.
int kdjax_onednn_impl_info(int kind, int64_t n, int64_t h, int64_t w, int64_t c, int64_t d, int64_t k, char* out,
                           int size) {
  try {
    std::lock_guard<std::mutex> lock(g_mutex);
    Cached& p = Lookup(Key(kind, n, h, w, c, d, k));
    std::snprintf(out, size, "%s", p.impl.c_str());
    return static_cast<int>(g_cache->size());
  } catch (const std::exception& error) {
    std::snprintf(out, size, "%s", error.what());
    return -1;
  }
}

// Number of primitives created so far (one per kind and shape: the cache's size).
int kdjax_onednn_cache_size() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_cache == nullptr ? 0 : static_cast<int>(g_cache->size());
}

int kdjax_onednn_version() {
  const dnnl_version_t* version = dnnl_version();
  return version->major * 10000 + version->minor * 100 + version->patch;
}

}  // extern "C"
