// mi-bench-peer: this library's side of bench/compare, built like an application
// (it links mi::managed_identity_impl and includes only the declarations).
//
//   mi-bench-peer cached N RESOURCE       one acquisition from the endpoint, then N
//                                         acquisitions from the cache, timed
//   mi-bench-peer concurrent N RESOURCE   N threads acquire RESOURCE at once on a cold
//                                         cache (one shared client)
//
// Prints one JSON object (no token) and exits 0, or an error on stderr and exits 1.
// The endpoint comes from the environment, as for any program using the library.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "managed_identity.hpp"

namespace {

using Clock = std::chrono::steady_clock;

int fail(const mi::Error& e) {
  std::fprintf(stderr, "mi-bench-peer: %s\n", e.message().c_str());
  return 1;
}

int cached(long n, const char* resource) {
  auto t0 = Clock::now();
  auto client = mi::New(mi::SystemAssigned());
  if (!client) return fail(client.error());
  auto first = client->AcquireToken(mi::Context::Background(), resource);
  if (!first) return fail(first.error());
  auto t1 = Clock::now();
  size_t bytes = 0;
  for (long i = 0; i < n; ++i) {
    auto token = client->AcquireToken(mi::Context::Background(), resource);
    if (!token || token->token_source != mi::TokenSource::Cache) {
      std::fprintf(stderr, "mi-bench-peer: call %ld was not served from the cache\n", i);
      return 1;
    }
    bytes += token->access_token.size();
  }
  auto t2 = Clock::now();
  std::printf("{\"first_ms\": %.3f, \"calls\": %ld, \"per_call_ns\": %.1f, \"token_chars\": %zu}\n",
              std::chrono::duration<double, std::milli>(t1 - t0).count(), n,
              std::chrono::duration<double, std::nano>(t2 - t1).count() / static_cast<double>(n),
              n > 0 ? bytes / static_cast<size_t>(n) : 0);
  return 0;
}

int concurrent(long n, const char* resource) {
  auto client = mi::New(mi::SystemAssigned());
  if (!client) return fail(client.error());
  std::mutex m;
  std::condition_variable cv;
  bool open = false;
  long ready = 0;
  std::atomic<long> ok{0};
  std::vector<Clock::time_point> done(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (long i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      {
        std::unique_lock<std::mutex> lock(m);
        ++ready;
        cv.notify_all();
        cv.wait(lock, [&] { return open; });
      }
      auto token = client->AcquireToken(mi::Context::Background(), resource);
      done[static_cast<size_t>(i)] = Clock::now();
      if (token) ok.fetch_add(1);
      else std::fprintf(stderr, "mi-bench-peer: %s\n", token.error().message().c_str());
    });
  }
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return ready == n; });
  }
  auto start = Clock::now();
  {
    std::lock_guard<std::mutex> lock(m);
    open = true;
  }
  cv.notify_all();
  for (auto& t : threads) t.join();
  auto last = *std::max_element(done.begin(), done.end());
  std::printf("{\"callers\": %ld, \"ok\": %ld, \"last_ms\": %.3f}\n", n, ok.load(),
              std::chrono::duration<double, std::milli>(last - start).count());
  return ok.load() == n ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: mi-bench-peer cached|concurrent N RESOURCE\n");
    return 2;
  }
  long n = std::strtol(argv[2], nullptr, 10);
  if (n < 1 || n > 100000000) {
    std::fprintf(stderr, "mi-bench-peer: N must be 1..100000000\n");
    return 2;
  }
  if (std::strcmp(argv[1], "cached") == 0) return cached(n, argv[3]);
  if (std::strcmp(argv[1], "concurrent") == 0) return concurrent(n, argv[3]);
  std::fprintf(stderr, "mi-bench-peer: unknown mode '%s'\n", argv[1]);
  return 2;
}
