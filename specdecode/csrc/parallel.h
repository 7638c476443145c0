// Work split for the kernels' passes: threads claim pieces as they get to them.
#pragma once
#include <ATen/Parallel.h>
#include <algorithm>
#include <atomic>
#include <cstdint>

namespace specdecode {

// Calls f(begin, end) over [0, count) in pieces claimed from a shared counter by the pass's threads, each
// piece's work depending on the piece only. at::parallel_for splits the range evenly up front, so a pass
// waits for its slowest thread; when another process (an HTTP client, a tokenizer) takes a core for a
// few milliseconds, the thread on that core is late with its whole share. Here the threads still running
// take over the pieces it has not started. About 8 pieces a thread keep the counter off the cost.
template <typename F>
void parallel_pieces(int64_t count, const F& f) {
  if (count <= 0) return;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), count);
  const int64_t piece = std::max<int64_t>(1, count / (8 * threads));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t begin; (begin = next.fetch_add(piece)) < count;) f(begin, std::min(count, begin + piece));
  });
}

}  // namespace specdecode
