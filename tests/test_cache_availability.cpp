// The cache stays available whatever user code does (docs/protocol.md §6): a transport, a logger
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
#include "cache_support.hpp"

using namespace std::chrono_literals;
using support::CleanEnv;
using testsrv::Reply;
using testsrv::Request;
using testsrv::Server;

namespace {

using support::fresh_cache;

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

// ---- 4. user code that throws never wedges a key ---------------------------------------------

#if MI_DETAIL_EXCEPTIONS

TEST_CASE("leader: a transport that throws becomes a network error, and the key is not wedged") {
  CleanEnv env;
  fresh_cache();
  auto http = std::make_shared<ScriptedTransport>([](int call) -> mi::Result<mi::HttpResponse> {
    if (call == 1) throw std::runtime_error("transport exploded");
    return token_response("after-throw");
  });
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http), mi::WithRetryPolicyDisabled());
  REQUIRE(client);
  Outcome first = acquire(*client, "https://throw-leader");
  CHECK(first.kind == "network");
  CHECK(first.message.find("exception") != std::string::npos);
  CHECK(first.retryable);
  Outcome second = acquire(*client, "https://throw-leader");
  CHECK(second.kind == "ok");
  CHECK(second.token.access_token == "after-throw");
  CHECK(http->calls() == 2);
}

TEST_CASE("leader: a non-standard exception from the transport is a network error too, and is retried") {
  CleanEnv env;
  fresh_cache();
  auto http = std::make_shared<ScriptedTransport>([](int call) -> mi::Result<mi::HttpResponse> {
    if (call == 1) throw 42;
    return token_response("after-int");
  });
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http), mi::WithSleep(sleeps.hook()));
  REQUIRE(client);
  Outcome first = acquire(*client, "https://throw-int");
  CHECK(first.kind == "ok");
  CHECK(first.token.access_token == "after-int");
  CHECK(http->calls() == 2);
  CHECK(sleeps.get().size() == 1);
}

TEST_CASE("leader: a logger that throws is ignored") {
  CleanEnv env;
  fresh_cache();
  auto http = std::make_shared<ScriptedTransport>([](int) { return token_response("logged"); });
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http),
                        mi::WithLogger([](mi::LogLevel, std::string_view) { throw std::runtime_error("log sink down"); }));
  REQUIRE(client);
  Outcome first = acquire(*client, "https://throw-logger");
  CHECK(first.kind == "ok");
  CHECK(first.token.access_token == "logged");
  Outcome second = acquire(*client, "https://throw-logger");
  CHECK(second.kind == "ok");
  CHECK(second.token.token_source == mi::TokenSource::Cache);
  CHECK(http->calls() == 1);
}

TEST_CASE("leader: a sleep hook that throws escapes, but the flight lands") {
  CleanEnv env;
  fresh_cache();
  auto http = std::make_shared<ScriptedTransport>([](int call) -> mi::Result<mi::HttpResponse> {
    if (call == 1) return support::response(503, "{}");
    return token_response("after-sleep");
  });
  auto sleeps = std::make_shared<std::atomic<int>>(0);
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http), mi::WithSleep([sleeps](std::chrono::milliseconds) {
                          if (sleeps->fetch_add(1) == 0) throw std::runtime_error("sleep interrupted");
                        }));
  REQUIRE(client);
  Outcome first = acquire(*client, "https://throw-sleep");
  CHECK(first.kind == "exception: sleep interrupted");
  Outcome second = acquire(*client, "https://throw-sleep");
  CHECK(second.kind == "ok");
  CHECK(second.token.access_token == "after-sleep");
}

TEST_CASE("waiter: the leader's transport throws; the waiter gets the outcome instead of waiting forever") {
  CleanEnv env;
  fresh_cache();
  auto gate = std::make_shared<Gate>();
  auto http = std::make_shared<ScriptedTransport>([gate](int call) -> mi::Result<mi::HttpResponse> {
    if (call == 1) {
      gate->enter();
      throw std::runtime_error("transport exploded");
    }
    return token_response("late");
  });
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http), mi::WithRetryPolicyDisabled());
  REQUIRE(client);
  Outcome leader, waiter;
  std::thread leader_thread([&] { leader = acquire(*client, "https://throw-waiter"); });
  gate->wait_entered();
  std::thread waiter_thread([&] { waiter = acquire(*client, "https://throw-waiter"); });
  std::this_thread::sleep_for(200ms);  // lets the waiter join (if it is late, it leads and succeeds)
  gate->release();
  leader_thread.join();
  waiter_thread.join();
  CHECK(leader.kind == "network");
  INFO("waiter: ", waiter.kind);
  CHECK((waiter.kind == "network" || waiter.kind == "ok"));
  CHECK(acquire(*client, "https://throw-waiter").kind == "ok");
}

TEST_CASE("waiter: the leader's logger throws; the waiter still gets the token") {
  CleanEnv env;
  fresh_cache();
  auto gate = std::make_shared<Gate>();
  auto http = std::make_shared<ScriptedTransport>([gate](int call) {
    if (call == 1) gate->enter();
    return token_response("shared-" + std::to_string(call));
  });
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http),
                        mi::WithLogger([](mi::LogLevel, std::string_view) { throw std::runtime_error("log sink down"); }));
  REQUIRE(client);
  Outcome leader, waiter;
  std::thread leader_thread([&] { leader = acquire(*client, "https://throw-logger-waiter"); });
  gate->wait_entered();
  std::thread waiter_thread([&] { waiter = acquire(*client, "https://throw-logger-waiter"); });
  std::this_thread::sleep_for(200ms);
  gate->release();
  leader_thread.join();
  waiter_thread.join();
  CHECK(leader.kind == "ok");
  CHECK(waiter.kind == "ok");
  CHECK(waiter.token.access_token == "shared-1");
}

TEST_CASE("proactive refresh: a transport that throws returns the cached token and the refresh ends") {
  CleanEnv env;
  fresh_cache();
  auto fail = std::make_shared<std::atomic<bool>>(false);
  auto http = std::make_shared<ScriptedTransport>([fail](int call) -> mi::Result<mi::HttpResponse> {
    if (fail->load()) throw std::runtime_error("transport exploded");
    return token_response("r-" + std::to_string(call), ",\"refresh_in\":\"60\"");
  });
  ManualClock clock;
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http), mi::WithClock(clock.hook()));
  REQUIRE(client);
  REQUIRE(acquire(*client, "https://throw-refresh").kind == "ok");
  fail->store(true);
  clock.advance(120);  // past refresh_on
  Outcome during = acquire(*client, "https://throw-refresh");
  CHECK(during.kind == "ok");
  CHECK(during.token.token_source == mi::TokenSource::Cache);
  CHECK(during.token.access_token == "r-1");
  fail->store(false);
  clock.advance(600);  // past any cool-down
  Outcome after = acquire(*client, "https://throw-refresh");
  CHECK(after.kind == "ok");
  CHECK(after.token.token_source == mi::TokenSource::IdentityProvider);
}

TEST_CASE("proactive refresh: a logger that throws is ignored and the refresh ends") {
  CleanEnv env;
  fresh_cache();
  auto fail = std::make_shared<std::atomic<bool>>(false);
  auto http = std::make_shared<ScriptedTransport>([fail](int call) -> mi::Result<mi::HttpResponse> {
    if (fail->load()) return support::response(500, "{}");
    return token_response("l-" + std::to_string(call), ",\"refresh_in\":\"60\"");
  });
  ManualClock clock;
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http), mi::WithClock(clock.hook()),
                        mi::WithLogger([](mi::LogLevel, std::string_view) { throw std::runtime_error("log sink down"); }));
  REQUIRE(client);
  REQUIRE(acquire(*client, "https://throw-logger-refresh").kind == "ok");
  clock.advance(120);
  Outcome refreshed = acquire(*client, "https://throw-logger-refresh");
  CHECK(refreshed.kind == "ok");
  CHECK(refreshed.token.token_source == mi::TokenSource::IdentityProvider);
  CHECK(refreshed.token.access_token == "l-2");
  // A failing refresh logs a warning, which throws too.
  fail->store(true);
  clock.advance(120);
  Outcome failed = acquire(*client, "https://throw-logger-refresh");
  CHECK(failed.kind == "ok");
  CHECK(failed.token.token_source == mi::TokenSource::Cache);
  CHECK(failed.token.access_token == "l-2");
  fail->store(false);
  clock.advance(600);
  Outcome again = acquire(*client, "https://throw-logger-refresh");
  CHECK(again.kind == "ok");
  CHECK(again.token.token_source == mi::TokenSource::IdentityProvider);
}

#endif  // MI_DETAIL_EXCEPTIONS

// ---- 5. a logger may call AcquireToken for the same key ----------------------------------------

namespace {

// A log sink that authenticates with the same identity: every line it gets makes it call
// AcquireToken for `resource` (not from within itself), each call bounded so a deadlock fails.
struct SelfAuthenticatingSink {
  std::shared_ptr<mi::Client*> client = std::make_shared<mi::Client*>(nullptr);
  std::shared_ptr<std::vector<std::string>> outcomes = std::make_shared<std::vector<std::string>>();
  std::shared_ptr<std::vector<std::string>> lines = std::make_shared<std::vector<std::string>>();
  std::shared_ptr<std::mutex> mutex = std::make_shared<std::mutex>();

  std::function<void(mi::LogLevel, std::string_view)> hook(std::string resource) const {
    auto c = client;
    auto o = outcomes;
    auto l = lines;
    auto m = mutex;
    return [c, o, l, m, resource](mi::LogLevel, std::string_view line) {
      static thread_local bool inside = false;
      if (inside || *c == nullptr) return;
      inside = true;
      std::string kind = acquire(**c, resource, 3000ms).kind;
      inside = false;
      std::lock_guard<std::mutex> lock(*m);
      o->push_back(kind);
      l->emplace_back(line);
    };
  }
};

}  // namespace

TEST_CASE("a logger that calls AcquireToken for the same key from the log callback does not deadlock") {
  CleanEnv env;
  fresh_cache();
  auto http = std::make_shared<ScriptedTransport>([](int call) -> mi::Result<mi::HttpResponse> {
    if (call == 1) return support::response(503, "{}");  // a retry warning during the flight
    return token_response("sink-" + std::to_string(call), ",\"refresh_in\":\"60\"");
  });
  SelfAuthenticatingSink sink;
  ManualClock clock;
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http), mi::WithSleep(sleeps.hook()),
                        mi::WithClock(clock.hook()), mi::WithLogger(sink.hook("https://log-sink")));
  REQUIRE(client);
  mi::Client c = *client;
  *sink.client = &c;

  Outcome miss = acquire(c, "https://log-sink");
  CHECK(miss.kind == "ok");
  CHECK(miss.token.access_token == "sink-2");
  {
    std::lock_guard<std::mutex> lock(*sink.mutex);
    CHECK(any_contains(*sink.lines, "acquired a token"));
    CHECK(any_contains(*sink.lines, "retrying"));
    for (const auto& o : *sink.outcomes) CHECK(o == "ok");
    sink.outcomes->clear();
  }

  // The proactive refresh logs too.
  clock.advance(120);
  Outcome refresh = acquire(c, "https://log-sink");
  CHECK(refresh.kind == "ok");
  CHECK(refresh.token.token_source == mi::TokenSource::IdentityProvider);
  {
    std::lock_guard<std::mutex> lock(*sink.mutex);
    CHECK_FALSE(sink.outcomes->empty());
    for (const auto& o : *sink.outcomes) CHECK(o == "ok");
  }
  *sink.client = nullptr;
}

// ---- 6. a failing proactive refresh: one attempt, then a cool-down ------------------------------

TEST_CASE("a failing proactive refresh makes one attempt, then waits a doubling cool-down") {
  CleanEnv env;
  fresh_cache();
  auto outage = std::make_shared<std::atomic<bool>>(false);
  support::TokenMint mint("cool");
  Server server([&mint, outage](const Request&) {
    if (outage->load()) return Reply::http(503, "{\"error\":\"unavailable\"}");
    return Reply::json(support::imds_body(mint.next(), 86400, ",\"refresh_in\":\"3600\""));
  });
  support::set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", server.base());
  ManualClock clock;
  support::SleepRecorder sleeps;
  auto warnings = std::make_shared<std::vector<std::string>>();
  auto wm = std::make_shared<std::mutex>();
  auto client = mi::New(mi::SystemAssigned(), mi::WithClock(clock.hook()), mi::WithSleep(sleeps.hook()),
                        mi::WithLogger([warnings, wm](mi::LogLevel level, std::string_view line) {
                          std::lock_guard<std::mutex> lock(*wm);
                          if (level == mi::LogLevel::Warning) warnings->emplace_back(line);
                        }));
  REQUIRE(client);
  const std::string resource = "https://cool-down";
  REQUIRE(acquire(*client, resource).kind == "ok");
  REQUIRE(server.request_count() == 1);

  outage->store(true);
  clock.advance(3700);  // past refresh_on
  Outcome hit = acquire(*client, resource);
  CHECK(hit.kind == "ok");
  CHECK(hit.token.token_source == mi::TokenSource::Cache);
  CHECK(hit.token.access_token == "cool-1");
  CHECK(server.request_count() == 2);  // one attempt: no retries
  CHECK(sleeps.get().empty());         // and no retry waits
  {
    std::lock_guard<std::mutex> lock(*wm);
    CHECK(any_contains(*warnings, "refresh"));
  }

  // Cool-downs of 30, 60, 120, 240, 300, 300 s: nothing reaches the endpoint before each ends.
  size_t requests = 2;
  for (long long cool_down : {30LL, 60LL, 120LL, 240LL, 300LL, 300LL}) {
    CAPTURE(cool_down);
    CHECK(acquire(*client, resource).token.token_source == mi::TokenSource::Cache);
    clock.advance(cool_down - 1);
    CHECK(acquire(*client, resource).token.access_token == "cool-1");
    CHECK(server.request_count() == requests);
    clock.advance(1);
    CHECK(acquire(*client, resource).token.access_token == "cool-1");
    CHECK(server.request_count() == ++requests);
  }
  CHECK(sleeps.get().empty());

  // A token stored by any successful request (here one with claims) ends the cool-down...
  outage->store(false);
  Outcome claims = acquire(*client, resource, 5000ms, {mi::WithClaims("{\"access_token\":{}}")});
  REQUIRE(claims.kind == "ok");
  CHECK(claims.token.access_token == "cool-2");
  requests = server.request_count();
  // ... and resets the doubling: the next failed refresh cools down for 30 s again.
  outage->store(true);
  clock.advance(3700);
  CHECK(acquire(*client, resource).token.access_token == "cool-2");
  CHECK(server.request_count() == ++requests);
  clock.advance(29);
  CHECK(acquire(*client, resource).token.access_token == "cool-2");
  CHECK(server.request_count() == requests);
  clock.advance(1);
  CHECK(acquire(*client, resource).token.access_token == "cool-2");
  CHECK(server.request_count() == ++requests);
}

TEST_CASE("a successful refresh after a cool-down refreshes normally again") {
  CleanEnv env;
  fresh_cache();
  auto outage = std::make_shared<std::atomic<bool>>(false);
  support::TokenMint mint("heal");
  Server server([&mint, outage](const Request&) {
    if (outage->load()) return Reply::http(500, "{}");
    return Reply::json(support::imds_body(mint.next(), 86400, ",\"refresh_in\":\"3600\""));
  });
  support::set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", server.base());
  ManualClock clock;
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithClock(clock.hook()), mi::WithSleep(sleeps.hook()));
  REQUIRE(client);
  const std::string resource = "https://heal";
  REQUIRE(acquire(*client, resource).kind == "ok");
  outage->store(true);
  clock.advance(3700);
  CHECK(acquire(*client, resource).token.access_token == "heal-1");  // failed: cool-down 30 s
  clock.advance(30);
  CHECK(acquire(*client, resource).token.access_token == "heal-1");  // failed: cool-down 60 s
  CHECK(server.request_count() == 3);
  outage->store(false);
  clock.advance(60);
  Outcome healed = acquire(*client, resource);
  CHECK(healed.token.access_token == "heal-2");
  CHECK(healed.token.token_source == mi::TokenSource::IdentityProvider);
  CHECK(server.request_count() == 4);
  // The new token's refresh time comes 3600 s later; then one refresh, at once.
  clock.advance(3700);
  CHECK(acquire(*client, resource).token.access_token == "heal-3");
  CHECK(server.request_count() == 5);
  CHECK(sleeps.get().empty());
}

TEST_CASE("a cool-down never holds back a request once the token is within 5 minutes of expiry") {
  CleanEnv env;
  fresh_cache();
  auto outage = std::make_shared<std::atomic<bool>>(false);
  support::TokenMint mint("edge");
  Server server([&mint, outage](const Request&) {
    if (outage->load()) return Reply::http(500, "{}");
    return Reply::json(support::imds_body(mint.next(), 1000, ",\"refresh_in\":\"650\""));
  });
  support::set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", server.base());
  ManualClock clock;
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithClock(clock.hook()), mi::WithSleep(sleeps.hook()),
                        mi::WithRetryPolicyDisabled());
  REQUIRE(client);
  const std::string resource = "https://edge";
  REQUIRE(acquire(*client, resource).kind == "ok");
  outage->store(true);
  clock.advance(690);  // past refresh_on: the refresh fails, cool-down 30 s
  CHECK(acquire(*client, resource).token.access_token == "edge-1");
  CHECK(server.request_count() == 2);
  outage->store(false);
  clock.advance(15);  // still cooling down, but the token expires within 5 minutes: a miss
  Outcome miss = acquire(*client, resource);
  CHECK(miss.token.access_token == "edge-2");
  CHECK(miss.token.token_source == mi::TokenSource::IdentityProvider);
  CHECK(server.request_count() == 3);
}

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
  mi::detail::Token a_token{"token-of-a", "Bearer", now + std::chrono::hours(2), {}};
  mi::detail::Token b_token{"token-of-b", "Bearer", now + std::chrono::hours(2), {}};
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
