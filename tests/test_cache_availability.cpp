// The cache stays available whatever user code does (SPEC §6): a transport, a logger
// or a sleep hook that throws never wedges a key; a logger may call AcquireToken for
// the same key; a failing proactive refresh makes one attempt and then cools down;
// retryable() is one rule whoever built the error; and separate TokenCache objects
// never see each other's tokens. Every call that used to hang is bounded by its
// context, so a regression fails instead of hanging.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#define MI_AZURE_ARC_HIMDS_PATH "/nonexistent/mi-tests/himds"
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include <condition_variable>
#include <stdexcept>
#include <thread>

#include "test_support.hpp"

using namespace std::chrono_literals;
using support::CleanEnv;
using testsrv::Reply;
using testsrv::Request;
using testsrv::Server;

namespace {

void fresh_cache() { mi::detail::TokenCache::instance().clear(); }

// What a call returned, in a form doctest prints: "ok", the Errc's name, or
// "exception: <what>" when an exception escaped AcquireToken.
struct Outcome {
  std::string kind;
  mi::AuthResult token;
  std::string message;
  bool retryable = false;
};

Outcome acquire(const mi::Client& client, const std::string& resource, std::chrono::milliseconds bound = 5000ms,
                std::vector<mi::AcquireTokenOption> options = {}) {
  Outcome out;
#if MI_DETAIL_EXCEPTIONS
  try {
#endif
    auto r = client.AcquireToken(mi::Context::Background().WithTimeout(bound), resource, std::move(options));
    if (r) {
      out.kind = "ok";
      out.token = *r;
    } else {
      out.kind = std::string(mi::to_string(r.error().code()));
      out.message = r.error().message();
      out.retryable = r.error().retryable();
    }
#if MI_DETAIL_EXCEPTIONS
  } catch (const std::exception& e) {
    out.kind = std::string("exception: ") + e.what();
  } catch (...) {
    out.kind = "exception";
  }
#endif
  return out;
}

// A transport answering from a script: `step(n)` for the n-th call (from 1); it may throw.
class ScriptedTransport : public mi::HttpClient {
 public:
  using Step = std::function<mi::Result<mi::HttpResponse>(int call)>;
  explicit ScriptedTransport(Step step) : step_(std::move(step)) {}
  mi::Result<mi::HttpResponse> Do(const mi::Context&, const mi::HttpRequest&) override { return step_(++calls_); }
  int calls() const { return calls_.load(); }

 private:
  Step step_;
  std::atomic<int> calls_{0};
};

mi::HttpResponse token_response(const std::string& token, const std::string& extra = "") {
  return support::response(200, support::imds_body(token, 86400, extra));
}

// Lets a test hold a transport call until it has set up the next step.
class Gate {
 public:
  void enter() {
    std::unique_lock<std::mutex> lock(mutex_);
    entered_ = true;
    cv_.notify_all();
    cv_.wait(lock, [this] { return released_; });
  }
  void wait_entered() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [this] { return entered_; });
  }
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    released_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool entered_ = false, released_ = false;
};

// A wall clock the test moves forward by hand.
struct ManualClock {
  std::shared_ptr<std::atomic<long long>> offset = std::make_shared<std::atomic<long long>>(0);
  std::function<std::chrono::system_clock::time_point()> hook() const {
    auto o = offset;
    return [o] { return std::chrono::system_clock::now() + std::chrono::seconds(o->load()); };
  }
  void advance(long long seconds) { offset->fetch_add(seconds); }
};

bool any_contains(const std::vector<std::string>& lines, const std::string& text) {
  for (const auto& l : lines)
    if (l.find(text) != std::string::npos) return true;
  return false;
}

}  // namespace

// ---- 10. retryable() is one rule ------------------------------------------------------------------

TEST_CASE("retryable() is decided from the code and status, whoever built the error") {
  CHECK(mi::Error(mi::Errc::network, "custom transport: connection refused").retryable());
  CHECK(mi::Error(mi::Errc::timeout, "custom transport: took too long").retryable());
  CHECK_FALSE(mi::Error(mi::Errc::canceled, "canceled").retryable());
  CHECK_FALSE(mi::Error(mi::Errc::tls, "bad certificate").retryable());
  CHECK_FALSE(mi::Error(mi::Errc::invalid_response, "garbage").retryable());
  CHECK_FALSE(mi::Error(mi::Errc::http_status, "no status").retryable());
  CHECK_FALSE(mi::Error(mi::Errc::invalid_argument, "bad").retryable());
}

TEST_CASE("a network error from a custom HttpClient is as retryable as the built-in transport's") {
  CleanEnv env;
  fresh_cache();
  auto http = std::make_shared<ScriptedTransport>(
      [](int) -> mi::Result<mi::HttpResponse> { return mi::Error(mi::Errc::network, "connection refused"); });
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http), mi::WithRetryPolicyDisabled());
  REQUIRE(client);
  Outcome custom = acquire(*client, "https://retryable-custom");
  CHECK(custom.kind == "network");
  CHECK(custom.retryable);

  // The built-in transport, against a port where nothing listens any more.
  uint16_t port = 0;
  {
    Server closed([](const Request&) { return Reply::json("{}"); });
    port = closed.port();
  }
  support::set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:" + std::to_string(port));
  auto builtin = mi::New(mi::SystemAssigned(), mi::WithRetryPolicyDisabled());
  REQUIRE(builtin);
  Outcome refused = acquire(*builtin, "https://retryable-builtin");
  CHECK(refused.kind == "network");
  CHECK(refused.retryable == custom.retryable);
}

TEST_CASE("retryable() for statuses follows the retry policy of the source") {
  CleanEnv env;
  fresh_cache();
  auto status = std::make_shared<std::atomic<int>>(0);
  Server server([status](const Request&) { return Reply::http(status->load(), "{}"); });
  support::set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", server.base());
  auto client = mi::New(mi::SystemAssigned(), mi::WithRetryPolicyDisabled());
  REQUIRE(client);
  for (int s : {404, 408, 410, 429, 500, 501, 503, 599}) {
    CAPTURE(s);
    status->store(s);
    Outcome o = acquire(*client, "https://status-" + std::to_string(s));
    CHECK(o.kind == "http_status");
    CHECK(o.retryable);
  }
  for (int s : {400, 401, 403, 302}) {
    CAPTURE(s);
    status->store(s);
    Outcome o = acquire(*client, "https://status-" + std::to_string(s));
    CHECK(o.kind == "http_status");
    CHECK_FALSE(o.retryable);
  }
}

// ---- 11. separate TokenCache objects never share tokens -------------------------------------------

TEST_CASE("a second TokenCache never returns the first one's token") {
  auto now = std::chrono::system_clock::now();
  const mi::detail::CacheKey key{mi::Source::DefaultToIMDS, mi::IDKind::SystemAssigned, "", "https://two-caches"};
  mi::detail::CachedToken a_token{"token-of-a", "Bearer", now + std::chrono::hours(2), {}};
  mi::detail::CachedToken b_token{"token-of-b", "Bearer", now + std::chrono::hours(2), {}};
  mi::detail::TokenCache a, b;
  REQUIRE(a.store(key, a_token, now));
  mi::AuthResult out;
  REQUIRE(a.find(key, now, out) == mi::detail::TokenCache::Hit::fresh);  // this thread keeps a copy
  REQUIRE(a.find(key, now, out) == mi::detail::TokenCache::Hit::fresh);  // and uses it
  CHECK(out.access_token == "token-of-a");

  mi::AuthResult from_b;
  CHECK(b.find(key, now, from_b) == mi::detail::TokenCache::Hit::miss);
  REQUIRE(b.store(key, b_token, now));
  REQUIRE(b.find(key, now, from_b) == mi::detail::TokenCache::Hit::fresh);
  CHECK(from_b.access_token == "token-of-b");
  REQUIRE(b.find(key, now, from_b) == mi::detail::TokenCache::Hit::fresh);
  CHECK(from_b.access_token == "token-of-b");
  REQUIRE(a.find(key, now, out) == mi::detail::TokenCache::Hit::fresh);
  CHECK(out.access_token == "token-of-a");
}
