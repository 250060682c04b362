// App Service, Azure ML, Cloud Shell and Azure Arc over loopback (docs/protocol.md §2, §3):
// the exact request for every identity kind each accepts, cache behaviour, the
// Arc challenge with every key-file rule, and secrets kept out of errors.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <string>
#include "arc_token_dir.hpp"
#define MI_AZURE_ARC_HIMDS_PATH "/nonexistent/mi-tests/himds"
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#if defined(_WIN32)
#include <filesystem>
#else
#include <sys/stat.h>
#include <unistd.h>
#endif

#include <cstdio>
#include <fstream>
#include <thread>

#include "test_support.hpp"
#include "cache_support.hpp"
#include "arc_agent.hpp"

using namespace std::chrono_literals;
using support::ArcAgent;
using support::CleanEnv;
using support::set_env;
using support::TempDir;
using support::write_file;
using testsrv::Reply;
using testsrv::Request;
using testsrv::Server;

namespace {

using support::fresh_cache;

std::string app_service_body(const std::string& token, const std::string& extra = "") {
  return "{\"access_token\":\"" + token + "\",\"expires_on\":\"" + std::to_string(support::now_unix() + 3600) +
         "\",\"resource\":\"https://vault.azure.net\",\"token_type\":\"Bearer\"" + extra + "}";
}

using Params = std::vector<std::pair<std::string, std::string>>;
Params sorted(Params p) {
  std::sort(p.begin(), p.end());
  return p;
}

}  // namespace

// ---- App Service ---------------------------------------------------------------------------

TEST_CASE("App Service: the exact request for each identity kind, then the cache") {
  struct Case {
    mi::ID id;
    const char* param;
  };
  std::vector<Case> cases = {{mi::SystemAssigned(), nullptr},
                             {mi::UserAssignedClientID("5E29463D-71DA-4FE0-8E69-999B57DB23B0"), "client_id"},
                             {mi::UserAssignedObjectID("obj-1"), "object_id"},
                             {mi::UserAssignedResourceID("/subscriptions/s/rg/id"), "mi_res_id"}};
  for (const Case& c : cases) {
    CAPTURE(c.param ? c.param : "system");
    CleanEnv env;
    fresh_cache();
    support::TokenMint mint("as");
    Server server([&](const Request&) { return Reply::json(app_service_body(mint.next())); });
    set_env("IDENTITY_ENDPOINT", server.url("/msi/token"));
    set_env("IDENTITY_HEADER", "app-service-secret-9f8e");
    auto client = mi::New(c.id);
    REQUIRE(client);
    CHECK(client->source() == mi::Source::AppService);
    auto t1 = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
    REQUIRE(t1);
    Request r = server.last();
    CHECK(r.method == "GET");
    CHECK(r.path == "/msi/token");
    Params expected = {{"api-version", "2019-08-01"}, {"resource", "https://vault.azure.net"}};
    if (c.param) expected.emplace_back(c.param, c.id.value());
    CHECK(r.query_list() == sorted(expected));
    CHECK(r.header("X-IDENTITY-HEADER") == "app-service-secret-9f8e");
    CHECK_FALSE(r.has_header("Metadata"));
    CHECK_FALSE(r.has_header("x-ms-client-request-id"));
    CHECK(r.header("User-Agent") == std::string("managed-identity-cpp/") + MI_VERSION_STRING);
    auto t2 = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
    REQUIRE(t2);
    CHECK(t2->token_source == mi::TokenSource::Cache);
    CHECK(server.request_count() == 1);
  }
}

TEST_CASE("App Service: the endpoint's own query is kept, ours replaces same-named parameters") {
  CleanEnv env;
  fresh_cache();
  Server server([](const Request&) { return Reply::json(app_service_body("as-q")); });
  set_env("IDENTITY_ENDPOINT", server.url("/msi/token?zone=west&api-version=1999-01-01"));
  set_env("IDENTITY_HEADER", "h");
  auto client = mi::New(mi::SystemAssigned());
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://q"));
  CHECK(server.last().query_list() ==
        Params{{"api-version", "2019-08-01"}, {"resource", "https://q"}, {"zone", "west"}});
}

TEST_CASE("App Service: variables are read per request; the ISO expires_on form parses") {
  CleanEnv env;
  fresh_cache();
  Server server([](const Request&) {
    return Reply::json(
        "{\"access_token\":\"as-iso\",\"expires_on\":\"2099-12-02T19:51:37.0000000+00:00\",\"token_type\":\"Bearer\"}");
  });
  set_env("IDENTITY_ENDPOINT", server.url("/msi/token"));
  set_env("IDENTITY_HEADER", "first");
  auto client = mi::New(mi::SystemAssigned());
  set_env("IDENTITY_HEADER", "second");
  auto token = client->AcquireToken(mi::Context::Background(), "https://iso");
  REQUIRE(token);
  CHECK(server.last().header("X-IDENTITY-HEADER") == "second");
  CHECK(std::chrono::duration_cast<std::chrono::seconds>(token->expires_on.time_since_epoch()).count() == 4099924297);
}

TEST_CASE("App Service: a secret echoed by the endpoint never reaches the error") {
  CleanEnv env;
  fresh_cache();
  const std::string secret = "ECHOED-SECRET-77c1";
  Server server([secret](const Request&) {
    return Reply::http(401, "{\"error\":\"bad_header\",\"error_description\":\"header " + secret + " rejected\"}");
  });
  set_env("IDENTITY_ENDPOINT", server.url("/msi/token"));
  set_env("IDENTITY_HEADER", secret);
  auto client = mi::New(mi::SystemAssigned());
  auto token = client->AcquireToken(mi::Context::Background(), "https://echo");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::http_status);
  CHECK(token.error().status_code() == 401);
  CHECK(token.error().message().find(secret) == std::string::npos);
  CHECK(token.error().error_description().find(secret) == std::string::npos);
  CHECK(token.error().source() == mi::Source::AppService);
}

TEST_CASE("App Service: a control character in IDENTITY_HEADER or a bad endpoint is invalid_argument") {
  CleanEnv env;
  fresh_cache();
  Server server([](const Request&) { return Reply::json(app_service_body("x")); });
  set_env("IDENTITY_ENDPOINT", server.url("/msi/token"));
  set_env("IDENTITY_HEADER", "bad\r\nX-Injected: 1");
  auto client = mi::New(mi::SystemAssigned());
  auto token = client->AcquireToken(mi::Context::Background(), "https://ctl");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::invalid_argument);
  CHECK(token.error().message().find("IDENTITY_HEADER") != std::string::npos);
  CHECK(token.error().message().find("X-Injected") == std::string::npos);
  CHECK(server.request_count() == 0);
  set_env("IDENTITY_HEADER", "ok");
  set_env("IDENTITY_ENDPOINT", "not a url");
  token = client->AcquireToken(mi::Context::Background(), "https://ctl");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::invalid_argument);
  CHECK(token.error().message().find("IDENTITY_ENDPOINT") != std::string::npos);
}

TEST_CASE("App Service: retries 1 s apart on 503, not on 401") {
  CleanEnv env;
  fresh_cache();
  Server server([](const Request&) { return Reply::http(503, ""); });
  set_env("IDENTITY_ENDPOINT", server.url("/msi/token"));
  set_env("IDENTITY_HEADER", "h");
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithSleep(sleeps.hook()));
  REQUIRE_FALSE(client->AcquireToken(mi::Context::Background(), "https://as-retry"));
  CHECK(server.request_count() == 4);
  auto waits = sleeps.get();
  REQUIRE(waits.size() == 3);
  for (long long w : waits) {
    CHECK(w >= 1000);
    CHECK(w <= 1200);
  }
}

// ---- Azure ML -----------------------------------------------------------------------------

TEST_CASE("Azure ML: clientid always sent; secret header; date-string expires_on") {
  CleanEnv env;
  support::TokenMint mint("ml");
  Server server([&](const Request&) {
    return Reply::json("{\"access_token\":\"" + mint.next() +
                       "\",\"expires_on\":\"12/2/2099 7:51:37 PM +00:00\",\"resource\":\"https://vault.azure.net\","
                       "\"token_type\":\"Bearer\"}");
  });
  set_env("MSI_ENDPOINT", server.url("/ml/token"));
  set_env("MSI_SECRET", "ml-secret-31");
  SUBCASE("system-assigned without DEFAULT_IDENTITY_CLIENT_ID sends clientid=") {
    fresh_cache();
    auto client = mi::New(mi::SystemAssigned());
    REQUIRE(client);
    CHECK(client->source() == mi::Source::AzureML);
    auto token = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
    REQUIRE(token);
    Request r = server.last();
    CHECK(r.path == "/ml/token");
    CHECK(r.query_list() ==
          Params{{"api-version", "2017-09-01"}, {"clientid", ""}, {"resource", "https://vault.azure.net"}});
    CHECK(r.raw_query.find("clientid=&") != std::string::npos);
    CHECK(r.header("secret") == "ml-secret-31");
    CHECK_FALSE(r.has_header("Metadata"));
    CHECK(std::chrono::duration_cast<std::chrono::seconds>(token->expires_on.time_since_epoch()).count() == 4099924297);
    CHECK(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net")->token_source ==
          mi::TokenSource::Cache);
    CHECK(server.request_count() == 1);
  }
  SUBCASE("DEFAULT_IDENTITY_CLIENT_ID fills clientid for system-assigned") {
    fresh_cache();
    set_env("DEFAULT_IDENTITY_CLIENT_ID", "default-ml-id");
    auto client = mi::New(mi::SystemAssigned());
    REQUIRE(client->AcquireToken(mi::Context::Background(), "https://ml-default"));
    CHECK(server.last().query()["clientid"] == "default-ml-id");
  }
  SUBCASE("a user-assigned client ID replaces it") {
    fresh_cache();
    set_env("DEFAULT_IDENTITY_CLIENT_ID", "default-ml-id");
    auto client = mi::New(mi::UserAssignedClientID("mine"));
    REQUIRE(client->AcquireToken(mi::Context::Background(), "https://ml-user"));
    CHECK(server.last().query()["clientid"] == "mine");
    CHECK(server.last().query().count("client_id") == 0);
  }
}

// ---- Cloud Shell --------------------------------------------------------------------------

TEST_CASE("Cloud Shell: a form POST with Content-Length, retried with the same body") {
  CleanEnv env;
  fresh_cache();
  auto n = std::make_shared<std::atomic<int>>(0);
  Server server([n](const Request&) {
    if (n->fetch_add(1) == 0) return Reply::http(500, "{\"error\":{\"code\":\"Oops\",\"message\":\"retry\"}}");
    return Reply::json("{\"access_token\":\"cs-1\",\"refresh_token\":\"\",\"expires_in\":\"3599\",\"expires_on\":\"" +
                       std::to_string(support::now_unix() + 3599) +
                       "\",\"resource\":\"https://management.azure.com/\",\"token_type\":\"Bearer\"}");
  });
  set_env("MSI_ENDPOINT", server.url("/cloudshell/token?keep=1"));
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithSleep(sleeps.hook()));
  REQUIRE(client);
  CHECK(client->source() == mi::Source::CloudShell);
  auto token = client->AcquireToken(mi::Context::Background(), "https://management.azure.com/.default");
  REQUIRE(token);
  auto reqs = server.requests();
  REQUIRE(reqs.size() == 2);
  for (const Request& r : reqs) {
    CHECK(r.method == "POST");
    CHECK(r.target == "/cloudshell/token?keep=1");
    CHECK(r.body == "resource=https%3A%2F%2Fmanagement.azure.com");
    CHECK(r.header("Content-Length") == std::to_string(r.body.size()));
    CHECK(r.header("Content-Type") == "application/x-www-form-urlencoded");
    CHECK(r.header("Metadata") == "true");
  }
  CHECK(client->AcquireToken(mi::Context::Background(), "https://management.azure.com")->token_source ==
        mi::TokenSource::Cache);
}

// ---- Azure Arc ----------------------------------------------------------------------------

namespace {

// Leg 2 checks the key, as the agent does: another key than the file's is a 401.
ArcAgent::Options checking_key() {
  ArcAgent::Options o;
  o.check_key = true;
  return o;
}

}  // namespace

TEST_CASE("Azure Arc: both legs, exactly, for system-assigned and then the cache") {
  ArcAgent fx(checking_key());
  auto client = mi::New(mi::SystemAssigned());
  REQUIRE(client);
  CHECK(client->source() == mi::Source::AzureArc);
  auto token = client->AcquireToken(mi::Context::Background(), "https://management.azure.com");
  REQUIRE(token);
  CHECK(token->access_token == "arc-token");
  auto reqs = fx.server.requests();
  REQUIRE(reqs.size() == 2);
  for (const Request& r : reqs) {
    CHECK(r.method == "GET");
    CHECK(r.path == "/metadata/identity/oauth2/token");
    CHECK(r.query_list() == Params{{"api-version", "2020-06-01"}, {"resource", "https://management.azure.com"}});
    CHECK(r.header("Metadata") == "true");
  }
  CHECK_FALSE(reqs[0].has_header("Authorization"));
  CHECK(reqs[1].header("Authorization") == "Basic arc-key-6b1f0d");
  CHECK(client->AcquireToken(mi::Context::Background(), "https://management.azure.com")->token_source ==
        mi::TokenSource::Cache);
  CHECK(fx.server.request_count() == 2);
}

TEST_CASE("Azure Arc: the realm may be quoted and followed by parameters") {
  ArcAgent fx(checking_key());
  fx.realm = "Basic realm=\"" + fx.dir.path + "/agent.key\", charset=\"UTF-8\"";
  auto client = mi::New(mi::SystemAssigned());
  CHECK(client->AcquireToken(mi::Context::Background(), "https://quoted"));
}

TEST_CASE("Azure Arc: user-assigned identities are sent and must be echoed") {
  struct Case {
    mi::ID id;
    const char* param;
    std::string echo;
    bool ok;
  };
  std::vector<Case> cases = {
      {mi::UserAssignedClientID("CID-1"), "client_id", ",\"client_id_x\":\"\"", false},  // no echo
      {mi::UserAssignedClientID("CID-1"), "client_id", ",\"client_id2\":\"cid-1\"", false},
      {mi::UserAssignedObjectID("OID-1"), "object_id", ",\"object_id\":\"oid-1\"", true},
      {mi::UserAssignedObjectID("OID-1"), "object_id", ",\"object_id\":\"other\"", false},
      {mi::UserAssignedResourceID("/subs/RID"), "msi_res_id", ",\"msi_res_id\":\"/subs/rid\"", true},
      {mi::UserAssignedResourceID("/subs/RID"), "msi_res_id", ",\"mi_res_id\":\"/SUBS/RID\"", true},
      {mi::UserAssignedResourceID("/subs/RID"), "msi_res_id", "", false},
  };
  for (const Case& c : cases) {
    CAPTURE(c.echo);
    ArcAgent fx(checking_key());
    std::string echo = c.echo;
    fx.leg2 = [echo](const Request&) {
      // imds_body echoes a client_id of its own: use a body without it.
      return Reply::json("{\"access_token\":\"arc-ua\",\"expires_in\":\"3600\",\"token_type\":\"Bearer\"" + echo + "}");
    };
    auto client = mi::New(c.id);
    REQUIRE(client);
    auto token = client->AcquireToken(mi::Context::Background(), "https://arc-ua");
    auto reqs = fx.server.requests();
    REQUIRE(reqs.size() == 2);
    CHECK(reqs[0].query()[c.param] == c.id.value());
    CHECK(reqs[1].query()[c.param] == c.id.value());
    if (c.ok) {
      REQUIRE(token);
      CHECK(support::cached(c.id, "https://arc-ua"));
    } else {
      REQUIRE_FALSE(token);
      CHECK(token.error().code() == mi::Errc::arc_challenge);
      CHECK(token.error().message().find("arc-ua") == std::string::npos);
      CHECK_FALSE(support::cached(c.id, "https://arc-ua"));  // nothing cached after a failed echo
    }
  }
}

TEST_CASE("Azure Arc: the client_id echo of a client ID is accepted") {
  ArcAgent fx(checking_key());
  fx.leg2 = [](const Request&) {
    return Reply::json("{\"access_token\":\"arc-c\",\"expires_in\":\"3600\",\"client_id\":\"cid-2\"}");
  };
  auto client = mi::New(mi::UserAssignedClientID("CID-2"));
  CHECK(client->AcquireToken(mi::Context::Background(), "https://arc-cid"));
}

TEST_CASE("Azure Arc: key-file rules, each failing with arc_challenge and no second leg") {
  struct Case {
    const char* name;
    std::function<void(ArcAgent&)> setup;
    const char* expect;  // a word of the message
  };
  std::vector<Case> cases = {
      {"missing header", [](ArcAgent& f) { f.realm = ""; }, "WWW-Authenticate"},
      {"no Basic realm=", [](ArcAgent& f) { f.realm = "Bearer realm=" + f.dir.path + "/agent.key"; }, "realm"},
      {"wrong extension",
       [](ArcAgent& f) {
         write_file(f.dir.path + "/agent.txt", f.key);
         f.realm = "Basic realm=" + f.dir.path + "/agent.txt";
       },
       ".key"},
      {"wrong directory",
       [](ArcAgent& f) {
         TempDir other;
         f.realm = "Basic realm=" + other.path + "/agent.key";
       },
       "directory"},
      {"double slash", [](ArcAgent& f) { f.realm = "Basic realm=" + f.dir.path + "//agent.key"; }, "directory"},
      {"dot-dot",
       [](ArcAgent& f) { f.realm = "Basic realm=" + f.dir.path + "/../" + f.dir.path.substr(5) + "/agent.key"; },
       ".."},
#if defined(_WIN32)
      // Symbolic links: a test case of their own below. No FIFO case: Windows has none in
      // the file system (named pipes live under \\.\pipe\).
      {"directory named .key",
       [](ArcAgent& f) {
         CHECK(std::filesystem::create_directory(f.dir.path + "/dir.key"));
         f.realm = "Basic realm=" + f.dir.path + "/dir.key";
       },
       "regular"},
#else
      {"symlink to a file outside",
       [](ArcAgent& f) {
         write_file(f.dir.path + "-outside.key", "outside-secret");
         CHECK(symlink((f.dir.path + "-outside.key").c_str(), (f.dir.path + "/link.key").c_str()) == 0);
         f.realm = "Basic realm=" + f.dir.path + "/link.key";
       },
       "link"},
      {"FIFO",
       [](ArcAgent& f) {
         CHECK(mkfifo((f.dir.path + "/fifo.key").c_str(), 0600) == 0);
         f.realm = "Basic realm=" + f.dir.path + "/fifo.key";
       },
       "regular"},
      {"directory named .key",
       [](ArcAgent& f) {
         CHECK(mkdir((f.dir.path + "/dir.key").c_str(), 0700) == 0);
         f.realm = "Basic realm=" + f.dir.path + "/dir.key";
       },
       "regular"},
#endif
      {"5000-byte file",
       [](ArcAgent& f) {
         write_file(f.dir.path + "/big.key", std::string(5000, 'k'));
         f.realm = "Basic realm=" + f.dir.path + "/big.key";
       },
       "4096"},
      {"missing file", [](ArcAgent& f) { f.realm = "Basic realm=" + f.dir.path + "/absent.key"; }, "does not exist"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    ArcAgent fx(checking_key());
    c.setup(fx);
    auto client = mi::New(mi::SystemAssigned());
    auto start = std::chrono::steady_clock::now();
    auto token = client->AcquireToken(mi::Context::Background().WithTimeout(20s), "https://arc-rules");
    CHECK(std::chrono::steady_clock::now() - start < 10s);  // a FIFO must not hang
    REQUIRE_FALSE(token);
    CHECK(token.error().code() == mi::Errc::arc_challenge);
    CHECK(token.error().message().find(c.expect) != std::string::npos);
    CHECK(token.error().message().find("outside-secret") == std::string::npos);
    CHECK(fx.leg2_count == 0);
    std::remove((fx.dir.path + "-outside.key").c_str());
  }
}

#if defined(_WIN32)
// A symbolic link is a reparse point: opened as itself and refused as not a regular file.
// Creating one needs developer mode or the privilege; Wine 8's CreateSymbolicLink reports
// success and creates nothing, so tools/test_windows.sh excludes this case under Wine.
TEST_CASE("Azure Arc: a symbolic link named .key is refused (Windows)") {
  ArcAgent fx(checking_key());
  const std::string outside = fx.dir.path + "-outside.key", link = fx.dir.path + "\\link.key";
  write_file(outside, "outside-secret");
  struct Remove {
    std::string path;
    ~Remove() { std::remove(path.c_str()); }
  } remove_outside{outside};
  REQUIRE(CreateSymbolicLinkA(link.c_str(), outside.c_str(), 0x2 /* ALLOW_UNPRIVILEGED_CREATE */) != 0);
  REQUIRE(GetFileAttributesA(link.c_str()) != INVALID_FILE_ATTRIBUTES);
  fx.realm = "Basic realm=" + fx.dir.path + "/link.key";
  auto token = mi::New(mi::SystemAssigned())->AcquireToken(mi::Context::Background(), "https://arc-link");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::arc_challenge);
  CHECK(token.error().message().find("regular") != std::string::npos);
  CHECK(token.error().message().find("outside-secret") == std::string::npos);
  CHECK(fx.leg2_count == 0);
}
#endif

TEST_CASE("Azure Arc: a 4096-byte key is accepted") {
  ArcAgent fx(checking_key());
  fx.key = std::string(4096, 'a');
  write_file(fx.dir.path + "/agent.key", fx.key);
  auto client = mi::New(mi::SystemAssigned());
  CHECK(client->AcquireToken(mi::Context::Background(), "https://arc-4096"));
}

TEST_CASE("Azure Arc: an empty key file or a byte outside printable ASCII is arc_challenge; nothing is sent") {
  struct Case {
    const char* name;
    std::string content;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"empty", "", "is empty"},
      {"trailing newline", "arc-key-6b1f0d\n", "printable ASCII"},
      {"trailing CRLF", "arc-key-6b1f0d\r\n", "printable ASCII"},
      {"a tab", "arc\tkey", "printable ASCII"},
      {"a NUL", std::string("arc\0key", 7), "printable ASCII"},
      {"DEL", "arc\x7fkey", "printable ASCII"},
      {"UTF-8", "arc-k\xc3\xa9y", "printable ASCII"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    ArcAgent agent;  // no key check: leg 2 is counted whatever it sends
    agent.write_key(c.content);
    auto client = mi::New(mi::SystemAssigned());
    REQUIRE(client);
    REQUIRE(client->source() == mi::Source::AzureArc);
    auto token = client->AcquireToken(mi::Context::Background(), "https://arc-key-rules");
    REQUIRE_FALSE(token);
    CHECK(token.error().code() == mi::Errc::arc_challenge);
    CHECK(token.error().message().find(c.expect) != std::string::npos);
    CHECK(token.error().message().find("arc-key") == std::string::npos);  // never the contents
    CHECK(agent.leg2_count == 0);
  }
  // Printable ASCII, spaces included, is sent as it is.
  ArcAgent agent;
  agent.key = "arc key ~!";
  agent.write_key(agent.key);
  auto token = mi::New(mi::SystemAssigned())->AcquireToken(mi::Context::Background(), "https://arc-key-rules");
  REQUIRE_MESSAGE(token, (token ? "" : token.error().message()));
  CHECK(agent.leg2_count == 1);
  CHECK(agent.last_authorization() == "Basic arc key ~!");
}

TEST_CASE("Azure Arc: a success on leg 1 is arc_challenge; another status is http_status") {
  {
    CleanEnv env;
    fresh_cache();
    TempDir dir;
    support::set_arc_token_dir(dir.path);
    Server server([](const Request&) { return Reply::json(support::imds_body("unchallenged")); });
    set_env("IDENTITY_ENDPOINT", server.url());
    set_env("IMDS_ENDPOINT", server.base());
    auto token = mi::New(mi::SystemAssigned())->AcquireToken(mi::Context::Background(), "https://arc-200");
    REQUIRE_FALSE(token);
    CHECK(token.error().code() == mi::Errc::arc_challenge);
    CHECK(token.error().message().find("unchallenged") == std::string::npos);
  }
  {
    CleanEnv env;
    fresh_cache();
    Server server([](const Request&) { return Reply::http(400, "{\"error\":\"bad_request\"}"); });
    set_env("IDENTITY_ENDPOINT", server.url());
    set_env("IMDS_ENDPOINT", server.base());
    auto token = mi::New(mi::SystemAssigned())->AcquireToken(mi::Context::Background(), "https://arc-400");
    REQUIRE_FALSE(token);
    CHECK(token.error().code() == mi::Errc::http_status);
    CHECK(token.error().status_code() == 400);
  }
}

TEST_CASE("Azure Arc: leg 1 is retried on 503; a 404 on leg 2 is http_status") {
  ArcAgent fx(checking_key());
  auto first = std::make_shared<std::atomic<bool>>(true);
  Server flaky([&fx, first](const Request& r) {
    if (first->exchange(false)) return Reply::http(503, "");
    if (!r.has_header("Authorization")) return Reply::http(401, "", {{"WWW-Authenticate", fx.realm}});
    return Reply::http(404, "{\"error\":\"identity_not_found\",\"error_description\":\"Identity not found\"}");
  });
  set_env("IDENTITY_ENDPOINT", flaky.url());
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::UserAssignedClientID("00000000-0000-0000-0000-000000000000"), mi::WithSleep(sleeps.hook()));
  auto token = client->AcquireToken(mi::Context::Background(), "https://arc-404");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::http_status);
  CHECK(token.error().status_code() == 404);
  CHECK(token.error().error_code() == "identity_not_found");
  // leg 1 twice (503, then 401), leg 2 four times (404 is retried for Arc too)
  CHECK(flaky.request_count() == 6);
  CHECK_FALSE(support::cached(mi::UserAssignedClientID("00000000-0000-0000-0000-000000000000"), "https://arc-404"));
}

TEST_CASE("Azure Arc: the key contents never appear in errors or logs") {
  ArcAgent fx(checking_key());
  fx.leg2 = [&fx](const Request&) {
    return Reply::http(500, "{\"error\":\"oops\",\"error_description\":\"bad key " + fx.key + "\"}");
  };
  auto logs = std::make_shared<std::vector<std::string>>();
  auto client = mi::New(mi::SystemAssigned(), mi::WithSleep([](std::chrono::milliseconds) {}),
                        mi::WithLogger([logs](mi::LogLevel, std::string_view m) { logs->emplace_back(m); }));
  auto token = client->AcquireToken(mi::Context::Background(), "https://arc-secret");
  REQUIRE_FALSE(token);
  CHECK(token.error().message().find(fx.key) == std::string::npos);
  CHECK(token.error().error_description().find(fx.key) == std::string::npos);
  for (const auto& line : *logs) CHECK(line.find(fx.key) == std::string::npos);
}
