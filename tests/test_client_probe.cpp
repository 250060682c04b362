// mi::Probe (docs/protocol.md §11): every branch over loopback sockets. The real IMDS address
// and the Arc agent's default port are only ever checked through an injected transport that
// sends nothing; real requests go to 127.0.0.1 through AZURE_POD_IDENTITY_AUTHORITY_HOST or
// IDENTITY_ENDPOINT.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <string>
// The Arc agent's himds file: any expression convertible to std::string works.
std::string test_himds_path();
#define MI_AZURE_ARC_HIMDS_PATH test_himds_path()
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include <cstdio>
#include <fstream>
#include <thread>

#include "test_support.hpp"

using namespace std::chrono_literals;
using support::CleanEnv;
using testsrv::Reply;
using testsrv::Request;
using testsrv::Server;

std::string g_himds;
std::string test_himds_path() { return g_himds; }

namespace {

const std::string kTokenPath = "/metadata/identity/oauth2/token";

// The Arc agent's file, present or not, for the scope of a test.
struct Himds {
  explicit Himds(bool present) {
    g_himds = std::string("mi-test-probe-himds-") + std::to_string(reinterpret_cast<uintptr_t>(this));
    if (present) std::ofstream(g_himds) << "x";
  }
  ~Himds() {
    std::remove(g_himds.c_str());
    g_himds.clear();
  }
  Himds(const Himds&) = delete;
  Himds& operator=(const Himds&) = delete;
};

// IMDS pointed at a loopback server answering with `reply`.
struct ImdsProbe {
  CleanEnv env;
  Himds himds{false};
  Server server;
  explicit ImdsProbe(std::function<Reply(const Request&)> handler) : server(std::move(handler)) {
    support::set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", server.base());
  }
};

Reply hang() {
  Reply r;
  r.hang = true;
  return r;
}

// A port on 127.0.0.1 nothing listens on (a server started and stopped).
uint16_t closed_port() {
  Server closed([](const Request&) { return Reply::json("{}"); });
  uint16_t port = closed.port();
  closed.stop();
  return port;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The message every "not present" answer carries.
void check_not_present_message(const mi::Error& error) {
  CHECK(contains(error.message(), "no managed identity endpoint answered"));
  CHECK(contains(error.message(), "probably not running on Azure"));
}

// A transport that records each request and its context's deadline, and answers without I/O.
class DeadlineRecorder : public mi::HttpClient {
 public:
  mi::Result<mi::HttpResponse> Do(const mi::Context& ctx, const mi::HttpRequest& request) override {
    std::lock_guard<std::mutex> lock(mutex_);
    deadlines_.push_back(ctx.deadline());
    requests_.push_back(request);
    return support::response(400, "{\"error\":\"invalid_request\"}");
  }
  std::vector<std::chrono::steady_clock::time_point> deadlines() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return deadlines_;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::chrono::steady_clock::time_point> deadlines_;
  std::vector<mi::HttpRequest> requests_;
};

// Pins as Service Fabric requires, and records (it must never be called by a probe).
class PinningRecorder : public support::RecordingHttpClient {
 public:
  PinningRecorder() : RecordingHttpClient([](const mi::HttpRequest&) { return support::response(200, "{}"); }) {}
  bool PinsServerCertificate() const noexcept override { return true; }
};

std::shared_ptr<support::RecordingHttpClient> recorder(int status = 400, std::string body = "") {
  return std::make_shared<support::RecordingHttpClient>(
      [status, body](const mi::HttpRequest&) { return support::response(status, body); });
}

}  // namespace

// ---- present ---------------------------------------------------------------------------------

TEST_CASE("probe: IMDS present when it answers 400, 200 or 404") {
  for (int status : {400, 200, 404}) {
    CAPTURE(status);
    ImdsProbe fx([status](const Request&) { return Reply::http(status, "{\"error\":\"invalid_request\"}"); });
    auto source = mi::Probe(mi::Context::Background());
    REQUIRE(source);
    CHECK(*source == mi::Source::DefaultToIMDS);
    CHECK(fx.server.request_count() == 1);
  }
}

TEST_CASE("probe: the request is a GET to the token path, with no query and no Metadata header") {
  ImdsProbe fx([](const Request&) { return Reply::http(400, "{\"error\":\"invalid_request\"}"); });
  REQUIRE(mi::Probe(mi::Context::Background()));
  REQUIRE(fx.server.request_count() == 1);
  Request r = fx.server.last();
  CHECK(r.method == "GET");
  CHECK(r.path == kTokenPath);
  CHECK(r.raw_query.empty());
  CHECK(r.target == kTokenPath);
  CHECK_FALSE(r.has_header("Metadata"));
  CHECK(r.header("User-Agent").rfind("managed-identity-cpp/", 0) == 0);
  CHECK(r.body.empty());
}

TEST_CASE("probe: the default IMDS URL, seen through an injected transport that sends nothing") {
  CleanEnv env;
  Himds himds(false);
  auto http = recorder(400);
  auto source = mi::Probe(mi::Context::Background(), mi::WithHTTPClient(http));
  REQUIRE(source);
  CHECK(*source == mi::Source::DefaultToIMDS);
  REQUIRE(http->count() == 1);
  mi::HttpRequest req = http->requests()[0];
  CHECK(req.method == "GET");
  // Checked only: the recording transport sends nothing.
  CHECK(req.url == "http://169.254.169.254/metadata/identity/oauth2/token");
  CHECK(support::header_of(req, "Metadata").empty());
  CHECK(req.body.empty());
}

TEST_CASE("probe: the option forms of New") {
  CleanEnv env;
  Himds himds(false);
  auto http = recorder(400);
  REQUIRE(mi::Probe(mi::Context::Background(), std::vector<mi::ClientOption>{mi::WithHTTPClient(http)}));
  REQUIRE(mi::Probe(mi::Context::Background(), mi::WithHTTPClient(http), mi::WithRetryPolicyDisabled()));
  CHECK(http->count() == 2);
}

TEST_CASE("probe: Azure Arc found by its agent's file asks IDENTITY_ENDPOINT, else the agent's default") {
  CleanEnv env;
  Himds himds(true);
  {
    Server agent([](const Request&) { return Reply::http(401, "", {{"WWW-Authenticate", "Basic realm=/x.key"}}); });
    // A query in the configured endpoint is dropped too: the probe asks for nothing.
    support::set_env("IDENTITY_ENDPOINT", agent.url() + "?api-version=2020-06-01");
    REQUIRE(mi::GetSource() == mi::Source::AzureArc);
    auto source = mi::Probe(mi::Context::Background());
    REQUIRE(source);
    CHECK(*source == mi::Source::AzureArc);
    REQUIRE(agent.request_count() == 1);
    Request r = agent.last();
    CHECK(r.method == "GET");
    CHECK(r.target == kTokenPath);
    CHECK_FALSE(r.has_header("Metadata"));
    CHECK_FALSE(r.has_header("Authorization"));  // the challenge is not answered: no key file is read
  }
  support::unset_env("IDENTITY_ENDPOINT");
  auto http = recorder(400);
  auto source = mi::Probe(mi::Context::Background(), mi::WithHTTPClient(http));
  REQUIRE(source);
  CHECK(*source == mi::Source::AzureArc);
  REQUIRE(http->count() == 1);
  CHECK(http->requests()[0].url == "http://127.0.0.1:40342/metadata/identity/oauth2/token");
  CHECK(support::header_of(http->requests()[0], "Metadata").empty());
}

TEST_CASE("probe: a 403 that does not say the network is unreachable still means present") {
  ImdsProbe fx([](const Request&) { return Reply::http(403, "{\"error\":\"forbidden\"}"); });
  auto source = mi::Probe(mi::Context::Background());
  REQUIRE(source);
  CHECK(*source == mi::Source::DefaultToIMDS);
}

// ---- not present -----------------------------------------------------------------------------

TEST_CASE("probe: connection refused is network, not present") {
  CleanEnv env;
  Himds himds(false);
  support::set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:" + std::to_string(closed_port()));
  auto source = mi::Probe(mi::Context::Background());
  REQUIRE_FALSE(source);
  CHECK(source.error().code() == mi::Errc::network);
  CHECK(source.error().source() == mi::Source::DefaultToIMDS);
  check_not_present_message(source.error());
}

TEST_CASE("probe: a server that accepts and never answers is timeout, within the 1 s default") {
  ImdsProbe fx([](const Request&) { return hang(); });
  auto start = std::chrono::steady_clock::now();
  auto source = mi::Probe(mi::Context::Background());
  auto took = std::chrono::steady_clock::now() - start;
  REQUIRE_FALSE(source);
  CHECK(source.error().code() == mi::Errc::timeout);
  check_not_present_message(source.error());
  CHECK(contains(source.error().message(), "1000 ms"));
  CHECK(took < 10s);  // generous: it returns, and not after a token request's retries
  CHECK(fx.server.connection_count() == 1);
  fx.server.stop();
}

TEST_CASE("probe: Docker Desktop's 403 saying the network is unreachable is not present") {
  const std::string docker_body =
      "connecting to 169.254.169.254:80: connecting to 169.254.169.254:80: dial tcp 169.254.169.254:80: connectex: A "
      "socket operation was attempted to an unreachable network.";
  ImdsProbe fx([docker_body](const Request&) { return Reply::http(403, docker_body, {{"Content-Type", "text/plain"}}); });
  auto source = mi::Probe(mi::Context::Background());
  REQUIRE_FALSE(source);
  CHECK(source.error().code() == mi::Errc::network);
  check_not_present_message(source.error());
  CHECK(contains(source.error().message(), "Docker Desktop"));
  CHECK(fx.server.request_count() == 1);
}

TEST_CASE("probe: no retries, exactly one request, even on 500 or a transport error") {
  {
    ImdsProbe fx([](const Request&) { return Reply::http(500, ""); });
    support::SleepRecorder sleeps;
    auto source = mi::Probe(mi::Context::Background(), mi::WithSleep(sleeps.hook()));
    REQUIRE(source);  // an answer, even a failing one, shows the endpoint is there
    CHECK(fx.server.request_count() == 1);
    CHECK(sleeps.get().empty());
  }
  {
    CleanEnv env;
    Himds himds(false);
    auto http = std::make_shared<support::RecordingHttpClient>(
        [](const mi::HttpRequest&) -> mi::Result<mi::HttpResponse> { return mi::Error(mi::Errc::network, "refused"); });
    support::SleepRecorder sleeps;
    auto source = mi::Probe(mi::Context::Background(), mi::WithHTTPClient(http), mi::WithSleep(sleeps.hook()));
    REQUIRE_FALSE(source);
    CHECK(source.error().code() == mi::Errc::network);
    check_not_present_message(source.error());
    CHECK(http->count() == 1);
    CHECK(sleeps.get().empty());
  }
}

TEST_CASE("probe: an exception from a custom HttpClient is network, not present") {
  CleanEnv env;
  Himds himds(false);
  auto http = std::make_shared<support::RecordingHttpClient>(
      [](const mi::HttpRequest&) -> mi::Result<mi::HttpResponse> { throw std::runtime_error("boom"); });
  auto source = mi::Probe(mi::Context::Background(), mi::WithHTTPClient(http));
  REQUIRE_FALSE(source);
  CHECK(source.error().code() == mi::Errc::network);
  CHECK(http->count() == 1);
}

// ---- deadlines and cancellation ----------------------------------------------------------------

TEST_CASE("probe: the transport gets the context's deadline, or 1 s when there is none") {
  CleanEnv env;
  Himds himds(false);
  auto http = std::make_shared<DeadlineRecorder>();
  using SteadyClock = std::chrono::steady_clock;

  // No deadline: the probe's own, about a second from now (never unbounded).
  SteadyClock::time_point before = SteadyClock::now();
  REQUIRE(mi::Probe(mi::Context::Background(), mi::WithHTTPClient(http)));
  SteadyClock::time_point after = SteadyClock::now();
  // A shorter deadline is honoured as it is.
  SteadyClock::time_point short_deadline = SteadyClock::now() + 300ms;
  REQUIRE(mi::Probe(mi::Context::Background().WithDeadline(short_deadline), mi::WithHTTPClient(http)));
  // A longer one is the caller's choice, not cut to 1 s.
  SteadyClock::time_point long_deadline = SteadyClock::now() + 20s;
  REQUIRE(mi::Probe(mi::Context::Background().WithDeadline(long_deadline), mi::WithHTTPClient(http)));

  auto seen = http->deadlines();
  REQUIRE(seen.size() == 3);
  CHECK(seen[0] >= before + 1s);
  CHECK(seen[0] <= after + 1s);
  CHECK(seen[1] == short_deadline);
  CHECK(seen[2] == long_deadline);
}

TEST_CASE("probe: a context deadline shorter than 1 s ends a silent probe with timeout") {
  ImdsProbe fx([](const Request&) { return hang(); });
  auto start = std::chrono::steady_clock::now();
  auto source = mi::Probe(mi::Context::Background().WithTimeout(200ms));
  REQUIRE_FALSE(source);
  CHECK(source.error().code() == mi::Errc::timeout);
  check_not_present_message(source.error());
  CHECK(contains(source.error().message(), "context's deadline"));
  CHECK(std::chrono::steady_clock::now() - start < 10s);
  fx.server.stop();
}

TEST_CASE("probe: a canceled context is canceled, before any request and during one") {
  {
    CleanEnv env;
    Himds himds(false);
    auto http = recorder(400);
    mi::Context ctx = mi::Context::Background().WithCancel();
    ctx.Cancel();
    auto source = mi::Probe(ctx, mi::WithHTTPClient(http));
    REQUIRE_FALSE(source);
    CHECK(source.error().code() == mi::Errc::canceled);
    CHECK(http->count() == 0);
  }
  {
    ImdsProbe fx([](const Request&) { return hang(); });
    // A long deadline, so that only the cancel can end the probe.
    mi::Context ctx = mi::Context::Background().WithTimeout(60s).WithCancel();
    std::thread canceler([ctx] {
      std::this_thread::sleep_for(100ms);
      ctx.Cancel();
    });
    auto source = mi::Probe(ctx);
    canceler.join();
    REQUIRE_FALSE(source);
    CHECK(source.error().code() == mi::Errc::canceled);
    fx.server.stop();
  }
}

// ---- sources the environment configures: no I/O -------------------------------------------------

TEST_CASE("probe: sources configured by environment variables answer without any request") {
  struct Case {
    mi::Source source;
    std::vector<std::pair<const char*, const char*>> variables;
  };
  const std::vector<Case> cases = {
      {mi::Source::AppService, {{"IDENTITY_ENDPOINT", "http://127.0.0.1:1/token"}, {"IDENTITY_HEADER", "h"}}},
      {mi::Source::AzureML, {{"MSI_ENDPOINT", "http://127.0.0.1:1/token"}, {"MSI_SECRET", "s"}}},
      {mi::Source::CloudShell, {{"MSI_ENDPOINT", "http://127.0.0.1:1/token"}}},
      {mi::Source::AzureArc, {{"IDENTITY_ENDPOINT", "http://127.0.0.1:1/token"}, {"IMDS_ENDPOINT", "http://x"}}},
  };
  for (const Case& c : cases) {
    CAPTURE(mi::to_string(c.source));
    CleanEnv env;
    Himds himds(true);  // the Arc agent's file too: the variables decide first
    for (const auto& v : c.variables) support::set_env(v.first, v.second);
    auto http = recorder(400);
    auto source = mi::Probe(mi::Context::Background(), mi::WithHTTPClient(http));
    REQUIRE(source);
    CHECK(*source == c.source);
    CHECK(http->count() == 0);
    // Without an injected transport too: the endpoint (port 1) is never contacted.
    auto plain = mi::Probe(mi::Context::Background());
    REQUIRE(plain);
    CHECK(*plain == c.source);
  }
}

TEST_CASE("probe: Service Fabric answers without I/O, and refuses a transport that does not pin, as New does") {
  CleanEnv env;
  Himds himds(false);
  support::set_env("IDENTITY_ENDPOINT", "https://127.0.0.1:1/token");
  support::set_env("IDENTITY_HEADER", "h");
  support::set_env("IDENTITY_SERVER_THUMBPRINT", "0123456789ABCDEF0123456789ABCDEF01234567");
  REQUIRE(mi::GetSource() == mi::Source::ServiceFabric);

  auto pinning = std::make_shared<PinningRecorder>();
  auto source = mi::Probe(mi::Context::Background(), mi::WithHTTPClient(pinning));
  REQUIRE(source);
  CHECK(*source == mi::Source::ServiceFabric);
  CHECK(pinning->count() == 0);

  auto plain = recorder(200);
  auto refused = mi::Probe(mi::Context::Background(), mi::WithHTTPClient(plain));
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code() == mi::Errc::invalid_argument);
  CHECK(contains(refused.error().message(), "PinsServerCertificate"));
  auto via_new = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(plain));
  REQUIRE_FALSE(via_new);
  CHECK(via_new.error().message() == refused.error().message());
  CHECK(plain->count() == 0);

  // The built-in transport: nothing to send, nothing sent.
  auto builtin = mi::Probe(mi::Context::Background());
  REQUIRE(builtin);
  CHECK(*builtin == mi::Source::ServiceFabric);

  support::set_env("IDENTITY_SERVER_THUMBPRINT", "not-a-thumbprint");
  auto bad = mi::Probe(mi::Context::Background(), mi::WithHTTPClient(pinning));
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code() == mi::Errc::invalid_argument);
}

// Every entry of the source table found by its variables, whichever entries there are (a new
// source gets the no-I/O answer without a case of its own): with its variables set, the probe
// names it and the transport sees no request.
TEST_CASE("probe: every source detected by variables, from the table, answers without I/O") {
  int covered = 0;
  for (const mi::detail::SourceSpec& spec : mi::detail::kSources) {
    if (spec.detect_variables.at[0] == nullptr) continue;
    CAPTURE(spec.label);
    CleanEnv env;
    Himds himds(false);
    std::vector<std::pair<std::string, std::string>> saved;
    for (const char* name : spec.detect_variables) {
      if (name == nullptr) continue;
      const char* old = std::getenv(name);
      saved.emplace_back(name, old != nullptr ? old : "");
      std::string n = name;
      std::string value = "x";
      if (n.find("ENDPOINT") != std::string::npos) value = std::string(spec.scheme) + "://127.0.0.1:1/token";
      if (n.find("THUMBPRINT") != std::string::npos) value = "0123456789ABCDEF0123456789ABCDEF01234567";
      support::set_env(name, value);
    }
    if (mi::GetSource() == spec.source) {
      ++covered;
      auto http = std::make_shared<PinningRecorder>();
      auto source = mi::Probe(mi::Context::Background(), mi::WithHTTPClient(http));
      CHECK(http->count() == 0);
      if (source) CHECK(*source == spec.source);
    }
    for (const auto& s : saved) {
      if (s.second.empty()) support::unset_env(s.first.c_str());
      else support::set_env(s.first.c_str(), s.second);
    }
  }
  CHECK(covered >= 5);
}

TEST_CASE("probe: requests no token and caches nothing") {
  ImdsProbe fx([](const Request&) { return Reply::http(200, support::imds_body("probe-token")); });
  REQUIRE(mi::Probe(mi::Context::Background()));
  REQUIRE(fx.server.request_count() == 1);
  CHECK(fx.server.last().raw_query.empty());  // no resource: no token asked for
  auto client = mi::New(mi::SystemAssigned());
  REQUIRE(client);
  auto token = client->AcquireToken(mi::Context::Background(), "https://probe-cache");
  REQUIRE(token);
  CHECK(token->token_source == mi::TokenSource::IdentityProvider);  // not served from a cache the probe filled
  CHECK(fx.server.request_count() == 2);
}
