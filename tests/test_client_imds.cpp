// IMDS end to end over real loopback sockets: the exact request (docs/protocol.md §2), the
// cache (§6), coalescing and proactive refresh, retries (§8), timeouts and
// cancellation, and errors. The real IMDS address is only ever checked through
// an injected transport that sends nothing.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#define MI_AZURE_ARC_HIMDS_PATH "/nonexistent/mi-tests/himds"
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include <regex>
#include <set>
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

// A server that mints IMDS tokens and points IMDS at itself.
struct ImdsFixture {
  CleanEnv env;
  support::TokenMint mint{"imds-token"};
  Server server;
  explicit ImdsFixture(std::function<Reply(const Request&, support::TokenMint&)> handler = nullptr)
      : server([this, handler](const Request& r) {
          if (handler) return handler(r, mint);
          return Reply::json(support::imds_body(mint.next()));
        }) {
    support::set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", server.base());
    fresh_cache();
  }
};

bool is_uuid_v4(const std::string& s) {
  static const std::regex re("^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");
  return std::regex_match(s, re);
}

}  // namespace

TEST_CASE("the default IMDS URL, seen through an injected transport that sends nothing") {
  CleanEnv env;
  fresh_cache();
  auto http = std::make_shared<support::RecordingHttpClient>(
      [](const mi::HttpRequest&) { return support::response(200, support::imds_body("t-default")); });
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  REQUIRE(client);
  CHECK(client->source() == mi::Source::DefaultToIMDS);
  auto token = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  REQUIRE(token);
  REQUIRE(http->count() == 1);
  mi::HttpRequest req = http->requests()[0];
  CHECK(req.method == "GET");
  // Checked only: the recording transport sends nothing.
  const std::string expected_default_url = "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net";
  CHECK(req.url == expected_default_url);
  CHECK(support::header_of(req, "Metadata") == "true");
  CHECK(req.body.empty());
}

TEST_CASE("AZURE_POD_IDENTITY_AUTHORITY_HOST: trailing slash dropped, http:// assumed") {
  CleanEnv env;
  fresh_cache();
  auto http = std::make_shared<support::RecordingHttpClient>(
      [](const mi::HttpRequest&) { return support::response(200, support::imds_body("t-pod")); });
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  REQUIRE(client);
  support::set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://10.0.0.1:2579/");
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://pod-a"));
  support::set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "10.0.0.1:2579");
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://pod-b"));
  auto reqs = http->requests();
  REQUIRE(reqs.size() == 2);
  CHECK(reqs[0].url == "http://10.0.0.1:2579/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fpod-a");
  CHECK(reqs[1].url == "http://10.0.0.1:2579/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fpod-b");
}

TEST_CASE("the exact IMDS request for each identity kind, over loopback") {
  struct Case {
    mi::ID id;
    const char* param;
    const char* value;
  };
  std::vector<Case> cases = {
      {mi::SystemAssigned(), nullptr, nullptr},
      {mi::UserAssignedClientID("9d3f2d6c-3c41-4d2f-9a66-4c3e5e1c9f10"), "client_id", "9d3f2d6c-3c41-4d2f-9a66-4c3e5e1c9f10"},
      {mi::UserAssignedObjectID("0a1b2c3d-0000-4000-8000-000000000001"), "object_id", "0a1b2c3d-0000-4000-8000-000000000001"},
      {mi::UserAssignedResourceID("/subscriptions/s/resourcegroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id"),
       "msi_res_id", "/subscriptions/s/resourcegroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id"},
  };
  for (const Case& c : cases) {
    ImdsFixture fx;
    CAPTURE(c.param ? c.param : "system");
    auto client = mi::New(c.id);
    REQUIRE(client);
    CHECK(client->id().kind() == c.id.kind());
    auto token = client->AcquireToken(mi::Context::Background(), "https://management.azure.com");
    REQUIRE(token);
    REQUIRE(fx.server.request_count() == 1);
    Request r = fx.server.last();
    CHECK(r.method == "GET");
    CHECK(r.path == "/metadata/identity/oauth2/token");
    CHECK(r.version == "HTTP/1.1");
    auto q = r.query_list();
    std::vector<std::pair<std::string, std::string>> expected = {{"api-version", "2018-02-01"}};
    if (c.param) expected.emplace_back(c.param, c.value);
    expected.emplace_back("resource", "https://management.azure.com");
    std::sort(expected.begin(), expected.end());
    CHECK(q == expected);
    if (c.param && std::string(c.param) == "msi_res_id")
      CHECK(r.raw_query.find("msi_res_id=%2Fsubscriptions%2Fs%2Fresourcegroups") != std::string::npos);
    CHECK(r.header("Metadata") == "true");
    CHECK(r.header("x-client-SKU") == "managed-identity-cpp");
    CHECK(r.header("x-client-Ver") == MI_VERSION_STRING);
    CHECK(r.header("User-Agent") == std::string("managed-identity-cpp/") + MI_VERSION_STRING);
    CHECK(r.header("Host") == "127.0.0.1:" + std::to_string(fx.server.port()));
    CHECK(is_uuid_v4(r.header("x-ms-client-request-id")));
    CHECK_FALSE(r.has_header("Authorization"));
    CHECK_FALSE(r.has_header("Content-Length"));
    CHECK(r.body.empty());
    CHECK(token->access_token == "imds-token-1");
    CHECK(token->token_type == "Bearer");
    CHECK(token->resource == "https://management.azure.com");
    CHECK(token->token_source == mi::TokenSource::IdentityProvider);
  }
}

TEST_CASE("each acquisition gets a fresh request id") {
  ImdsFixture fx;
  auto client = mi::New(mi::SystemAssigned());
  REQUIRE(client);
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://one"));
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://two"));
  auto reqs = fx.server.requests();
  REQUIRE(reqs.size() == 2);
  CHECK(reqs[0].header("x-ms-client-request-id") != reqs[1].header("x-ms-client-request-id"));
}

TEST_CASE("hostile resources are percent-encoded and never split the request") {
  const std::vector<std::string> resources = {
      "https://x.example/with space", "https://x.example/a&b=c", "https://x.example/#frag",
      "https://x.example/caf\xC3\xA9", "https://x.example/\r\nX-Injected: yes", "https://x.example/?q=1+2%20"};
  for (const std::string& resource : resources) {
    ImdsFixture fx;
    CAPTURE(resource);
    auto client = mi::New(mi::UserAssignedClientID("id with space&x=\r\n"));
    REQUIRE(client);
    auto token = client->AcquireToken(mi::Context::Background(), resource);
    REQUIRE(token);
    REQUIRE(fx.server.request_count() == 1);
    Request r = fx.server.last();
    CHECK_FALSE(r.has_header("X-Injected"));
    auto q = r.query();
    CHECK(q["resource"] == resource);
    CHECK(q["client_id"] == "id with space&x=\r\n");
    CHECK(q.size() == 3);
    for (char c : r.raw_query) {
      bool unreserved = std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_' || c == '~';
      CHECK((unreserved || c == '%' || c == '=' || c == '&'));
    }
    CHECK(r.raw_query.find("%20") != std::string::npos);
  }
}

TEST_CASE("first call from the endpoint, second from the cache, shared by a new client") {
  ImdsFixture fx;
  auto a = mi::New(mi::SystemAssigned());
  REQUIRE(a);
  auto t1 = a->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  REQUIRE(t1);
  CHECK(t1->token_source == mi::TokenSource::IdentityProvider);
  auto t2 = a->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  REQUIRE(t2);
  CHECK(t2->token_source == mi::TokenSource::Cache);
  CHECK(t2->access_token == t1->access_token);
  CHECK(t2->expires_on == t1->expires_on);
  auto b = mi::New(mi::SystemAssigned());
  REQUIRE(b);
  auto t3 = b->AcquireToken(mi::Context::Background(), "HTTPS://VAULT.azure.net");  // case-insensitive key
  REQUIRE(t3);
  CHECK(t3->token_source == mi::TokenSource::Cache);
  CHECK(t3->access_token == t1->access_token);
  CHECK(fx.server.request_count() == 1);
  // A copy of a client shares its state and the cache.
  mi::Client copy = *a;
  CHECK(copy.AcquireToken(mi::Context::Background(), "https://vault.azure.net")->token_source == mi::TokenSource::Cache);
}

TEST_CASE("/.default is trimmed once and shares the cache entry") {
  ImdsFixture fx;
  auto client = mi::New(mi::SystemAssigned());
  REQUIRE(client);
  auto t1 = client->AcquireToken(mi::Context::Background(), "https://graph.microsoft.com/.default");
  REQUIRE(t1);
  CHECK(t1->resource == "https://graph.microsoft.com");
  CHECK(fx.server.last().query()["resource"] == "https://graph.microsoft.com");
  auto t2 = client->AcquireToken(mi::Context::Background(), "https://graph.microsoft.com");
  REQUIRE(t2);
  CHECK(t2->token_source == mi::TokenSource::Cache);
  CHECK(fx.server.request_count() == 1);
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://x/.default/.default"));
  CHECK(fx.server.last().query()["resource"] == "https://x/.default");
}

TEST_CASE("the cache key separates identity kinds, IDs and resources") {
  ImdsFixture fx;
  auto by_client = mi::New(mi::UserAssignedClientID("same-text"));
  auto by_object = mi::New(mi::UserAssignedObjectID("same-text"));
  auto system = mi::New(mi::SystemAssigned());
  REQUIRE(by_client);
  REQUIRE(by_object);
  REQUIRE(system);
  auto a = by_client->AcquireToken(mi::Context::Background(), "https://r");
  auto b = by_object->AcquireToken(mi::Context::Background(), "https://r");
  auto c = system->AcquireToken(mi::Context::Background(), "https://r");
  auto d = system->AcquireToken(mi::Context::Background(), "https://other");
  REQUIRE((a && b && c && d));
  CHECK(fx.server.request_count() == 4);
  std::set<std::string> tokens = {a->access_token, b->access_token, c->access_token, d->access_token};
  CHECK(tokens.size() == 4);
  // The ID value compares case-insensitively.
  auto upper = mi::New(mi::UserAssignedClientID("SAME-TEXT"));
  REQUIRE(upper);
  auto e = upper->AcquireToken(mi::Context::Background(), "https://r");
  REQUIRE(e);
  CHECK(e->token_source == mi::TokenSource::Cache);
  CHECK(e->access_token == a->access_token);
}

TEST_CASE("WithClaims skips the cache read, always fetches, and caches the new token") {
  ImdsFixture fx;
  auto client = mi::New(mi::SystemAssigned());
  REQUIRE(client);
  auto t1 = client->AcquireToken(mi::Context::Background(), "https://claims");
  REQUIRE(t1);
  auto t2 = client->AcquireToken(mi::Context::Background(), "https://claims", mi::WithClaims("{\"access_token\":{}}"));
  REQUIRE(t2);
  CHECK(t2->token_source == mi::TokenSource::IdentityProvider);
  CHECK(t2->access_token != t1->access_token);
  CHECK(fx.server.request_count() == 2);
  CHECK(fx.server.last().raw.find("access_token") == std::string::npos);  // the claims are not sent
  auto t3 = client->AcquireToken(mi::Context::Background(), "https://claims",
                                 std::vector<mi::AcquireTokenOption>{mi::WithClaims("c")});
  REQUIRE(t3);
  CHECK(fx.server.request_count() == 3);
  auto t4 = client->AcquireToken(mi::Context::Background(), "https://claims");
  REQUIRE(t4);
  CHECK(t4->token_source == mi::TokenSource::Cache);
  CHECK(t4->access_token == t3->access_token);
  // Empty claims behave like none.
  auto t5 = client->AcquireToken(mi::Context::Background(), "https://claims", mi::WithClaims(""));
  CHECK(t5->token_source == mi::TokenSource::Cache);
  CHECK(fx.server.request_count() == 3);
}

TEST_CASE("a token expiring within 5 minutes is returned but not cached") {
  ImdsFixture fx([](const Request&, support::TokenMint& mint) {
    return Reply::json(support::imds_body(mint.next(), 240));
  });
  auto client = mi::New(mi::SystemAssigned());
  REQUIRE(client);
  auto t1 = client->AcquireToken(mi::Context::Background(), "https://short");
  auto t2 = client->AcquireToken(mi::Context::Background(), "https://short");
  REQUIRE((t1 && t2));
  CHECK(t2->token_source == mi::TokenSource::IdentityProvider);
  CHECK(fx.server.request_count() == 2);
}

TEST_CASE("a cached token is not used within 5 minutes of its expiry") {
  ImdsFixture fx;
  auto offset = std::make_shared<std::atomic<long long>>(0);
  auto clock = [offset] { return std::chrono::system_clock::now() + std::chrono::seconds(offset->load()); };
  auto client = mi::New(mi::SystemAssigned(), mi::WithClock(clock));
  REQUIRE(client);
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://margin"));
  offset->store(3600 - 360);  // 6 minutes left: still used
  CHECK(client->AcquireToken(mi::Context::Background(), "https://margin")->token_source == mi::TokenSource::Cache);
  offset->store(3600 - 240);  // 4 minutes left: fetched again
  CHECK(client->AcquireToken(mi::Context::Background(), "https://margin")->token_source ==
        mi::TokenSource::IdentityProvider);
  CHECK(fx.server.request_count() == 2);
}

TEST_CASE("64 threads on a cold cache make exactly one request and all get the token") {
  ImdsFixture fx([](const Request&, support::TokenMint& mint) {
    Reply r = Reply::json(support::imds_body(mint.next()));
    r.delay_ms = 300;
    return r;
  });
  auto client = mi::New(mi::SystemAssigned());
  REQUIRE(client);
  std::vector<std::thread> threads;
  std::vector<std::string> tokens(64);
  std::atomic<int> failures{0};
  for (int i = 0; i < 64; ++i)
    threads.emplace_back([&, i] {
      auto t = client->AcquireToken(mi::Context::Background(), "https://coalesce");
      if (!t) {
        ++failures;
        return;
      }
      tokens[static_cast<size_t>(i)] = t->access_token;
    });
  for (auto& t : threads) t.join();
  CHECK(failures == 0);
  CHECK(fx.server.request_count() == 1);
  for (const auto& t : tokens) CHECK(t == "imds-token-1");
}

TEST_CASE("a waiter whose own deadline passes gives up without disturbing the request") {
  ImdsFixture fx([](const Request&, support::TokenMint& mint) {
    Reply r = Reply::json(support::imds_body(mint.next()));
    r.delay_ms = 800;
    return r;
  });
  auto client = mi::New(mi::SystemAssigned());
  REQUIRE(client);
  std::thread leader([&] { CHECK(client->AcquireToken(mi::Context::Background(), "https://waiter")); });
  std::this_thread::sleep_for(100ms);
  auto waiter = client->AcquireToken(mi::Context::Background().WithTimeout(100ms), "https://waiter");
  REQUIRE_FALSE(waiter);
  CHECK(waiter.error().code() == mi::Errc::timeout);
  leader.join();
  CHECK(fx.server.request_count() == 1);
}

TEST_CASE("proactive refresh: one caller refreshes, the others get the cached token") {
  auto refresh_phase = std::make_shared<std::atomic<bool>>(false);
  ImdsFixture fx([refresh_phase](const Request&, support::TokenMint& mint) {
    Reply r = Reply::json(support::imds_body(mint.next(), 86400, ",\"refresh_in\":\"3600\""));
    if (refresh_phase->load()) r.delay_ms = 400;
    return r;
  });
  auto offset = std::make_shared<std::atomic<long long>>(0);
  auto clock = [offset] { return std::chrono::system_clock::now() + std::chrono::seconds(offset->load()); };
  auto client = mi::New(mi::SystemAssigned(), mi::WithClock(clock));
  REQUIRE(client);
  auto first = client->AcquireToken(mi::Context::Background(), "https://refresh");
  REQUIRE(first);
  CHECK(first->refresh_on > first->expires_on - std::chrono::hours(24));
  CHECK(first->refresh_on < first->expires_on);
  offset->store(3700);  // past refresh_on
  refresh_phase->store(true);
  std::atomic<int> fresh{0}, cached{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 16; ++i)
    threads.emplace_back([&] {
      auto t = client->AcquireToken(mi::Context::Background(), "https://refresh");
      REQUIRE(t);
      if (t->token_source == mi::TokenSource::IdentityProvider) {
        CHECK(t->access_token == "imds-token-2");
        ++fresh;
      } else {
        CHECK(t->access_token == "imds-token-1");
        ++cached;
      }
    });
  for (auto& t : threads) t.join();
  CHECK(fresh == 1);
  CHECK(cached == 15);
  CHECK(fx.server.request_count() == 2);
  // The refreshed token is in the cache now.
  offset->store(3800);
  auto after = client->AcquireToken(mi::Context::Background(), "https://refresh");
  CHECK(after->access_token == "imds-token-2");
  CHECK(after->token_source == mi::TokenSource::Cache);
}

TEST_CASE("proactive refresh at half-life when the endpoint sends no refresh_in") {
  ImdsFixture fx([](const Request&, support::TokenMint& mint) {
    return Reply::json(support::imds_body(mint.next(), 86400));
  });
  auto offset = std::make_shared<std::atomic<long long>>(0);
  auto clock = [offset] { return std::chrono::system_clock::now() + std::chrono::seconds(offset->load()); };
  auto client = mi::New(mi::SystemAssigned(), mi::WithClock(clock));
  REQUIRE(client);
  auto first = client->AcquireToken(mi::Context::Background(), "https://halflife");
  REQUIRE(first);
  auto half = std::chrono::duration_cast<std::chrono::seconds>(first->refresh_on.time_since_epoch()).count() -
              support::now_unix();
  CHECK(half > 43200 - 60);
  CHECK(half < 43200 + 60);
  offset->store(40000);
  CHECK(client->AcquireToken(mi::Context::Background(), "https://halflife")->token_source == mi::TokenSource::Cache);
  offset->store(43300);
  CHECK(client->AcquireToken(mi::Context::Background(), "https://halflife")->token_source ==
        mi::TokenSource::IdentityProvider);
  CHECK(fx.server.request_count() == 2);
}

TEST_CASE("a failing proactive refresh returns the cached token and logs the failure") {
  auto fail = std::make_shared<std::atomic<bool>>(false);
  ImdsFixture fx([fail](const Request&, support::TokenMint& mint) {
    if (fail->load()) return Reply::http(500, "{\"error\":\"server_error\",\"error_description\":\"boom\"}");
    return Reply::json(support::imds_body(mint.next(), 86400, ",\"refresh_in\":\"60\""));
  });
  auto offset = std::make_shared<std::atomic<long long>>(0);
  auto clock = [offset] { return std::chrono::system_clock::now() + std::chrono::seconds(offset->load()); };
  auto logs = std::make_shared<std::vector<std::string>>();
  auto client = mi::New(mi::SystemAssigned(), mi::WithClock(clock), mi::WithRetryPolicyDisabled(),
                        mi::WithLogger([logs](mi::LogLevel level, std::string_view m) {
                          if (level == mi::LogLevel::Warning) logs->emplace_back(m);
                        }));
  REQUIRE(client);
  auto first = client->AcquireToken(mi::Context::Background(), "https://refresh-fail");
  REQUIRE(first);
  fail->store(true);
  offset->store(120);
  auto second = client->AcquireToken(mi::Context::Background(), "https://refresh-fail");
  REQUIRE(second);
  CHECK(second->token_source == mi::TokenSource::Cache);
  CHECK(second->access_token == first->access_token);
  CHECK(fx.server.request_count() == 2);
  bool logged = false;
  for (const auto& l : *logs) logged = logged || l.find("refresh") != std::string::npos;
  CHECK(logged);
  // The failed refresh released its claim, and the key cools down for 30 s: the next call
  // gets the cached token without a request, and the first one after the cool-down tries again.
  auto third = client->AcquireToken(mi::Context::Background(), "https://refresh-fail");
  REQUIRE(third);
  CHECK(third->token_source == mi::TokenSource::Cache);
  CHECK(fx.server.request_count() == 2);
  offset->store(150);
  auto fourth = client->AcquireToken(mi::Context::Background(), "https://refresh-fail");
  REQUIRE(fourth);
  CHECK(fourth->token_source == mi::TokenSource::Cache);
  CHECK(fx.server.request_count() == 3);
}

TEST_CASE("retries: 500, 503 and 429 then success, with IMDS's exponential backoff") {
  auto statuses = std::make_shared<std::vector<int>>(std::vector<int>{500, 503, 429});
  auto index = std::make_shared<std::atomic<size_t>>(0);
  ImdsFixture fx([statuses, index](const Request&, support::TokenMint& mint) {
    size_t i = index->fetch_add(1);
    if (i < statuses->size()) return Reply::http((*statuses)[i], "");
    return Reply::json(support::imds_body(mint.next()));
  });
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithSleep(sleeps.hook()));
  REQUIRE(client);
  auto token = client->AcquireToken(mi::Context::Background(), "https://retry");
  REQUIRE(token);
  CHECK(fx.server.request_count() == 4);
  auto waits = sleeps.get();
  REQUIRE(waits.size() == 3);
  const long long base[] = {1000, 2000, 4000};
  for (size_t i = 0; i < 3; ++i) {
    CHECK(waits[i] >= base[i]);
    CHECK(waits[i] <= base[i] * 6 / 5);
  }
  // Retries carry the same request id.
  auto reqs = fx.server.requests();
  for (const auto& r : reqs) CHECK(r.header("x-ms-client-request-id") == reqs[0].header("x-ms-client-request-id"));
}

TEST_CASE("Retry-After in seconds and as an HTTP-date is honoured") {
  SUBCASE("seconds") {
    auto n = std::make_shared<std::atomic<int>>(0);
    ImdsFixture fx([n](const Request&, support::TokenMint& mint) {
      if (n->fetch_add(1) == 0) return Reply::http(429, "", {{"Retry-After", "7"}});
      return Reply::json(support::imds_body(mint.next()));
    });
    support::SleepRecorder sleeps;
    auto client = mi::New(mi::SystemAssigned(), mi::WithSleep(sleeps.hook()));
    REQUIRE(client->AcquireToken(mi::Context::Background(), "https://retry-after-s"));
    auto waits = sleeps.get();
    REQUIRE(waits.size() == 1);
    CHECK(waits[0] >= 7000);
    CHECK(waits[0] <= 8400);
  }
  SUBCASE("HTTP-date, against the injected clock") {
    // The clock says 2026-11-29 10:00:00 UTC; the server says retry at 10:00:09.
    auto fixed = std::chrono::system_clock::time_point(std::chrono::seconds(1795946400));
    auto n = std::make_shared<std::atomic<int>>(0);
    ImdsFixture fx([n](const Request&, support::TokenMint& mint) {
      if (n->fetch_add(1) == 0) return Reply::http(503, "", {{"Retry-After", "Sun, 29 Nov 2026 10:00:09 GMT"}});
      return Reply::json(support::imds_body(mint.next()));
    });
    support::SleepRecorder sleeps;
    auto client = mi::New(mi::SystemAssigned(), mi::WithSleep(sleeps.hook()), mi::WithClock([fixed] { return fixed; }));
    auto token = client->AcquireToken(mi::Context::Background(), "https://retry-after-date");
    REQUIRE(token);
    auto waits = sleeps.get();
    REQUIRE(waits.size() == 1);
    CHECK(waits[0] >= 9000);
    CHECK(waits[0] <= 10800);
  }
  SUBCASE("capped at 60 s") {
    auto n = std::make_shared<std::atomic<int>>(0);
    ImdsFixture fx([n](const Request&, support::TokenMint& mint) {
      if (n->fetch_add(1) == 0) return Reply::http(503, "", {{"Retry-After", "3600"}});
      return Reply::json(support::imds_body(mint.next()));
    });
    support::SleepRecorder sleeps;
    auto client = mi::New(mi::SystemAssigned(), mi::WithSleep(sleeps.hook()));
    REQUIRE(client->AcquireToken(mi::Context::Background(), "https://retry-after-cap"));
    REQUIRE(sleeps.get().size() == 1);
    CHECK(sleeps.get()[0] == 60000);
  }
}

TEST_CASE("410 from IMDS is retried up to 7 times, 10 s apart") {
  ImdsFixture fx([](const Request&, support::TokenMint&) { return Reply::http(410, "IMDS is being updated"); });
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithSleep(sleeps.hook()));
  auto token = client->AcquireToken(mi::Context::Background(), "https://gone");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::http_status);
  CHECK(token.error().status_code() == 410);
  CHECK(fx.server.request_count() == 8);
  for (long long w : sleeps.get()) {
    CHECK(w >= 10000);
    CHECK(w <= 12000);
  }
}

TEST_CASE("retries exhausted: the last status with the server's details and correlation id") {
  ImdsFixture fx([](const Request&, support::TokenMint&) {
    return Reply::http(503, "{\"error\":\"temporarily_unavailable\",\"error_description\":\"try later\","
                            "\"correlation_id\":\"0b2c7a5e-1111-2222-3333-444455556666\"}");
  });
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithSleep(sleeps.hook()));
  auto token = client->AcquireToken(mi::Context::Background(), "https://exhausted");
  REQUIRE_FALSE(token);
  const mi::Error& e = token.error();
  CHECK(e.code() == mi::Errc::http_status);
  CHECK(e.status_code() == 503);
  CHECK(e.error_code() == "temporarily_unavailable");
  CHECK(e.error_description() == "try later");
  CHECK(e.correlation_id() == "0b2c7a5e-1111-2222-3333-444455556666");
  CHECK(e.retryable());
  CHECK(e.source() == mi::Source::DefaultToIMDS);
  CHECK(e.message().find("503") != std::string::npos);
  CHECK(e.message().find("try later") != std::string::npos);
  CHECK(fx.server.request_count() == 4);
  CHECK(sleeps.get().size() == 3);
}

TEST_CASE("without a correlation id in the body, the error carries the request id sent") {
  ImdsFixture fx([](const Request&, support::TokenMint&) {
    return Reply::http(400, "{\"error\":\"invalid_request\",\"error_description\":\"Identity not found\"}");
  });
  auto client = mi::New(mi::UserAssignedClientID("nope"));
  auto token = client->AcquireToken(mi::Context::Background(), "https://nf");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::http_status);
  CHECK(token.error().status_code() == 400);
  CHECK_FALSE(token.error().retryable());
  CHECK(token.error().error_code() == "invalid_request");
  CHECK(token.error().error_description() == "Identity not found");
  CHECK(token.error().correlation_id() == fx.server.last().header("x-ms-client-request-id"));
  CHECK(fx.server.request_count() == 1);  // 400 is not retried
}

TEST_CASE("nested error bodies fill the error too") {
  ImdsFixture fx([](const Request&, support::TokenMint&) {
    return Reply::http(401, "{\"error\":{\"correlationId\":\"7f30f4d3-0f3a-41e0-a417-527f21b3848f\","
                            "\"code\":\"SecretHeaderNotFound\",\"message\":\"Secret is not found in the request headers.\"}}");
  });
  auto client = mi::New(mi::SystemAssigned());
  auto token = client->AcquireToken(mi::Context::Background(), "https://nested");
  REQUIRE_FALSE(token);
  CHECK(token.error().error_code() == "SecretHeaderNotFound");
  CHECK(token.error().error_description() == "Secret is not found in the request headers.");
  CHECK(token.error().correlation_id() == "7f30f4d3-0f3a-41e0-a417-527f21b3848f");
}

TEST_CASE("plain-text and HTML error bodies still say what happened") {
  ImdsFixture fx([](const Request&, support::TokenMint&) {
    return Reply::http(403, "<html><body>A socket operation was attempted to an unreachable network.</body></html>",
                       {{"Content-Type", "text/html"}});
  });
  auto client = mi::New(mi::SystemAssigned(), mi::WithRetryPolicyDisabled());
  auto token = client->AcquireToken(mi::Context::Background(), "https://html");
  REQUIRE_FALSE(token);
  CHECK(token.error().status_code() == 403);
  CHECK(token.error().message().find("unreachable network") != std::string::npos);
}

TEST_CASE("WithRetryPolicyDisabled makes one request") {
  ImdsFixture fx([](const Request&, support::TokenMint&) { return Reply::http(500, ""); });
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithRetryPolicyDisabled(), mi::WithSleep(sleeps.hook()));
  auto token = client->AcquireToken(mi::Context::Background(), "https://noretry");
  REQUIRE_FALSE(token);
  CHECK(token.error().status_code() == 500);
  CHECK(token.error().retryable());
  CHECK(fx.server.request_count() == 1);
  CHECK(sleeps.get().empty());
}

TEST_CASE("WithMaxRetries sets the number of retries") {
  ImdsFixture fx([](const Request&, support::TokenMint&) { return Reply::http(500, ""); });
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithMaxRetries(1), mi::WithSleep(sleeps.hook()));
  REQUIRE_FALSE(client->AcquireToken(mi::Context::Background(), "https://maxretries"));
  CHECK(fx.server.request_count() == 2);
}

TEST_CASE("transport errors are retried, then reported as network errors") {
  CleanEnv env;
  fresh_cache();
  uint16_t port;
  {
    Server closed([](const Request&) { return Reply::json("{}"); });
    port = closed.port();
  }
  support::set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:" + std::to_string(port));
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithSleep(sleeps.hook()));
  auto token = client->AcquireToken(mi::Context::Background(), "https://refused");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::network);
  CHECK(token.error().retryable());
  CHECK(token.error().status_code() == 0);
  CHECK(sleeps.get().size() == 3);
}

TEST_CASE("a server that never answers: timeout within the context's deadline") {
  ImdsFixture fx([](const Request&, support::TokenMint&) {
    Reply r;
    r.hang = true;
    return r;
  });
  auto client = mi::New(mi::SystemAssigned());
  auto start = std::chrono::steady_clock::now();
  auto token = client->AcquireToken(mi::Context::Background().WithTimeout(400ms), "https://hang");
  auto took = std::chrono::steady_clock::now() - start;
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::timeout);
  CHECK(token.error().retryable());
  CHECK(took < 10s);  // generous: this is not a timing benchmark
  fx.server.stop();
}

TEST_CASE("the per-attempt timeout applies, and the attempt is retried") {
  ImdsFixture fx([](const Request&, support::TokenMint&) {
    Reply r;
    r.hang = true;
    return r;
  });
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithTimeouts(1000ms, 200ms), mi::WithMaxRetries(1),
                        mi::WithSleep(sleeps.hook()));
  auto token = client->AcquireToken(mi::Context::Background(), "https://attempt-timeout");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::timeout);
  CHECK(fx.server.connection_count() == 2);
  fx.server.stop();
}

TEST_CASE("Cancel from another thread returns canceled promptly") {
  ImdsFixture fx([](const Request&, support::TokenMint&) {
    Reply r;
    r.hang = true;
    return r;
  });
  auto client = mi::New(mi::SystemAssigned());
  mi::Context ctx = mi::Context::Background().WithCancel();
  std::thread canceler([ctx] {
    std::this_thread::sleep_for(150ms);
    ctx.Cancel();
  });
  auto start = std::chrono::steady_clock::now();
  auto token = client->AcquireToken(ctx, "https://cancel");
  auto took = std::chrono::steady_clock::now() - start;
  canceler.join();
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::canceled);
  CHECK_FALSE(token.error().retryable());
  CHECK(took < 5s);
  fx.server.stop();
}

TEST_CASE("a wait between retries that would pass the deadline ends in timeout, naming the last status") {
  ImdsFixture fx([](const Request&, support::TokenMint&) { return Reply::http(503, "", {{"Retry-After", "30"}}); });
  auto client = mi::New(mi::SystemAssigned());
  auto start = std::chrono::steady_clock::now();
  auto token = client->AcquireToken(mi::Context::Background().WithTimeout(2s), "https://deadline-wait");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::timeout);
  CHECK(token.error().message().find("503") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - start < 10s);
}

TEST_CASE("unusable success bodies are invalid_response, not retried, not cached, token never in the message") {
  const std::string secret_token = "SECRET-TOKEN-eyJ0eXAiOiJKV1QiLCJhbGciOi";
  const std::vector<std::string> bodies = {
      "not json " + secret_token,
      "{\"access_token\":\"" + secret_token + "\"}",  // no expiry
      "{\"access_token\":\"" + secret_token + "\",\"expires_on\":\"garbage\"}",
      "{\"access_token\":\"\",\"expires_in\":3600}",
      "{\"access_token\":12345,\"expires_in\":3600}",
      "[\"" + secret_token + "\"]",
      "",
  };
  for (const std::string& body : bodies) {
    CAPTURE(body);
    ImdsFixture fx([body](const Request&, support::TokenMint&) { return Reply::http(200, body); });
    auto client = mi::New(mi::SystemAssigned());
    auto token = client->AcquireToken(mi::Context::Background(), "https://bad-body");
    REQUIRE_FALSE(token);
    CHECK(token.error().code() == mi::Errc::invalid_response);
    CHECK_FALSE(token.error().retryable());
    CHECK(token.error().message().find(secret_token) == std::string::npos);
    CHECK(fx.server.request_count() == 1);
    CHECK_FALSE(support::cached(mi::SystemAssigned(), "https://bad-body"));
  }
}

TEST_CASE("202 counts as success") {
  ImdsFixture fx([](const Request&, support::TokenMint& mint) { return Reply::http(202, support::imds_body(mint.next())); });
  auto client = mi::New(mi::SystemAssigned());
  CHECK(client->AcquireToken(mi::Context::Background(), "https://accepted"));
}

TEST_CASE("a redirect is an http_status error and is not followed") {
  Server target([](const Request&) { return Reply::json(support::imds_body("should-not-be-fetched")); });
  ImdsFixture fx([&target](const Request&, support::TokenMint&) {
    return Reply::http(302, "", {{"Location", target.url()}});
  });
  auto client = mi::New(mi::SystemAssigned());
  auto token = client->AcquireToken(mi::Context::Background(), "https://redirect");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::http_status);
  CHECK(token.error().status_code() == 302);
  CHECK(token.error().message().find("redirect") != std::string::npos);
  CHECK(target.request_count() == 0);
}

TEST_CASE("a malformed AZURE_POD_IDENTITY_AUTHORITY_HOST is invalid_argument") {
  CleanEnv env;
  fresh_cache();
  auto client = mi::New(mi::SystemAssigned());
  REQUIRE(client);
  for (const char* bad : {"ftp://10.0.0.1", "http://exa mple", "http://host:99999"}) {
    CAPTURE(bad);
    support::set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", bad);
    auto token = client->AcquireToken(mi::Context::Background(), "https://bad-host");
    REQUIRE_FALSE(token);
    CHECK(token.error().code() == mi::Errc::invalid_argument);
    CHECK(token.error().message().find("AZURE_POD_IDENTITY_AUTHORITY_HOST") != std::string::npos);
  }
}

TEST_CASE("logs never contain the token") {
  ImdsFixture fx;
  auto logs = std::make_shared<std::vector<std::string>>();
  auto client = mi::New(mi::SystemAssigned(), mi::WithLogger([logs](mi::LogLevel, std::string_view m) {
                          logs->emplace_back(m);
                        }));
  auto token = client->AcquireToken(mi::Context::Background(), "https://logged");
  REQUIRE(token);
  REQUIRE_FALSE(logs->empty());
  for (const auto& line : *logs) CHECK(line.find(token->access_token) == std::string::npos);
}

TEST_CASE("endpoint text in errors is made printable and capped") {
  std::string huge(100000, 'd');
  ImdsFixture fx([huge](const Request&, support::TokenMint&) {
    return Reply::http(400, "{\"error\":\"bad\\r\\nline\",\"error_description\":\"" + huge + "\"}");
  });
  auto client = mi::New(mi::SystemAssigned());
  auto token = client->AcquireToken(mi::Context::Background(), "https://sanitized");
  REQUIRE_FALSE(token);
  CHECK(token.error().error_code() == "bad  line");  // each control character shown as a space
  CHECK(token.error().error_description().size() < 600);
  CHECK(token.error().message().size() < 2000);
  for (char c : token.error().message()) CHECK(static_cast<unsigned char>(c) >= 0x20);
}

TEST_CASE("requests with claims never coalesce: concurrent ones each reach the endpoint") {
  ImdsFixture fx([](const Request&, support::TokenMint& mint) {
    Reply r = Reply::json(support::imds_body(mint.next()));
    r.delay_ms = 200;
    return r;
  });
  auto client = mi::New(mi::SystemAssigned());
  REQUIRE(client);
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&] {
      if (client->AcquireToken(mi::Context::Background(), "https://claims-concurrent", mi::WithClaims("c"))) ++ok;
    });
  for (auto& t : threads) t.join();
  CHECK(ok == 8);
  CHECK(fx.server.request_count() == 8);
}

TEST_CASE("IMDS ignores client capabilities and sends no revocation hash with claims") {
  ImdsFixture fx;
  auto client = mi::New(mi::SystemAssigned(), mi::WithClientCapabilities({"cp1"}));
  REQUIRE(client);
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://capabilities"));
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://capabilities", mi::WithClaims("c")));
  REQUIRE(fx.server.request_count() == 2);
  for (const Request& r : fx.server.requests()) {
    CHECK(r.query().count("xms_cc") == 0);
    CHECK(r.query().count("token_sha256_to_refresh") == 0);
  }
}

TEST_CASE("TokenCache: a cache other than the process-wide one finds its entries and frees them") {
  // Under ASan (CI), LeakSanitizer reports the entries if the destructor does not free them.
  auto now = std::chrono::system_clock::now();
  mi::detail::Token token{std::string(2000, 't'), "Bearer", now + std::chrono::hours(2),
                                std::chrono::system_clock::time_point{}};
  {
    mi::detail::TokenCache local;
    for (const char* resource : {"https://vault.azure.net", "https://storage.azure.com", "https://graph.microsoft.com"})
      CHECK(local.store(mi::detail::CacheKey{mi::Source::DefaultToIMDS, mi::IDKind::SystemAssigned, "", resource},
                        token, now));
    for (const char* resource : {"https://vault.azure.net", "https://storage.azure.com", "https://graph.microsoft.com"}) {
      mi::detail::Token stored;
      CHECK(local.peek(mi::detail::CacheKey{mi::Source::DefaultToIMDS, mi::IDKind::SystemAssigned, "", resource}, stored));
    }
    mi::AuthResult out;
    CHECK(local.find(mi::detail::CacheKey{mi::Source::DefaultToIMDS, mi::IDKind::SystemAssigned, "", "HTTPS://VAULT.azure.net"},
                     now, out) == mi::detail::TokenCache::Hit::fresh);
    CHECK(out.access_token == token.access_token);
  }
}
