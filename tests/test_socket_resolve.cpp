// Host-name resolution is bounded like every other wait (docs/protocol.md §8): getaddrinfo
// cannot be interrupted, so the library looks names up on a helper thread. Here the
// transport is given a resolver (its run-time seam) that blocks on names under ".blocked.test"
// until the test releases it, so "the call returned while the lookup was still
// blocked" is a fact the test reads, not a timing.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>

#if defined(_WIN32)
#include <winsock2.h>
#include <ws2tcpip.h>
#else
#include <netdb.h>
#endif

namespace fake_dns {
std::mutex mutex;
std::condition_variable changed;
bool released = false;
int tickets = 0;       // blocked lookups that may return before release(), one each
int blocked_now = 0;   // lookups currently blocked
int max_blocked = 0;   // the most ever blocked at once since reset()
int finished = 0;      // blocked lookups that have returned
int lookups = 0;       // every call, numeric or not
int instant = 0;       // lookups of "<anything>.instant.test"

// "<anything>.blocked.test" blocks until release() (or a ticket), then resolves to
// 127.0.0.1; "<anything>.instant.test" resolves to 127.0.0.1 at once; "nowhere.invalid"
// fails; everything else goes to the real resolver.
int getaddrinfo(const char* node, const char* service, const addrinfo* hints, addrinfo** res) {
  std::string name = node != nullptr ? node : "";
  {
    std::lock_guard<std::mutex> lock(mutex);
    ++lookups;
  }
  auto ends_with = [&name](const std::string& suffix) {
    return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (hints != nullptr && (hints->ai_flags & AI_NUMERICHOST) == 0 && ends_with(".instant.test")) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      ++instant;
    }
    addrinfo numeric = *hints;
    numeric.ai_flags |= AI_NUMERICHOST;
    return ::getaddrinfo("127.0.0.1", service, &numeric, res);
  }
  if (hints != nullptr && (hints->ai_flags & AI_NUMERICHOST) == 0 && ends_with(".blocked.test")) {
    std::unique_lock<std::mutex> lock(mutex);
    ++blocked_now;
    if (blocked_now > max_blocked) max_blocked = blocked_now;
    changed.notify_all();
    changed.wait_for(lock, std::chrono::seconds(60), [] { return released || tickets > 0; });
    if (!released && tickets > 0) --tickets;
    --blocked_now;
    ++finished;
    changed.notify_all();
    lock.unlock();
    addrinfo numeric = *hints;
    numeric.ai_flags |= AI_NUMERICHOST;
    return ::getaddrinfo("127.0.0.1", service, &numeric, res);
  }
  if (name == "nowhere.invalid") return EAI_NONAME;
  return ::getaddrinfo(node, service, hints, res);
}

void reset() {
  std::lock_guard<std::mutex> lock(mutex);
  released = false;
  tickets = 0;
  max_blocked = blocked_now;
  finished = 0;
  lookups = 0;
  instant = 0;
}

int blocked() {
  std::lock_guard<std::mutex> lock(mutex);
  return blocked_now;
}

// Lets one blocked lookup return.
void release_one() {
  std::lock_guard<std::mutex> lock(mutex);
  ++tickets;
  changed.notify_all();
}

// Lets blocked lookups finish and waits until they have (so none outlives the test).
void release_and_drain() {
  std::unique_lock<std::mutex> lock(mutex);
  released = true;
  changed.notify_all();
  changed.wait_for(lock, std::chrono::seconds(30), [] { return blocked_now == 0; });
}
}  // namespace fake_dns

#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include "loopback_server.hpp"
#include "test_support.hpp"
#include "cache_support.hpp"

#include <thread>

#if defined(__linux__)
#include <dirent.h>
#endif

using mi::Errc;
using mi::HttpRequest;
using mi::detail::SocketTransport;

namespace {
// The built-in transport, resolving names with the fake resolver.
SocketTransport fake_transport(std::chrono::milliseconds connect_timeout = std::chrono::milliseconds(5000)) {
  return SocketTransport(connect_timeout, &fake_dns::getaddrinfo);
}

HttpRequest get(const std::string& url) {
  HttpRequest request;
  request.method = "GET";
  request.url = url;
  request.headers = {{"Metadata", "true"}};
  return request;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// The threads of this process (Linux), or -1 where the test cannot tell.
int live_threads() {
#if defined(__linux__)
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return -1;
  int n = 0;
  while (dirent* entry = readdir(dir))
    if (entry->d_name[0] != '.') ++n;
  closedir(dir);
  return n;
#else
  return -1;
#endif
}

// Leaves `n` lookups blocked in the fake resolver, their callers gone (a short connect timeout).
void stall_lookups(SocketTransport& transport, int n) {
  for (int i = 0; i < 200 && fake_dns::blocked() < n; ++i)
    (void)transport.Do(mi::Context::Background(), get("http://stall" + std::to_string(i) + ".blocked.test:80/x"));
  REQUIRE(fake_dns::blocked() == n);
}

// Cancels `ctx` as soon as a lookup is blocked in the fake resolver.
std::thread cancel_once_blocked(const mi::Context& ctx) {
  return std::thread([ctx] {
    std::unique_lock<std::mutex> lock(fake_dns::mutex);
    fake_dns::changed.wait_for(lock, std::chrono::seconds(30), [] { return fake_dns::blocked_now > 0; });
    lock.unlock();
    ctx.Cancel();
  });
}
}  // namespace

TEST_CASE("resolve: a host name is looked up off the caller's thread and then used") {
  fake_dns::reset();
  testsrv::Server server([](const testsrv::Request&) { return testsrv::Reply::json("{\"ok\":true}"); });
  SocketTransport transport = fake_transport();
  const std::string url = "http://imds.blocked.test:" + std::to_string(server.port()) + "/x";

  // Released in advance: the lookup returns at once, and the request reaches the server.
  {
    std::lock_guard<std::mutex> lock(fake_dns::mutex);
    fake_dns::released = true;
  }
  auto result = transport.Do(mi::Context::Background(), get(url));
  REQUIRE_MESSAGE(result.ok(), (result.ok() ? "" : result.error().message()));
  CHECK(result->status == 200);
  CHECK(server.request_count() == 1);
  CHECK(server.last().header("Host") == "imds.blocked.test:" + std::to_string(server.port()));

  // Released while the caller waits: the caller picks the answer up and goes on.
  fake_dns::reset();
  std::thread releaser([] {
    std::unique_lock<std::mutex> lock(fake_dns::mutex);
    fake_dns::changed.wait_for(lock, std::chrono::seconds(30), [] { return fake_dns::blocked_now > 0; });
    fake_dns::released = true;
    fake_dns::changed.notify_all();
  });
  result = transport.Do(mi::Context::Background(), get(url));
  releaser.join();
  REQUIRE_MESSAGE(result.ok(), (result.ok() ? "" : result.error().message()));
  CHECK(server.request_count() == 2);
}

TEST_CASE("resolve: an IP literal never reaches the name resolver's thread") {
  fake_dns::reset();
  testsrv::Server server([](const testsrv::Request&) { return testsrv::Reply::json("{}"); });
  SocketTransport transport = fake_transport();
  auto result = transport.Do(mi::Context::Background(), get(server.url("/x")));
  REQUIRE(result.ok());
  std::lock_guard<std::mutex> lock(fake_dns::mutex);
  CHECK(fake_dns::lookups == 1);  // the numeric conversion only
  CHECK(fake_dns::finished == 0);
}

TEST_CASE("resolve: Cancel() ends the wait for a blocked lookup") {
  fake_dns::reset();
  SocketTransport transport = fake_transport();
  mi::Context ctx = mi::Context::Background().WithCancel();
  std::thread canceler = cancel_once_blocked(ctx);
  auto result = transport.Do(ctx, get("http://cancel.blocked.test:80/x"));
  const int still_blocked = fake_dns::blocked();
  canceler.join();
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code() == Errc::canceled);
  CHECK(contains(result.error().message(), "resolving the host name cancel.blocked.test"));
  CHECK(still_blocked == 1);  // the call did not wait for getaddrinfo
  fake_dns::release_and_drain();
  CHECK(fake_dns::blocked() == 0);
}

TEST_CASE("resolve: the context's deadline and the connect timeout bound a blocked lookup") {
  SUBCASE("deadline") {
    fake_dns::reset();
    SocketTransport transport = fake_transport();
    auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::milliseconds(100)),
                               get("http://deadline.blocked.test:80/x"));
    const int still_blocked = fake_dns::blocked();
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == Errc::timeout);
    CHECK(contains(result.error().message(), "resolving the host name deadline.blocked.test"));
    CHECK(still_blocked == 1);
    fake_dns::release_and_drain();
  }
  SUBCASE("connect timeout") {
    fake_dns::reset();
    SocketTransport transport = fake_transport(std::chrono::milliseconds(100));
    auto result = transport.Do(mi::Context::Background(), get("http://connect.blocked.test:80/x"));
    const int still_blocked = fake_dns::blocked();
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == Errc::timeout);
    CHECK(contains(result.error().message(), "resolving the host name connect.blocked.test timed out after 100 ms"));
    CHECK(contains(result.error().message(), "DNS"));
    CHECK(still_blocked == 1);
    fake_dns::release_and_drain();
  }
}

TEST_CASE("resolve: an abandoned lookup finishes alone, and a failed one is a network error") {
  fake_dns::reset();
  SocketTransport transport = fake_transport(std::chrono::milliseconds(50));
  for (int i = 0; i < 3; ++i) {  // three callers give up; three lookups are left behind
    auto result = transport.Do(mi::Context::Background(), get("http://abandoned" + std::to_string(i) + ".blocked.test:80/x"));
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == Errc::timeout);
  }
  CHECK(fake_dns::blocked() == 3);
  fake_dns::release_and_drain();  // they return into freed callers' state: ASan would see a misuse
  {
    std::lock_guard<std::mutex> lock(fake_dns::mutex);
    CHECK(fake_dns::finished == 3);
  }

  auto result = transport.Do(mi::Context::Background(), get("http://nowhere.invalid:80/x"));
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code() == Errc::network);
  CHECK(contains(result.error().message(), "could not resolve the host name nowhere.invalid"));
  CHECK(result.error().retryable());
}

TEST_CASE("resolve: a client aimed at a host name honours Cancel() through AcquireToken") {
  support::CleanEnv env;
  fake_dns::reset();
  support::fresh_cache();
  support::set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://pod.blocked.test:1");  // IMDS, at a name that blocks
  auto client = mi::New(mi::SystemAssigned(),
                        mi::WithHTTPClient(std::make_shared<SocketTransport>(std::chrono::milliseconds(5000),
                                                                             &fake_dns::getaddrinfo)));
  REQUIRE(client);
  mi::Context ctx = mi::Context::Background().WithCancel();
  std::thread canceler = cancel_once_blocked(ctx);
  auto token = client->AcquireToken(ctx, "https://vault.azure.net");
  const int still_blocked = fake_dns::blocked();
  canceler.join();
  REQUIRE_FALSE(token.ok());
  CHECK(token.error().code() == Errc::canceled);
  CHECK(still_blocked == 1);
  fake_dns::release_and_drain();
}

TEST_CASE("resolve: at most 4 lookups at once; 40 callers with short deadlines leave at most 4 threads") {
  fake_dns::reset();
  const int threads_before = live_threads();
  SocketTransport transport = fake_transport(std::chrono::milliseconds(20));
  for (int i = 0; i < 40; ++i) {
    auto result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::milliseconds(20)),
                               get("http://pile" + std::to_string(i) + ".blocked.test:80/x"));
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().code() == Errc::timeout);
    CHECK(contains(result.error().message(), "pile" + std::to_string(i) + ".blocked.test"));
  }
  const int threads_after = live_threads();
  CHECK(fake_dns::blocked() <= 4);
  {
    std::lock_guard<std::mutex> lock(fake_dns::mutex);
    CHECK(fake_dns::max_blocked <= 4);
  }
  if (threads_before >= 0) CHECK(threads_after - threads_before <= 4);
  fake_dns::release_and_drain();
}

TEST_CASE("resolve: a lookup waiting for a free slot proceeds once one frees") {
  fake_dns::reset();
  testsrv::Server server([](const testsrv::Request&) { return testsrv::Reply::json("{\"ok\":true}"); });
  SocketTransport stalled = fake_transport(std::chrono::milliseconds(20));
  stall_lookups(stalled, 4);

  SocketTransport transport = fake_transport();
  std::atomic<bool> done{false};
  mi::Result<mi::HttpResponse> result = mi::detail::make_error(Errc::network, "not run");
  std::thread caller([&] {
    result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::seconds(60)),
                          get("http://waiting.instant.test:" + std::to_string(server.port()) + "/x"));
    done = true;
  });
  // While every slot is taken, the lookup does not start (a negative fact: waiting longer
  // could only make it more certain).
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  {
    std::lock_guard<std::mutex> lock(fake_dns::mutex);
    CHECK(fake_dns::instant == 0);
  }
  CHECK_FALSE(done.load());
  fake_dns::release_one();  // one stalled lookup returns: its slot goes to the waiting one
  caller.join();
  REQUIRE_MESSAGE(result.ok(), (result.ok() ? "" : result.error().message()));
  CHECK(result->status == 200);
  CHECK(fake_dns::blocked() == 3);
  fake_dns::release_and_drain();
}

TEST_CASE("resolve: a lookup waiting for a free slot honours Cancel() and its deadline") {
  fake_dns::reset();
  SocketTransport stalled = fake_transport(std::chrono::milliseconds(20));
  stall_lookups(stalled, 4);
  SocketTransport transport = fake_transport();

  mi::Context ctx = mi::Context::Background().WithCancel();
  std::thread canceler([ctx] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ctx.Cancel();
  });
  auto result = transport.Do(ctx, get("http://canceled.instant.test:1/x"));
  canceler.join();
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code() == Errc::canceled);
  CHECK(contains(result.error().message(), "canceled.instant.test"));

  result = transport.Do(mi::Context::Background().WithTimeout(std::chrono::milliseconds(50)),
                        get("http://late.instant.test:1/x"));
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code() == Errc::timeout);
  CHECK(contains(result.error().message(), "late.instant.test"));
  {
    std::lock_guard<std::mutex> lock(fake_dns::mutex);
    CHECK(fake_dns::instant == 0);
  }
  fake_dns::release_and_drain();
}
