// No secret out (docs/protocol.md §9): every failure path reachable over loopback, for every source,
// with a known access token and known secrets (IDENTITY_HEADER, MSI_SECRET, the Azure Arc
// key file's contents). Everything the library says is collected -- each mi::Error's
// message(), error_code(), error_description() and correlation_id(), and every log line at
// every level -- and none of it may contain a secret or the token, nor any 12-character
// piece of one (so a truncated excerpt cannot leak half a secret either).
//
// The endpoint is made to echo the secrets back in flat, nested, App Service-style,
// plain-text and HTML error bodies, in response headers, in redirects, in unusable success
// bodies, and on retries that log. The token is echoed wherever the library has seen it:
// in the success body it could not use, and in errors after it was cached (a claims
// request, a proactive refresh). Success paths must not log the token either.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <string>
#include "arc_token_dir.hpp"
#define MI_AZURE_ARC_HIMDS_PATH "/nonexistent/mi-tests/himds"
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#if !defined(_WIN32)
#include <sys/stat.h>
#include <unistd.h>
#endif

#include <cstdio>
#include <fstream>
#include <memory>
#include <thread>

#include "test_support.hpp"
#include "cache_support.hpp"
#include "arc_agent.hpp"

#if defined(MI_USE_CURL)
#include "tls_server.hpp"
#endif

using namespace std::chrono_literals;
using support::CleanEnv;
using support::set_env;
using testsrv::Reply;
using testsrv::Request;
using testsrv::Server;

namespace {

const std::string kToken = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.tok-7c6b5a4d3e2f1a0b9c8d.sig-a1b2c3d4e5";
const std::string kIdentityHeader = "IDH-secret-5f1e2d3c4b5a6978";
const std::string kMsiSecret = "MSI-secret-8a7b6c5d4e3f2a1b";
const std::string kArcKey = "ARC-key-contents-4d3c2b1a0f9e";

using support::fresh_cache;
std::string name_of(mi::Errc code) { return std::string(mi::to_string(code)); }

// ---- what the library says ----------------------------------------------------------------------

class Said {
 public:
  mi::ClientOption logger() const {
    auto lines = lines_;
    auto mutex = mutex_;
    auto count = log_count_;
    return mi::WithLogger([lines, mutex, count](mi::LogLevel, std::string_view message) {
      std::lock_guard<std::mutex> lock(*mutex);
      lines->emplace_back(message);
      ++*count;
    });
  }
  void error(const mi::Error& e) {
    std::lock_guard<std::mutex> lock(*mutex_);
    for (const std::string* s : {&e.message(), &e.error_code(), &e.error_description(), &e.correlation_id()})
      lines_->push_back(*s);
    ++errors_;
  }
  std::vector<std::string> all() const {
    std::lock_guard<std::mutex> lock(*mutex_);
    return *lines_;
  }
  int errors() const { return errors_; }
  int log_lines() const { return *log_count_; }

 private:
  std::shared_ptr<std::mutex> mutex_ = std::make_shared<std::mutex>();
  std::shared_ptr<std::vector<std::string>> lines_ = std::make_shared<std::vector<std::string>>();
  std::shared_ptr<int> log_count_ = std::make_shared<int>(0);
  int errors_ = 0;
};

// The first 12-character piece of `secret` found in `text`, or "".
std::string leaked_piece(const std::string& text, const std::string& secret) {
  const size_t piece = 12;
  if (secret.size() <= piece) return text.find(secret) != std::string::npos ? secret : std::string();
  for (size_t i = 0; i + piece <= secret.size(); ++i)
    if (text.find(secret.substr(i, piece)) != std::string::npos) return secret.substr(i, piece);
  return std::string();
}

void check_clean(const Said& said, const std::vector<std::string>& secrets) {
  for (const std::string& line : said.all()) {
    for (const std::string& secret : secrets) {
      std::string piece = leaked_piece(line, secret);
      CAPTURE(line);
      CHECK_MESSAGE(piece.empty(), "leaked \"" << piece << "\" of \"" << secret << "\"");
    }
  }
}

// ---- the endpoints ------------------------------------------------------------------------------

enum class Src { IMDS, AppService, AzureML, CloudShell, AzureArc, ServiceFabric };

const char* src_name(Src s) {
  switch (s) {
    case Src::IMDS: return "IMDS";
    case Src::AppService: return "AppService";
    case Src::AzureML: return "AzureML";
    case Src::CloudShell: return "CloudShell";
    case Src::AzureArc: return "AzureArc";
    case Src::ServiceFabric: return "ServiceFabric";
  }
  return "?";
}

std::vector<Src> all_sources() {
  std::vector<Src> out = {Src::IMDS, Src::AppService, Src::AzureML, Src::CloudShell, Src::AzureArc};
#if defined(MI_USE_CURL)
  out.push_back(Src::ServiceFabric);
#endif
  return out;
}

std::string token_body(const std::string& token, long long expires_in = 3600, const std::string& extra = "") {
  return "{\"access_token\":\"" + token + "\",\"expires_in\":\"" + std::to_string(expires_in) +
         "\",\"expires_on\":\"" + std::to_string(support::now_unix() + expires_in) +
         "\",\"resource\":\"https://vault.azure.net\",\"token_type\":\"Bearer\"" + extra + "}";
}

#if defined(MI_USE_CURL)
const tlssrv::Identity& sf_identity() {
  static const tlssrv::Identity id = tlssrv::make_identity("127.0.0.1");
  return id;
}
#endif

// The secret a source sends ("" for IMDS and Cloud Shell, which send none).
std::string secret_of(Src src) {
  switch (src) {
    case Src::AppService:
    case Src::ServiceFabric: return kIdentityHeader;
    case Src::AzureML: return kMsiSecret;
    case Src::AzureArc: return kArcKey;
    default: return "";
  }
}

uint16_t closed_port() {
  Server s([](const Request&) { return Reply::json("{}"); });
  return s.port();
}

// One source's endpoint on loopback, answering through a handler the test may swap. For
// Azure Arc the handler answers leg 2 (the request that carries the key); leg 1 is the
// challenge naming a key file that holds kArcKey.
class Endpoint {
 public:
  using Handler = std::function<Reply(const Request&)>;

  explicit Endpoint(Src src) : src_(src) {
    fresh_cache();
    handler_ = [](const Request&) { return Reply::json(token_body(kToken)); };
    auto dispatch = [this](const Request& r) {
      ++requests_;
      Handler h;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        h = handler_;
      }
      return h(r);
    };
#if defined(MI_USE_CURL)
    if (src == Src::ServiceFabric) tls_ = std::make_unique<tlssrv::Server>(sf_identity(), dispatch);
#endif
    if (src == Src::AzureArc) {
      // The agent answers leg 1 (its challenge counted in requests()); leg 2 comes here.
      support::ArcAgent::Options o;
      o.key = kArcKey;
      arc_ = std::make_unique<support::ArcAgent>(o);
      arc_->leg2 = dispatch;
    }
    if (!tls_ && !arc_) plain_ = std::make_unique<Server>(dispatch);
    point_at(url());
  }

  std::string url() const {
#if defined(MI_USE_CURL)
    if (tls_) return tls_->url("/msi/token");
#endif
    if (arc_) return arc_->server.url("/msi/token");
    return plain_->url("/msi/token");
  }
  std::string closed_url() const {
    return std::string(src_ == Src::ServiceFabric ? "https" : "http") + "://127.0.0.1:" +
           std::to_string(closed_port()) + "/msi/token";
  }

  // Sets the source's variables for `endpoint` (read at New for Service Fabric).
  void point_at(const std::string& endpoint) {
    switch (src_) {
      case Src::IMDS:
        set_env("AZURE_POD_IDENTITY_AUTHORITY_HOST", endpoint.substr(0, endpoint.find("/msi/token")));
        break;
      case Src::AppService:
        set_env("IDENTITY_ENDPOINT", endpoint);
        set_env("IDENTITY_HEADER", kIdentityHeader);
        break;
      case Src::AzureML:
        set_env("MSI_ENDPOINT", endpoint);
        set_env("MSI_SECRET", kMsiSecret);
        break;
      case Src::CloudShell: set_env("MSI_ENDPOINT", endpoint); break;
      case Src::AzureArc:
        set_env("IDENTITY_ENDPOINT", endpoint);
        set_env("IMDS_ENDPOINT", endpoint.substr(0, endpoint.find("/msi/token")));
        break;
      case Src::ServiceFabric:
#if defined(MI_USE_CURL)
        set_env("IDENTITY_ENDPOINT", endpoint);
        set_env("IDENTITY_HEADER", kIdentityHeader);
        set_env("IDENTITY_SERVER_THUMBPRINT", sf_identity().sha1_hex());
#endif
        break;
    }
  }

  void answer(Handler h) {
    std::lock_guard<std::mutex> lock(mutex_);
    handler_ = std::move(h);
  }
  void answer(Reply r) {
    answer([r](const Request&) { return r; });
  }

  std::string secret() const { return secret_of(src_); }
  Src src() const { return src_; }
  int requests() const { return requests_ + (arc_ ? arc_->leg1_count.load() : 0); }
  void stop() {
    if (plain_) plain_->stop();
    if (arc_) arc_->server.stop();
#if defined(MI_USE_CURL)
    if (tls_) tls_->stop();
#endif
  }

 private:
  Src src_;
  CleanEnv env_;
  std::mutex mutex_;
  Handler handler_;
  std::atomic<int> requests_{0};
  std::unique_ptr<Server> plain_;
#if defined(MI_USE_CURL)
  std::unique_ptr<tlssrv::Server> tls_;
#else
  std::unique_ptr<Server> tls_;  // never set
#endif
  std::unique_ptr<support::ArcAgent> arc_;  // Azure Arc only
};

const std::vector<std::string> kEverySecret = {kToken, kIdentityHeader, kMsiSecret, kArcKey};

struct RunOptions {
  mi::ID id = mi::SystemAssigned();
  std::chrono::milliseconds deadline = 5000ms;
  std::vector<mi::ClientOption> extra;
  std::vector<mi::AcquireTokenOption> acquire;
  std::string resource = "https://vault.azure.net";
};

mi::Result<mi::AuthResult> run(Said& said, const RunOptions& o = RunOptions()) {
  std::vector<mi::ClientOption> options = o.extra;
  options.push_back(said.logger());
  options.push_back(mi::WithSleep([](std::chrono::milliseconds) {}));
  auto client = mi::New(o.id, options);
  if (!client) {
    said.error(client.error());
    return client.error();
  }
  auto result = client->AcquireToken(mi::Context::Background().WithTimeout(o.deadline), o.resource, o.acquire);
  if (!result) said.error(result.error());
  return result;
}

// ---- hostile answers that echo `s` --------------------------------------------------------------

Reply raw(const std::string& bytes) {
  Reply r;
  r.raw = bytes;
  return r;
}

std::string flat(const std::string& s) {
  return "{\"error\":\"" + s + "\",\"error_description\":\"the header " + s + " was rejected\",\"correlation_id\":\"" +
         s + "\"}";
}
std::string nested(const std::string& s) {
  return "{\"error\":{\"code\":\"" + s + "\",\"message\":\"got " + s + " in the request\",\"correlationId\":\"" + s +
         "\",\"details\":[{\"secret\":\"" + s + "\"}]}}";
}
std::string app_service_style(const std::string& s) {
  return "{\"statusCode\":400,\"message\":\"bad header " + s + "\",\"correlationId\":\"" + s + "\"}";
}
std::vector<std::pair<std::string, std::string>> echo_headers(const std::string& s) {
  return {{"WWW-Authenticate", "Basic realm=\"" + s + "\""}, {"X-Echo", s}, {"Retry-After", s}, {"x-ms-request-id", s}};
}

struct Scenario {
  std::string name;
  Reply reply;
  mi::Errc expect;
  std::chrono::milliseconds deadline = 5000ms;
};

std::vector<Scenario> failure_scenarios(const std::string& s) {
  Reply closed;
  closed.close_now = true;
  Reply hang;
  hang.hang = true;
  return {
      {"closed without an answer (retried, logged)", closed, mi::Errc::network},
      {"body shorter than Content-Length", raw("HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"error\":\"" + s), mi::Errc::network},
      {"not HTTP", raw("GARBAGE " + s + "\r\n\r\n"), mi::Errc::invalid_response},
      {"bad header echoing", raw("HTTP/1.1 200 OK\r\nX-Echo " + s + "\r\n\r\n"), mi::Errc::invalid_response},
      {"never answers", hang, mi::Errc::timeout, 500ms},
      {"503 with Retry-After past the deadline", Reply::http(503, flat(s), {{"Retry-After", "30"}}), mi::Errc::timeout, 2000ms},
      {"400 flat body", Reply::http(400, flat(s)), mi::Errc::http_status},
      {"400 nested body", Reply::http(400, nested(s)), mi::Errc::http_status},
      {"400 App Service-style body", Reply::http(400, app_service_style(s)), mi::Errc::http_status},
      {"400 plain text", Reply::http(400, "the secret " + s + " is wrong", {{"Content-Type", "text/plain"}}), mi::Errc::http_status},
      {"401 HTML", Reply::http(401, "<html><body><p>" + s + "</p></body></html>", {{"Content-Type", "text/html"}}),
       mi::Errc::http_status},
      {"403 echoing in headers", Reply::http(403, "", echo_headers(s)), mi::Errc::http_status},
      {"302 to a URL holding it", Reply::http(302, "", {{"Location", "http://127.0.0.1:1/" + s}}), mi::Errc::http_status},
      {"500 flat body (retried, logged)", Reply::http(500, flat(s)), mi::Errc::http_status},
      {"500 plain text (retried, logged)", Reply::http(500, s), mi::Errc::http_status},
      {"503 echoing in headers (retried, logged)", Reply::http(503, nested(s), echo_headers(s)), mi::Errc::http_status},
      {"404 nested (retried, logged)", Reply::http(404, nested(s)), mi::Errc::http_status},
      {"200 plain text", Reply::http(200, s), mi::Errc::invalid_response},
      {"200 error body", Reply::http(200, flat(s)), mi::Errc::invalid_response},
  };
}

// Unusable success bodies holding the token.
std::vector<std::pair<std::string, std::string>> token_bodies() {
  const std::string t = kToken;
  return {
      {"no expiry", "{\"access_token\":\"" + t + "\"}"},
      {"expiry unparseable, holding the token", "{\"access_token\":\"" + t + "\",\"expires_on\":\"" + t + "\"}"},
      {"token as a number-like string elsewhere", "{\"access_token\":1,\"x\":\"" + t + "\",\"expires_in\":3600}"},
      {"plain text", t},
      {"array", "[\"" + t + "\"]"},
      {"truncated JSON", "{\"access_token\":\"" + t + "\","},
      {"trailing garbage", token_body(t) + " " + t},
      {"HTML", "<html>" + t + "</html>"},
      {"invalid UTF-8 next to it", "{\"access_token\":\"" + t + "\xff\",\"expires_in\":3600}"},
      {"over the size limit", token_body(t + std::string(MI_MAX_RESPONSE_BYTES, 'x'))},
  };
}

}  // namespace

// ---- failure paths, every source ----------------------------------------------------------------

TEST_CASE("every failure path of every source that holds a secret: no secret in errors or logs") {
  int paths = 0;
  for (Src src : all_sources()) {
    const std::string secret = secret_of(src);
    if (secret.empty()) continue;  // IMDS and Cloud Shell send none; their token paths are below
    for (const Scenario& sc : failure_scenarios(secret)) {
      std::string where = std::string(src_name(src)) + ": " + sc.name;
      CAPTURE(where);
      Endpoint ep(src);
      ep.answer(sc.reply);
      Said said;
      RunOptions o;
      o.deadline = sc.deadline;
      auto result = run(said, o);
      REQUIRE_FALSE(result);
      CHECK(name_of(result.error().code()) == name_of(sc.expect));
      CHECK(said.errors() == 1);
      if (sc.name.find("logged") != std::string::npos) CHECK(said.log_lines() >= 3);
      check_clean(said, kEverySecret);
      ++paths;
      if (sc.expect == mi::Errc::timeout) ep.stop();
    }
  }
  MESSAGE(paths << " failure paths checked");
}

TEST_CASE("connection refused, for every source: no secret in errors or logs") {
  for (Src src : all_sources()) {
    std::string source = src_name(src);
    CAPTURE(source);
    Endpoint ep(src);
    ep.point_at(ep.closed_url());
    Said said;
    auto result = run(said);
    REQUIRE_FALSE(result);
    CHECK(result.error().code() == mi::Errc::network);
    CHECK(said.log_lines() == 3);  // one warning per retry
    check_clean(said, kEverySecret);
  }
}

TEST_CASE("resets in the middle of a response are retried and logged without secrets") {
  for (Src src : all_sources()) {
    if (src == Src::ServiceFabric) continue;  // the TLS test server has no reset; see "closed" above
    std::string source = src_name(src);
    CAPTURE(source);
    Endpoint ep(src);
    Reply r = Reply::http(500, flat(ep.secret()));
    r.reset_after = 60;
    ep.answer(r);
    Said said;
    auto result = run(said);
    REQUIRE_FALSE(result);
    CHECK(result.error().code() == mi::Errc::network);
    CHECK(said.log_lines() >= 3);
    check_clean(said, kEverySecret);
  }
}

TEST_CASE("canceled while waiting: no secret") {
  for (Src src : all_sources()) {
    std::string source = src_name(src);
    CAPTURE(source);
    Endpoint ep(src);
    Reply hang;
    hang.hang = true;
    ep.answer(hang);
    Said said;
    auto client = mi::New(mi::SystemAssigned(), said.logger());
    REQUIRE(client);
    mi::Context ctx = mi::Context::Background().WithCancel();
    std::thread canceler([ctx] {
      std::this_thread::sleep_for(100ms);
      ctx.Cancel();
    });
    auto result = client->AcquireToken(ctx, "https://vault.azure.net");
    canceler.join();
    REQUIRE_FALSE(result);
    said.error(result.error());
    CHECK(result.error().code() == mi::Errc::canceled);
    check_clean(said, kEverySecret);
    ep.stop();
  }
}

TEST_CASE("unusable success bodies holding the token: invalid_response without the token") {
  for (Src src : all_sources()) {
    for (const auto& body : token_bodies()) {
      std::string where = std::string(src_name(src)) + ": " + body.first;
      CAPTURE(where);
      Endpoint ep(src);
      ep.answer(Reply::http(200, body.second));
      Said said;
      auto result = run(said);
      REQUIRE_FALSE(result);
      CHECK(result.error().code() == mi::Errc::invalid_response);
      check_clean(said, kEverySecret);
    }
  }
}

TEST_CASE("a control character in a secret variable: invalid_argument that does not quote it") {
  struct Case {
    Src src;
    const char* variable;
    std::string secret;
  };
  std::vector<Case> cases = {{Src::AppService, "IDENTITY_HEADER", kIdentityHeader},
                             {Src::AzureML, "MSI_SECRET", kMsiSecret}};
#if defined(MI_USE_CURL)
  cases.push_back({Src::ServiceFabric, "IDENTITY_HEADER", kIdentityHeader});
#endif
  for (const Case& c : cases) {
    for (const std::string& bad : {c.secret + "\r\nX-Injected: 1", "\x01" + c.secret, c.secret + std::string("\x7f")}) {
      std::string source = src_name(c.src);
      CAPTURE(source);
      Endpoint ep(c.src);
      set_env(c.variable, bad);
      Said said;
      auto result = run(said);
      REQUIRE_FALSE(result);
      CHECK(result.error().code() == mi::Errc::invalid_argument);
      CHECK(ep.requests() == 0);
      check_clean(said, kEverySecret);
    }
  }
}

#if defined(MI_USE_CURL)
TEST_CASE("Service Fabric: a thumbprint mismatch (tls) says nothing secret") {
  Endpoint ep(Src::ServiceFabric);
  set_env("IDENTITY_SERVER_THUMBPRINT", tlssrv::make_identity("other").sha1_hex());
  Said said;
  auto result = run(said);
  REQUIRE_FALSE(result);
  CHECK(result.error().code() == mi::Errc::tls);
  check_clean(said, kEverySecret);
}
#endif

// ---- Azure Arc specifics ------------------------------------------------------------------------

TEST_CASE("Azure Arc: identity echo failures say nothing of the token or the key") {
  const std::vector<std::pair<mi::ID, std::string>> cases = {
      {mi::UserAssignedClientID("cid-echo-1"), ""},
      {mi::UserAssignedClientID("cid-echo-1"), ",\"client_id\":\"" + kArcKey + "\""},
      {mi::UserAssignedObjectID("oid-echo-1"), ",\"object_id\":\"" + kToken + "\""},
      {mi::UserAssignedResourceID("/subs/rid-echo"), ",\"msi_res_id\":\"/subs/" + kArcKey + "\""},
  };
  for (const auto& c : cases) {
    CAPTURE(c.second);
    Endpoint ep(Src::AzureArc);
    ep.answer(Reply::json(token_body(kToken, 3600, c.second)));
    Said said;
    RunOptions o;
    o.id = c.first;
    auto result = run(said, o);
    REQUIRE_FALSE(result);
    CHECK(result.error().code() == mi::Errc::arc_challenge);
    check_clean(said, kEverySecret);
    CHECK_FALSE(support::cached(o.id, o.resource));
  }
}

TEST_CASE("Azure Arc: leg 2 answered with a challenge naming the key") {
  {
    Endpoint ep(Src::AzureArc);
    ep.answer(Reply::http(401, "{\"error\":\"" + kArcKey + "\"}", {{"WWW-Authenticate", "Basic realm=" + kArcKey}}));
    Said said;
    auto result = run(said);
    REQUIRE_FALSE(result);
    CHECK(result.error().code() == mi::Errc::http_status);
    check_clean(said, kEverySecret);
  }
}

// ---- the token echoed once the library holds it -------------------------------------------------

TEST_CASE("errors echoing a cached token (claims request) do not contain it") {
  const std::string t = kToken;
  const std::vector<Scenario> echoes = {
      {"400 flat", Reply::http(400, flat(t)), mi::Errc::http_status},
      {"400 nested", Reply::http(400, nested(t)), mi::Errc::http_status},
      {"400 plain text", Reply::http(400, "token " + t + " revoked", {{"Content-Type", "text/plain"}}), mi::Errc::http_status},
      {"401 headers", Reply::http(401, "", echo_headers(t)), mi::Errc::http_status},
      {"500 plain text, retried", Reply::http(500, t), mi::Errc::http_status},
      {"200 unusable", Reply::http(200, "{\"access_token\":\"" + t + "\"}"), mi::Errc::invalid_response},
  };
  for (Src src : all_sources()) {
    for (const Scenario& sc : echoes) {
      std::string where = std::string(src_name(src)) + ": " + sc.name;
      CAPTURE(where);
      Endpoint ep(src);
      Said said;
      auto first = run(said);
      REQUIRE(first);
      REQUIRE(first->access_token == kToken);
      ep.answer(sc.reply);
      RunOptions o;
      o.acquire = {mi::WithClaims("{\"access_token\":{\"nbf\":{\"essential\":true}}}")};
      auto second = run(said, o);
      REQUIRE_FALSE(second);
      CHECK(name_of(second.error().code()) == name_of(sc.expect));
      check_clean(said, kEverySecret);
    }
  }
}

TEST_CASE("a failed proactive refresh echoing the cached token does not log it") {
  const std::string t = kToken;
  const std::vector<Scenario> echoes = {
      {"400 flat", Reply::http(400, flat(t)), mi::Errc::http_status},
      {"400 nested", Reply::http(400, nested(t)), mi::Errc::http_status},
      {"400 plain text", Reply::http(400, "token " + t + " revoked", {{"Content-Type", "text/plain"}}), mi::Errc::http_status},
      {"200 unusable", Reply::http(200, "{\"access_token\":\"" + t + "\"}"), mi::Errc::invalid_response},
  };
  for (Src src : all_sources()) {
    for (const Scenario& sc : echoes) {
      std::string where = std::string(src_name(src)) + ": " + sc.name;
      CAPTURE(where);
      Endpoint ep(src);
      ep.answer(Reply::json(token_body(kToken, 86400, ",\"refresh_in\":\"60\"")));
      auto offset = std::make_shared<std::atomic<long long>>(0);
      RunOptions o;
      o.extra = {mi::WithClock([offset] { return std::chrono::system_clock::now() + std::chrono::seconds(offset->load()); })};
      Said said;
      auto first = run(said, o);
      REQUIRE(first);
      ep.answer(sc.reply);
      offset->store(120);  // past refresh_in
      auto second = run(said, o);
      REQUIRE(second);  // the cached token, after the logged failure
      CHECK(second->token_source == mi::TokenSource::Cache);
      CHECK(said.log_lines() >= 2);
      check_clean(said, kEverySecret);
    }
  }
}

// ---- success paths --------------------------------------------------------------------------------

TEST_CASE("success paths never log the token or a secret") {
  for (Src src : all_sources()) {
    std::string source = src_name(src);
    CAPTURE(source);
    Endpoint ep(src);
    auto offset = std::make_shared<std::atomic<long long>>(0);
    RunOptions o;
    o.extra = {mi::WithClock([offset] { return std::chrono::system_clock::now() + std::chrono::seconds(offset->load()); })};
    Said said;
    // From the endpoint, then from the cache.
    ep.answer(Reply::json(token_body(kToken, 86400, ",\"refresh_in\":\"60\"")));
    REQUIRE(run(said, o));
    REQUIRE(run(said, o)->token_source == mi::TokenSource::Cache);
    // A proactive refresh that succeeds.
    offset->store(120);
    REQUIRE(run(said, o));
    // Claims: a forced fetch.
    RunOptions claims = o;
    claims.acquire = {mi::WithClaims("c")};
    REQUIRE(run(said, claims));
    // A token expiring within 5 minutes: returned, not cached, a warning logged.
    ep.answer(Reply::json(token_body(kToken, 200)));
    RunOptions short_lived = o;
    short_lived.resource = "https://short.example";
    REQUIRE(run(said, short_lived));
    // Retries that end in success.
    auto n = std::make_shared<std::atomic<int>>(0);
    ep.answer([n](const Request&) {
      if (n->fetch_add(1) < 2) return Reply::http(503, flat(kToken), echo_headers(kToken));
      return Reply::json(token_body(kToken));
    });
    RunOptions retried = o;
    retried.resource = "https://retried.example";
    REQUIRE(run(said, retried));
    CHECK(said.log_lines() >= 5);
    check_clean(said, kEverySecret);
  }
}
