// kdjax's CPU convolutions and their 2x2 max-pools in oneDNN, as typed XLA FFI handlers (see
// kdjax/nets/onednn_conv.py and kdjax/nets/onednn_pool.py).
//
// A "SAME" KxK stride-1 convolution of NHWC float32 activations with HWIO float32 weights:
//   y[n, h, w, d] = b[d] + sum_{i, j, c} x[n, h + i - K/2, w + j - K/2, c] * k[i, j, c, d]   (0 outside the image)
// and its two gradients, dx = conv_transpose(dy, k) (oneDNN backward-data) and dk, db (oneDNN backward-weights).
// A 2x2 stride-2 max-pool, y[n, i, j, c] = max of x[n, 2i..2i+1, 2j..2j+1, c], whose forward records each window's
// argmax in a workspace and whose backward puts dy there (oneDNN pooling forward-training and backward).
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

#include <omp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
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
// executor for kExecutorSpin after each call (the next call usually comes within microseconds).
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
    if (!SpinUntil([&] { return finished_.load(std::memory_order_acquire) == ticket; }, kCallerSpin)) {
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
      if (!SpinUntil(posted, kExecutorSpin)) {
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
      g_stream->wait();
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

// 2x2 stride-2 max pooling of NHWC float32 (H, W even), oneDNN's forward-training (which writes the argmax of
// every window to a workspace) and backward (dx = 0 but at each window's recorded argmax, where it is dy).
struct CachedPool {
  dnnl::pooling_forward forward;
  dnnl::pooling_backward backward;
  dnnl::memory::desc src, dst, workspace, forward_scratchpad, backward_scratchpad;
  std::string impl;
};

using PoolKey = std::tuple<int64_t, int64_t, int64_t, int64_t>;   // (N, H, W, C) of the input
std::map<PoolKey, std::unique_ptr<CachedPool>>* g_pools = nullptr;

// The cached pooling primitives of `key`, created on first use (caller holds g_mutex).
CachedPool& LookupPool(const PoolKey& key) {
  EnsureEngine();
  if (g_pools == nullptr) g_pools = new std::map<PoolKey, std::unique_ptr<CachedPool>>();
  auto found = g_pools->find(key);
  if (found != g_pools->end()) return *found->second;
  auto [n, h, w, c] = key;
  auto entry = std::make_unique<CachedPool>();
  entry->src = dnnl::memory::desc({n, c, h, w}, dt::f32, tag::nhwc);
  entry->dst = dnnl::memory::desc({n, c, h / 2, w / 2}, dt::f32, tag::nhwc);
  dnnl::pooling_forward::primitive_desc forward(
      *g_engine, dnnl::prop_kind::forward_training, dnnl::algorithm::pooling_max, entry->src, entry->dst, {2, 2},
      {2, 2}, {0, 0}, {0, 0}, {0, 0}, UserScratchpad());
  dnnl::pooling_backward::primitive_desc backward(
      *g_engine, dnnl::algorithm::pooling_max, entry->src, entry->dst, {2, 2}, {2, 2}, {0, 0}, {0, 0}, {0, 0},
      forward, UserScratchpad());
  entry->workspace = forward.workspace_desc();
  entry->forward_scratchpad = forward.scratchpad_desc();
  entry->backward_scratchpad = backward.scratchpad_desc();
  entry->impl = std::string(forward.impl_info_str()) + " / " + backward.impl_info_str();
  entry->forward = dnnl::pooling_forward(forward);
  entry->backward = dnnl::pooling_backward(backward);
  CachedPool& result = *entry;
  g_pools->emplace(key, std::move(entry));
  return result;
}

std::string PoolKeyOf(ffi::Span<const int64_t> x, PoolKey* key) {
  if (x.size() != 4 || x[1] % 2 != 0 || x[2] % 2 != 0) return "expects NHWC input of even height and width";
  *key = PoolKey(x[0], x[1], x[2], x[3]);
  return "";
}

ffi::Error PoolForward(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y,
                       ffi::ResultBuffer<ffi::U8> workspace) {
  PoolKey key;
  std::string problem = PoolKeyOf(x.dimensions(), &key);
  if (!problem.empty()) return ffi::Error::InvalidArgument(problem);
  return Guarded([&] {
    CachedPool& p = LookupPool(key);
    if (workspace->size_bytes() != p.workspace.get_size()) throw std::runtime_error("pool workspace size");
    p.forward.execute(*g_stream, {{DNNL_ARG_SRC, dnnl::memory(p.src, *g_engine, x.untyped_data())},
                                  {DNNL_ARG_DST, dnnl::memory(p.dst, *g_engine, y->untyped_data())},
                                  {DNNL_ARG_WORKSPACE, dnnl::memory(p.workspace, *g_engine,
                                                                    workspace->untyped_data())},
                                  {DNNL_ARG_SCRATCHPAD, Scratchpad(p.forward_scratchpad)}});
  });
}

ffi::Error PoolBackward(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::U8> workspace, ffi::ResultBuffer<ffi::F32> dx) {
  PoolKey key;
  std::string problem = PoolKeyOf(dx->dimensions(), &key);
  if (!problem.empty()) return ffi::Error::InvalidArgument(problem);
  return Guarded([&] {
    CachedPool& p = LookupPool(key);
    if (workspace.size_bytes() != p.workspace.get_size()) throw std::runtime_error("pool workspace size");
    p.backward.execute(*g_stream, {{DNNL_ARG_DIFF_DST, dnnl::memory(p.dst, *g_engine, dy.untyped_data())},
                                   {DNNL_ARG_DIFF_SRC, dnnl::memory(p.src, *g_engine, dx->untyped_data())},
                                   {DNNL_ARG_WORKSPACE, dnnl::memory(p.workspace, *g_engine,
                                                                     workspace.untyped_data())},
                                   {DNNL_ARG_SCRATCHPAD, Scratchpad(p.backward_scratchpad)}});
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

// Bytes of the pooling workspace at input shape [n, h, w, c], and oneDNN's implementation names (forward /
// backward) written to `out`; -1 on error (the message in `out`).
int64_t kdjax_onednn_pool_workspace(int64_t n, int64_t h, int64_t w, int64_t c, char* out, int size) {
  try {
    std::lock_guard<std::mutex> lock(g_mutex);
    CachedPool& p = LookupPool(PoolKey(n, h, w, c));
    std::snprintf(out, size, "%s", p.impl.c_str());
    return static_cast<int64_t>(p.workspace.get_size());
  } catch (const std::exception& error) {
    std::snprintf(out, size, "%s", error.what());
    return -1;
  }
}

int kdjax_onednn_version() {
  const dnnl_version_t* version = dnnl_version();
  return version->major * 10000 + version->minor * 100 + version->patch;
}

}  // extern "C"
