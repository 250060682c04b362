// AKS workload identity (docs/protocol.md §1 step 0, §12) through an injected mi::HttpClient
// that records each request and sends nothing: detection, the identity and tenant rules, the
// token endpoint (the default authority included, never contacted), the exact request, the
// token file's rules and rotation, Entra's errors and their hints, retries, the cache, claims
// and client capabilities. The HTTPS transport itself is tested in test_workload_tls.cpp.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include <cstdio>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#if !defined(_WIN32)
#include <sys/stat.h>
#include <unistd.h>
#endif

#include "cache_support.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using support::CleanEnv;
using support::RecordingHttpClient;
using support::set_env;
using support::unset_env;

namespace {

constexpr const char* kTenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
constexpr const char* kClient = "5e29463d-71da-4fe0-8e69-999b57db23b0";
// An unsigned JWT as kubelet would project it (header.payload.signature, base64url).
constexpr const char* kAssertion =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6IncxIn0.eyJpc3MiOiJodHRwczovL29pZGMudGVzdC8iLCJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6"
    "ZGVmYXVsdDp3aSJ9.c2lnbmF0dXJlLXNlY3JldC1wYXJ0";

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// A temporary directory holding the token file, removed at the end of the test.
class TokenDir {
 public:
  TokenDir() {
#if defined(_WIN32)
    dir_ = support::make_temp_dir("mi-wi");
#else
    char tmpl[] = "/tmp/mi-wi-XXXXXX";
    const char* made = mkdtemp(tmpl);
    REQUIRE(made != nullptr);
    dir_ = made;
#endif
    file_ = dir_ + "/token";
    write_text(file_, kAssertion);
  }
  ~TokenDir() {
#if defined(_WIN32)
    support::remove_tree(dir_);
#else
    std::string command = "rm -rf '" + dir_ + "'";
    (void)std::system(command.c_str());
#endif
  }
  TokenDir(const TokenDir&) = delete;
  TokenDir& operator=(const TokenDir&) = delete;
  const std::string& dir() const { return dir_; }
  const std::string& file() const { return file_; }

 private:
  std::string dir_, file_;
};

// The variables the workload identity webhook sets, pointing at `token_file`.
void workload_env(const std::string& token_file) {
  set_env("AZURE_FEDERATED_TOKEN_FILE", token_file);
  set_env("AZURE_TENANT_ID", kTenant);
  set_env("AZURE_CLIENT_ID", kClient);
  // A closed loopback port: a test that forgot to inject its transport fails here instead of
  // reaching a real Entra host. The default authority is checked through a recording client.
  set_env("AZURE_AUTHORITY_HOST", "https://127.0.0.1:9/");
}

std::string entra_token(const std::string& token, long long expires_in = 3599, const std::string& extra = "") {
  return "{\"token_type\":\"Bearer\",\"expires_in\":" + std::to_string(expires_in) +
         ",\"ext_expires_in\":" + std::to_string(expires_in) + ",\"access_token\":\"" + token + "\"" + extra + "}";
}

// Entra's error body, as login.microsoftonline.com sends it.
std::string entra_error(const std::string& error, const std::string& code, const std::string& text,
                        const std::string& correlation = "7b4e5f0a-1c2d-4e3f-8a9b-0c1d2e3f4a5b") {
  return "{\"error\":\"" + error + "\",\"error_description\":\"AADSTS" + code + ": " + text +
         " Trace ID: 0a1b2c3d-0000-4000-8000-000000000001\\r\\nCorrelation ID: " + correlation +
         "\\r\\nTimestamp: 2026-12-02 19:51:37Z\",\"error_codes\":[" + code +
         "],\"timestamp\":\"2026-12-02 19:51:37Z\",\"trace_id\":\"0a1b2c3d-0000-4000-8000-000000000001\","
         "\"correlation_id\":\"" + correlation + "\",\"error_uri\":\"https://login.microsoftonline.com/error?code=" +
         code + "\"}";
}

std::shared_ptr<RecordingHttpClient> answering(std::function<mi::HttpResponse(const mi::HttpRequest&)> answer) {
  return std::make_shared<RecordingHttpClient>(
      [answer](const mi::HttpRequest& r) -> mi::Result<mi::HttpResponse> { return answer(r); });
}

// Answers every request with a new token "<prefix>-1", "<prefix>-2", ...
std::shared_ptr<RecordingHttpClient> tokens(const std::string& prefix) {
  auto mint = std::make_shared<support::TokenMint>(prefix);
  return answering([mint](const mi::HttpRequest&) { return support::response(200, entra_token(mint->next())); });
}

// The form body's fields, decoded.
std::vector<std::pair<std::string, std::string>> form_fields(const std::string& body) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t pos = 0;
  while (pos <= body.size()) {
    size_t amp = body.find('&', pos);
    std::string part = body.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
    size_t eq = part.find('=');
    out.emplace_back(mi::detail::percent_decode(part.substr(0, eq), true),
                     eq == std::string::npos ? std::string() : mi::detail::percent_decode(part.substr(eq + 1), true));
    if (amp == std::string::npos) break;
    pos = amp + 1;
  }
  return out;
}

std::string field(const mi::HttpRequest& r, const std::string& name) {
  for (const auto& f : form_fields(r.body))
    if (f.first == name) return f.second;
  return "<absent>";
}

bool is_uuid(const std::string& s) {
  static const std::regex uuid("^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");
  return std::regex_match(s, uuid);
}

}  // namespace

// ---- detection and identity (§1 step 0, §12) -------------------------------------------------

TEST_CASE("detection: AZURE_FEDERATED_TOKEN_FILE and AZURE_TENANT_ID select WorkloadIdentity ahead of every source") {
  CleanEnv env;
  CHECK(mi::to_string(mi::Source::WorkloadIdentity) == "WorkloadIdentity");
  // Every other source's variables set at once: workload identity still wins.
  set_env("IDENTITY_ENDPOINT", "https://127.0.0.1:1/");
  set_env("IDENTITY_HEADER", "h");
  set_env("IDENTITY_SERVER_THUMBPRINT", std::string(40, 'A'));
  set_env("MSI_ENDPOINT", "http://127.0.0.1:1/");
  set_env("MSI_SECRET", "s");
  set_env("IMDS_ENDPOINT", "http://127.0.0.1:1/");
  CHECK(mi::GetSource() == mi::Source::ServiceFabric);
  set_env("AZURE_FEDERATED_TOKEN_FILE", "/var/run/secrets/azure/tokens/azure-identity-token");
  CHECK(mi::GetSource() == mi::Source::ServiceFabric);  // the tenant is missing
  set_env("AZURE_TENANT_ID", kTenant);
  CHECK(mi::GetSource() == mi::Source::WorkloadIdentity);
  set_env("AZURE_FEDERATED_TOKEN_FILE", "");  // empty counts as unset
  CHECK(mi::GetSource() == mi::Source::ServiceFabric);
  for (const char* name : {"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT",
                           "MSI_SECRET", "IMDS_ENDPOINT"})
    unset_env(name);
  set_env("AZURE_FEDERATED_TOKEN_FILE", "/t");
  unset_env("AZURE_TENANT_ID");
  CHECK(mi::GetSource() != mi::Source::WorkloadIdentity);
}

TEST_CASE("identity: system-assigned uses AZURE_CLIENT_ID; a user-assigned client ID overrides it") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  {
    support::fresh_cache();
    auto http = tokens("wi");
    auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
    REQUIRE(client);
    CHECK(client->source() == mi::Source::WorkloadIdentity);
    REQUIRE(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net"));
    REQUIRE(http->count() == 1);
    CHECK(field(http->requests()[0], "client_id") == kClient);
  }
  {
    support::fresh_cache();
    auto http = tokens("wi");
    auto client = mi::New(mi::UserAssignedClientID("0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"), mi::WithHTTPClient(http));
    REQUIRE(client);
    REQUIRE(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net"));
    REQUIRE(http->count() == 1);
    CHECK(field(http->requests()[0], "client_id") == "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0");
  }
}

TEST_CASE("identity: no client ID is invalid_argument at New naming AZURE_CLIENT_ID, never a fall-through to IMDS") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  unset_env("AZURE_CLIENT_ID");
  auto http = tokens("never");
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  REQUIRE_FALSE(client);
  CHECK(client.error().code() == mi::Errc::invalid_argument);
  CHECK(client.error().source() == mi::Source::WorkloadIdentity);
  CHECK(client.error().message().find("AZURE_CLIENT_ID") != std::string::npos);
  CHECK(client.error().message().find("mi::UserAssignedClientID") != std::string::npos);
  CHECK(http->count() == 0);
  // An empty user-assigned client ID is invalid_argument too.
  set_env("AZURE_CLIENT_ID", kClient);
  auto empty = mi::New(mi::UserAssignedClientID(""), mi::WithHTTPClient(http));
  REQUIRE_FALSE(empty);
  CHECK(empty.error().code() == mi::Errc::invalid_argument);
}

TEST_CASE("identity: object and resource IDs are unsupported_identity") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  for (const mi::ID& id : {mi::UserAssignedObjectID("obj"), mi::UserAssignedResourceID("/subscriptions/s/id")}) {
    auto client = mi::New(id, mi::WithHTTPClient(tokens("never")));
    REQUIRE_FALSE(client);
    CHECK(client.error().code() == mi::Errc::unsupported_identity);
    CHECK(client.error().source() == mi::Source::WorkloadIdentity);
    CHECK(client.error().message().find("mi::UserAssignedClientID") != std::string::npos);
  }
}

TEST_CASE("tenant: a GUID or a domain name; anything else is invalid_argument at New") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  const std::string label63(63, 'a'), label64(64, 'a');
  for (const std::string good : {std::string(kTenant), std::string("contoso.onmicrosoft.com"),
                                 std::string("CONTOSO-1.example"), std::string("organizations"), label63 + ".com"}) {
    CAPTURE(good);
    set_env("AZURE_TENANT_ID", good);
    auto http = tokens("t");
    support::fresh_cache();
    auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
    REQUIRE(client);
    REQUIRE(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net"));
    CHECK(http->requests()[0].url == "https://127.0.0.1:9/" + good + "/oauth2/v2.0/token");
  }
  for (const std::string bad :
       {std::string(".."), std::string("a..b"), std::string(".contoso.com"), std::string("contoso.com."),
        std::string("con toso"), std::string("a/b"), std::string("../../evil"), std::string("x?y=1"),
        std::string("x#y"), std::string("%2e%2e"), std::string("t\r\nHost: evil"), std::string("caf\xc3\xa9"),
        std::string("under_score"), label64, std::string("a.") + label64}) {
    CAPTURE(bad);
    set_env("AZURE_TENANT_ID", bad);
    auto http = tokens("t");
    auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
    REQUIRE_FALSE(client);
    CHECK(client.error().code() == mi::Errc::invalid_argument);
    CHECK(client.error().message().find("AZURE_TENANT_ID") != std::string::npos);
    CHECK(http->count() == 0);
  }
}

// ---- the token endpoint ----------------------------------------------------------------------

TEST_CASE("authority: the default is login.microsoftonline.com, checked only through a recording HttpClient") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  unset_env("AZURE_AUTHORITY_HOST");
  support::fresh_cache();
  // Nothing reaches a network: the recording client answers every request itself.
  auto http = tokens("default");
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  REQUIRE(client);
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net"));
  REQUIRE(http->count() == 1);
  CHECK(http->requests()[0].url ==
        std::string("https://login.microsoftonline.com/") + kTenant + "/oauth2/v2.0/token");
}

TEST_CASE("authority: AZURE_AUTHORITY_HOST with one trailing '/' ensured, its path and query kept; https only") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  struct Case {
    const char* authority;
    std::string url;
  };
  const std::string t = kTenant;
  for (const Case& c : {Case{"https://login.microsoftonline.us", "https://login.microsoftonline.us/" + t +
                                                                     "/oauth2/v2.0/token"},
                        Case{"https://login.chinacloudapi.cn/", "https://login.chinacloudapi.cn/" + t +
                                                                    "/oauth2/v2.0/token"},
                        Case{"https://127.0.0.1:8443/base", "https://127.0.0.1:8443/base/" + t + "/oauth2/v2.0/token"},
                        Case{"https://[::1]:8443/base/", "https://[::1]:8443/base/" + t + "/oauth2/v2.0/token"},
                        Case{"https://login.example/?slice=testslice",
                             "https://login.example/" + t + "/oauth2/v2.0/token?slice=testslice"}}) {
    CAPTURE(c.authority);
    support::fresh_cache();
    set_env("AZURE_AUTHORITY_HOST", c.authority);
    auto http = tokens("a");
    auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
    REQUIRE(client);
    REQUIRE(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net"));
    CHECK(http->requests()[0].url == c.url);
  }
  for (const char* bad : {"http://login.microsoftonline.com/", "login.microsoftonline.com", "https://user:pw@host/",
                          "https://host/\r\n", "ftp://host/", "https://"}) {
    CAPTURE(bad);
    set_env("AZURE_AUTHORITY_HOST", bad);
    auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(tokens("a")));
    REQUIRE_FALSE(client);
    CHECK(client.error().code() == mi::Errc::invalid_argument);
    CHECK(client.error().message().find("AZURE_AUTHORITY_HOST") != std::string::npos);
    CHECK(client.error().message().find("pw") == std::string::npos);
  }
}

// ---- the request (§12) -----------------------------------------------------------------------

TEST_CASE("request: exact method, URL, headers and form body") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  set_env("AZURE_AUTHORITY_HOST", "https://127.0.0.1:9443/");
  support::fresh_cache();
  auto http = tokens("exact");
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  REQUIRE(client);
  auto token = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net/.default");
  REQUIRE(token);
  CHECK(token->resource == "https://vault.azure.net");
  CHECK(token->access_token == "exact-1");
  CHECK(token->token_type == "Bearer");
  REQUIRE(http->count() == 1);
  const mi::HttpRequest r = http->requests()[0];
  CHECK(r.method == "POST");
  CHECK(r.url == std::string("https://127.0.0.1:9443/") + kTenant + "/oauth2/v2.0/token");
  CHECK(r.pinned_sha1.empty());
  REQUIRE(r.headers.size() == 7);
  const std::string request_id = support::header_of(r, "client-request-id");
  CHECK(is_uuid(request_id));
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"User-Agent", "managed-identity-cpp/" MI_VERSION_STRING},
      {"Accept", "application/json"},
      {"x-client-SKU", "managed-identity-cpp"},
      {"x-client-Ver", MI_VERSION_STRING},
      {"return-client-request-id", "true"},
      {"client-request-id", request_id},
      {"Content-Type", "application/x-www-form-urlencoded"}};
  CHECK(r.headers == expected);
  CHECK(r.body == std::string("grant_type=client_credentials&client_id=") + kClient +
                      "&scope=https%3A%2F%2Fvault.azure.net%2F.default"
                      "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
                      "&client_assertion=" + kAssertion);
}

TEST_CASE("request: every form value is percent-encoded, so no input adds a field") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  support::fresh_cache();
  auto http = tokens("enc");
  auto client = mi::New(mi::UserAssignedClientID("id&scope=x y"), mi::WithHTTPClient(http));
  REQUIRE(client);
  REQUIRE(client->AcquireToken(mi::Context::Background(), "api://app&grant_type=password"));
  const mi::HttpRequest r = http->requests()[0];
  auto fields = form_fields(r.body);
  REQUIRE(fields.size() == 5);
  CHECK(field(r, "client_id") == "id&scope=x y");
  CHECK(field(r, "scope") == "api://app&grant_type=password/.default");
  CHECK(field(r, "grant_type") == "client_credentials");
  CHECK(r.body.find(' ') == std::string::npos);
}

// ---- the token file (§12) --------------------------------------------------------------------

TEST_CASE("token file: white space around the token is trimmed; the file is read at every request") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  support::fresh_cache();
  auto http = tokens("rot");
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  REQUIRE(client);
  write_text(dir.file(), std::string(" \t\r\n") + kAssertion + "\r\n\n");
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net"));
  CHECK(field(http->requests()[0], "client_assertion") == kAssertion);
  // kubelet writes a new token: the next request (another resource, so not the cache) uses it.
  write_text(dir.file(), "eyJhbGciOiJub25lIn0.eyJqdGkiOiIyIn0.c2ln-rotated");
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://storage.azure.com"));
  CHECK(field(http->requests()[1], "client_assertion") == "eyJhbGciOiJub25lIn0.eyJqdGkiOiIyIn0.c2ln-rotated");
}

#if !defined(_WIN32)
TEST_CASE("token file: rotated as kubelet does, by swapping a symbolic link; links are followed") {
  CleanEnv env;
  TokenDir dir;
  // tokens/azure-identity-token -> ..data/azure-identity-token, ..data -> ..2026_01 (then ..2026_02)
  const std::string d = dir.dir();
  REQUIRE(mkdir((d + "/..2026_01").c_str(), 0700) == 0);
  REQUIRE(mkdir((d + "/..2026_02").c_str(), 0700) == 0);
  write_text(d + "/..2026_01/azure-identity-token", "eyJ.first.sig");
  write_text(d + "/..2026_02/azure-identity-token", "eyJ.second.sig");
  REQUIRE(symlink("..2026_01", (d + "/..data").c_str()) == 0);
  REQUIRE(symlink("..data/azure-identity-token", (d + "/azure-identity-token").c_str()) == 0);
  workload_env(d + "/azure-identity-token");
  support::fresh_cache();
  auto http = tokens("link");
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  REQUIRE(client);
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net"));
  CHECK(field(http->requests()[0], "client_assertion") == "eyJ.first.sig");
  // The atomic swap: a new link renamed over ..data.
  REQUIRE(symlink("..2026_02", (d + "/..data_tmp").c_str()) == 0);
  REQUIRE(std::rename((d + "/..data_tmp").c_str(), (d + "/..data").c_str()) == 0);
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net", mi::WithClaims("{}")));
  CHECK(field(http->requests()[1], "client_assertion") == "eyJ.second.sig");
}
#endif

TEST_CASE("token file: each rule is invalid_argument naming the file and the rule, and nothing is sent") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  struct Case {
    const char* name;
    std::function<void()> prepare;
    const char* rule;
  };
  const std::string file = dir.file();
  std::vector<Case> cases = {
      {"missing", [&] { std::remove(file.c_str()); }, "does not exist"},
      {"empty", [&] { write_text(file, ""); }, "is empty"},
      {"white space only", [&] { write_text(file, " \r\n\t\n"); }, "is empty"},
      {"a control character inside", [&] { write_text(file, "eyJ.abc\x01" "def.sig"); }, "control character"},
      {"an inner newline", [&] { write_text(file, "eyJ.abc\ndef.sig"); }, "control character"},
      {"DEL", [&] { write_text(file, "eyJ.abc\x7f.sig"); }, "control character"},
      {"NUL", [&] { write_text(file, std::string("eyJ.abc\0def.sig", 15)); }, "control character"},
      {"larger than 64 KiB", [&] { write_text(file, std::string(64 * 1024 + 1, 'a')); }, "larger than 64 KiB"},
#if !defined(_WIN32)
      {"a directory",
       [&] {
         std::remove(file.c_str());
         REQUIRE(mkdir(file.c_str(), 0700) == 0);
       },
       "not a regular file"},
      // A FIFO must neither hang the caller (opened without blocking) nor be read.
      {"a FIFO",
       [&] {
         (void)rmdir(file.c_str());
         std::remove(file.c_str());
         REQUIRE(mkfifo(file.c_str(), 0600) == 0);
       },
       "not a regular file"},
      {"a dangling link",
       [&] {
         std::remove(file.c_str());
         REQUIRE(symlink((dir.dir() + "/nowhere").c_str(), file.c_str()) == 0);
       },
       "does not exist"},
#endif
  };
  auto http = tokens("never");
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  REQUIRE(client);  // the file is not read at New
  for (const Case& c : cases) {
    CAPTURE(c.name);
    support::fresh_cache();
    std::remove(file.c_str());
    write_text(file, kAssertion);
    c.prepare();
    auto token = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
    REQUIRE_FALSE(token);
    CHECK(token.error().code() == mi::Errc::invalid_argument);
    CHECK(token.error().source() == mi::Source::WorkloadIdentity);
    CHECK(token.error().message().find("AZURE_FEDERATED_TOKEN_FILE") != std::string::npos);
    CHECK(token.error().message().find(file) != std::string::npos);
    CHECK(token.error().message().find(c.rule) != std::string::npos);
    CHECK(token.error().message().find("abc") == std::string::npos);
    CHECK_FALSE(token.error().retryable());
    CHECK(http->count() == 0);
  }
  // Exactly 64 KiB is allowed.
  std::remove(file.c_str());
  write_text(file, std::string(64 * 1024, 'a'));
  support::fresh_cache();
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net"));
  CHECK(http->count() == 1);
}

// ---- Entra's errors (§12) --------------------------------------------------------------------

TEST_CASE("errors: Entra's body fills mi::Error and the message says what to fix for the four common codes") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  struct Case {
    int status;
    const char* error;
    const char* code;
    const char* hint;
  };
  for (const Case& c : {Case{400, "invalid_request", "70021", "federated identity credential"},
                        Case{400, "unauthorized_client", "700016", "not an application in this tenant"},
                        Case{401, "invalid_client", "700024", "has expired"},
                        Case{400, "invalid_request", "90002", "no such tenant"}}) {
    CAPTURE(c.code);
    support::fresh_cache();
    auto http = answering([&c](const mi::HttpRequest&) {
      return support::response(c.status, entra_error(c.error, c.code, "Something is wrong."));
    });
    auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
    REQUIRE(client);
    auto token = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
    REQUIRE_FALSE(token);
    const mi::Error& e = token.error();
    CHECK(e.code() == mi::Errc::http_status);
    CHECK(e.status_code() == c.status);
    CHECK(e.source() == mi::Source::WorkloadIdentity);
    CHECK(e.error_code() == c.error);
    CHECK(e.error_description().rfind(std::string("AADSTS") + c.code + ":", 0) == 0);
    CHECK(e.correlation_id() == "7b4e5f0a-1c2d-4e3f-8a9b-0c1d2e3f4a5b");
    CHECK(e.message().find("Microsoft Entra ID answered HTTP") != std::string::npos);
    CHECK(e.message().find(c.hint) != std::string::npos);
    CHECK_FALSE(e.retryable());
    CHECK(http->count() == 1);  // 400 and 401 are final
  }
}

TEST_CASE("errors: the assertion never appears in an error or a log line, even when echoed") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  support::fresh_cache();
  auto lines = std::make_shared<std::vector<std::string>>();
  auto http = answering([](const mi::HttpRequest& r) {
    // A hostile or buggy endpoint echoes the whole form, assertion included.
    return support::response(503, "{\"error\":\"temporarily_unavailable\",\"error_description\":\"" + r.body + "\"}");
  });
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http), mi::WithSleep(sleeps.hook()),
                        mi::WithLogger([lines](mi::LogLevel, std::string_view line) { lines->emplace_back(line); }));
  REQUIRE(client);
  auto token = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  REQUIRE_FALSE(token);
  const std::string secret_part = "c2lnbmF0dXJlLXNlY3JldC1wYXJ0";
  CHECK(token.error().message().find(secret_part) == std::string::npos);
  CHECK(token.error().error_description().find(secret_part) == std::string::npos);
  CHECK(token.error().message().find("[redacted]") != std::string::npos);
  CHECK_FALSE(lines->empty());
  for (const std::string& line : *lines) CHECK(line.find(secret_part) == std::string::npos);
}

TEST_CASE("errors: without a correlation id in the body, the client-request-id sent is the correlation id") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  support::fresh_cache();
  auto http = answering([](const mi::HttpRequest&) { return support::response(400, "<html>bad</html>"); });
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  REQUIRE(client);
  auto token = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  REQUIRE_FALSE(token);
  CHECK(token.error().correlation_id() == support::header_of(http->requests()[0], "client-request-id"));
}

TEST_CASE("errors: a redirect is final, never followed") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  support::fresh_cache();
  auto http = answering([](const mi::HttpRequest&) {
    return support::response(302, "", {{"Location", "https://evil.example/"}});
  });
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  REQUIRE(client);
  auto token = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::http_status);
  CHECK(token.error().status_code() == 302);
  CHECK(http->count() == 1);
}

// ---- retries (§12: transport errors, 408, 429, 500, 502, 503, 504; 1 s, 2 s, 4 s) --------------

TEST_CASE("retries: the Entra class, exponential waits, the same client-request-id on every attempt") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  for (int status : {408, 429, 500, 502, 503, 504}) {
    CAPTURE(status);
    support::fresh_cache();
    int calls = 0;
    auto http = answering([&calls, status](const mi::HttpRequest&) {
      return ++calls <= 3 ? support::response(status, entra_error("temporarily_unavailable", "50196", "busy"))
                          : support::response(200, entra_token("after-retries"));
    });
    support::SleepRecorder sleeps;
    auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http), mi::WithSleep(sleeps.hook()));
    REQUIRE(client);
    auto token = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
    REQUIRE(token);
    CHECK(token->access_token == "after-retries");
    auto waits = sleeps.get();
    REQUIRE(waits.size() == 3);
    const long long base[] = {1000, 2000, 4000};
    for (size_t i = 0; i < 3; ++i) {
      CHECK(waits[i] >= base[i]);
      CHECK(waits[i] <= base[i] + base[i] / 5);
    }
    auto requests = http->requests();
    REQUIRE(requests.size() == 4);
    for (const auto& r : requests) {
      CHECK(support::header_of(r, "client-request-id") == support::header_of(requests[0], "client-request-id"));
      CHECK(r.body == requests[0].body);
    }
  }
}

TEST_CASE("retries: 404 and other statuses are final; transport errors are retried") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  for (int status : {400, 401, 403, 404, 410, 501}) {
    CAPTURE(status);
    support::fresh_cache();
    auto http = answering([status](const mi::HttpRequest&) { return support::response(status, "{}"); });
    support::SleepRecorder sleeps;
    auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http), mi::WithSleep(sleeps.hook()));
    REQUIRE(client);
    auto token = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
    REQUIRE_FALSE(token);
    CHECK(http->count() == 1);
    CHECK_FALSE(token.error().retryable());
  }
  support::fresh_cache();
  int calls = 0;
  auto http = std::make_shared<RecordingHttpClient>([&calls](const mi::HttpRequest&) -> mi::Result<mi::HttpResponse> {
    if (++calls == 1) return mi::Error(mi::Errc::network, "connection reset");
    return support::response(200, entra_token("after-reset"));
  });
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http), mi::WithSleep(sleeps.hook()));
  REQUIRE(client);
  auto token = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  REQUIRE(token);
  CHECK(http->count() == 2);
  // Error::retryable() follows the same class.
  mi::Error e = mi::detail::ErrorAccess::make(mi::Errc::http_status, "x", mi::Source::WorkloadIdentity);
  mi::detail::ErrorAccess::set_status(e, 404);
  CHECK_FALSE(e.retryable());
  mi::detail::ErrorAccess::set_status(e, 503);
  CHECK(e.retryable());
}

TEST_CASE("retries: Retry-After is honoured when longer than the backoff") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  support::fresh_cache();
  int calls = 0;
  auto http = answering([&calls](const mi::HttpRequest&) {
    return ++calls == 1 ? support::response(429, entra_error("temporarily_unavailable", "50196", "slow down"),
                                            {{"Retry-After", "7"}})
                        : support::response(200, entra_token("after-429"));
  });
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http), mi::WithSleep(sleeps.hook()));
  REQUIRE(client);
  REQUIRE(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net"));
  auto waits = sleeps.get();
  REQUIRE(waits.size() == 1);
  CHECK(waits[0] >= 7000);
  CHECK(waits[0] <= 8400);
}

// ---- cache, refresh, claims, capabilities (§6, §7, §12) --------------------------------------

TEST_CASE("cache: a second call is served from the cache, keyed by WorkloadIdentity") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  support::fresh_cache();
  auto http = tokens("cache");
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  REQUIRE(client);
  auto t1 = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  auto t2 = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net/.default");
  REQUIRE(t1);
  REQUIRE(t2);
  CHECK(t1->token_source == mi::TokenSource::IdentityProvider);
  CHECK(t2->token_source == mi::TokenSource::Cache);
  CHECK(t2->access_token == t1->access_token);
  CHECK(http->count() == 1);
  // Even when the token file is gone, a cached token needs no request.
  std::remove(dir.file().c_str());
  CHECK(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net"));
}

TEST_CASE("cache: clients made under different AZURE_CLIENT_ID or tenant never share a token") {
  // The system-assigned identity here is whatever AZURE_CLIENT_ID and AZURE_TENANT_ID said at
  // New: a second client made after they changed is another identity and must not get the
  // first one's cached token.
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  support::fresh_cache();
  auto http = answering([](const mi::HttpRequest& r) {
    return support::response(200, entra_token("token-for-" + field(r, "client_id") + "-" + r.url));
  });
  auto first = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  REQUIRE(first);
  set_env("AZURE_CLIENT_ID", "5a6b7c8d-0000-4000-8000-0000000000c2");
  auto second = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  REQUIRE(second);
  set_env("AZURE_TENANT_ID", "contoso.example");
  auto third = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  REQUIRE(third);
  auto t1 = first->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  auto t2 = second->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  auto t3 = third->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  REQUIRE(t1);
  REQUIRE(t2);
  REQUIRE(t3);
  CHECK(t2->token_source == mi::TokenSource::IdentityProvider);
  CHECK(t3->token_source == mi::TokenSource::IdentityProvider);
  CHECK(t1->access_token != t2->access_token);
  CHECK(t2->access_token != t3->access_token);
  CHECK(http->count() == 3);
  // Each client still finds its own token in the cache.
  CHECK(first->AcquireToken(mi::Context::Background(), "https://vault.azure.net")->access_token == t1->access_token);
  CHECK(second->AcquireToken(mi::Context::Background(), "https://vault.azure.net")->access_token == t2->access_token);
  CHECK(http->count() == 3);
}

TEST_CASE("cache: proactive refresh at refresh_in, one attempt, the cached token kept on failure") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  support::fresh_cache();
  auto now = std::make_shared<std::chrono::system_clock::time_point>(std::chrono::system_clock::now());
  int calls = 0;
  auto http = answering([&calls](const mi::HttpRequest&) {
    ++calls;
    if (calls == 2) return support::response(503, "{}");
    return support::response(200, entra_token("r" + std::to_string(calls), 3599, ",\"refresh_in\":1800"));
  });
  support::SleepRecorder sleeps;
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http), mi::WithSleep(sleeps.hook()),
                        mi::WithClock([now] { return *now; }));
  REQUIRE(client);
  auto t1 = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  REQUIRE(t1);
  CHECK(t1->refresh_on - *now == std::chrono::seconds(1800));
  *now += std::chrono::seconds(1801);
  auto t2 = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");  // refresh fails
  REQUIRE(t2);
  CHECK(t2->access_token == "r1");
  CHECK(calls == 2);
  CHECK(sleeps.get().empty());
  *now += std::chrono::seconds(31);  // after the cool-down
  auto t3 = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  REQUIRE(t3);
  CHECK(t3->access_token == "r3");
}

TEST_CASE("claims: bypass the cache and are sent as the claims field; capabilities go in access_token.xms_cc") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  support::fresh_cache();
  {
    auto http = tokens("c");
    auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
    REQUIRE(client);
    REQUIRE(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net"));
    CHECK(field(http->requests()[0], "claims") == "<absent>");
    const std::string claims = "{\"access_token\":{\"nbf\":{\"essential\":true,\"value\":\"1700000000\"}}}";
    auto t2 = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net", mi::WithClaims(claims));
    REQUIRE(t2);
    CHECK(t2->token_source == mi::TokenSource::IdentityProvider);
    REQUIRE(http->count() == 2);
    CHECK(field(http->requests()[1], "claims") == claims);
    CHECK(form_fields(http->requests()[1].body).size() == 6);
    // The claims token replaced the cached one.
    auto t3 = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
    REQUIRE(t3);
    CHECK(t3->access_token == t2->access_token);
    CHECK(http->count() == 2);
  }
  support::fresh_cache();
  {
    auto http = tokens("cc");
    auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http),
                          mi::WithClientCapabilities({"cp1", " ", "llt"}));
    REQUIRE(client);
    REQUIRE(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net"));
    CHECK(field(http->requests()[0], "claims") == "{\"access_token\":{\"xms_cc\":{\"values\":[\"cp1\",\"llt\"]}}}");
    REQUIRE(client->AcquireToken(
        mi::Context::Background(), "https://vault.azure.net",
        mi::WithClaims("{\"id_token\":{\"x\":1},\"access_token\":{\"nbf\":{\"essential\":true},"
                       "\"xms_cc\":{\"values\":[\"old\"],\"other\":\"k\\\"q\"}}}")));
    CHECK(field(http->requests()[1], "claims") ==
          "{\"id_token\":{\"x\":1},\"access_token\":{\"nbf\":{\"essential\":true},"
          "\"xms_cc\":{\"values\":[\"cp1\",\"llt\"],\"other\":\"k\\\"q\"}}}");
  }
}

TEST_CASE("claims: text that is not a JSON object is invalid_argument, nothing sent") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  support::fresh_cache();
  auto http = tokens("bad");
  auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
  REQUIRE(client);
  for (const char* claims : {"not json", "[1]", "\"s\"", "{\"a\":", "{} {}"}) {
    CAPTURE(claims);
    auto token = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net", mi::WithClaims(claims));
    REQUIRE_FALSE(token);
    CHECK(token.error().code() == mi::Errc::invalid_argument);
    CHECK(token.error().message().find("WithClaims") != std::string::npos);
  }
  CHECK(http->count() == 0);
}

// ---- the AKS token proxy (identity binding) through an injected client -------------------------

TEST_CASE("token proxy: the request goes to the proxy, its path in front of the authority's, the query kept") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  set_env("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/base/?slice=s1");
  set_env("AZURE_KUBERNETES_CA_FILE", "/etc/aks/ca.crt");
  const std::string t = kTenant;
  struct Case {
    const char* proxy;
    std::string url;
  };
  for (const Case& c : {Case{"https://10.0.0.1:8443", "https://10.0.0.1:8443/base/" + t + "/oauth2/v2.0/token?slice=s1"},
                        Case{"https://10.0.0.1:8443/tokenproxy/",
                             "https://10.0.0.1:8443/tokenproxy/base/" + t + "/oauth2/v2.0/token?slice=s1"},
                        Case{"https://aks-proxy.test/p", "https://aks-proxy.test/p/base/" + t +
                                                             "/oauth2/v2.0/token?slice=s1"}}) {
    CAPTURE(c.proxy);
    support::fresh_cache();
    set_env("AZURE_KUBERNETES_TOKEN_PROXY", c.proxy);
    auto http = tokens("p");
    auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(http));
    REQUIRE(client);
    REQUIRE(client->AcquireToken(mi::Context::Background(), "https://vault.azure.net"));
    CHECK(http->requests()[0].url == c.url);
  }
}

TEST_CASE("token proxy: its URL and CA settings are checked at New") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  struct Case {
    const char* proxy;
    const char* ca_file;
    const char* ca_data;
    const char* sni;
    const char* says;
  };
  for (const Case& c : {Case{"http://10.0.0.1:8443", "/ca", "", "", "AZURE_KUBERNETES_TOKEN_PROXY"},
                        Case{"https://u:p@10.0.0.1:8443", "/ca", "", "", "AZURE_KUBERNETES_TOKEN_PROXY"},
                        Case{"https://10.0.0.1:8443/?q=1", "/ca", "", "", "without a query"},
                        Case{"https://10.0.0.1:8443/#f", "/ca", "", "", "without a query or fragment"},
                        Case{"not a url", "/ca", "", "", "AZURE_KUBERNETES_TOKEN_PROXY"},
                        Case{"https://10.0.0.1:8443", "", "", "", "exactly one of AZURE_KUBERNETES_CA_FILE"},
                        Case{"https://10.0.0.1:8443", "/ca", "-----BEGIN CERTIFICATE-----", "",
                             "exactly one of AZURE_KUBERNETES_CA_FILE"},
                        Case{"https://10.0.0.1:8443", "/ca", "", "bad name/x", "AZURE_KUBERNETES_SNI_NAME"}}) {
    CAPTURE(c.proxy);
    CAPTURE(c.says);
    set_env("AZURE_KUBERNETES_TOKEN_PROXY", c.proxy);
    set_env("AZURE_KUBERNETES_CA_FILE", c.ca_file);
    set_env("AZURE_KUBERNETES_CA_DATA", c.ca_data);
    set_env("AZURE_KUBERNETES_SNI_NAME", c.sni);
    auto client = mi::New(mi::SystemAssigned(), mi::WithHTTPClient(tokens("p")));
    REQUIRE_FALSE(client);
    CHECK(client.error().code() == mi::Errc::invalid_argument);
    CHECK(client.error().message().find(c.says) != std::string::npos);
    CHECK(client.error().message().find(":p@") == std::string::npos);
  }
}

// ---- without HTTPS support -----------------------------------------------------------------------

#if !defined(MI_USE_CURL)
TEST_CASE("built without MI_USE_CURL: a tls error that says how to enable HTTPS") {
  CleanEnv env;
  TokenDir dir;
  workload_env(dir.file());
  set_env("AZURE_AUTHORITY_HOST", "https://127.0.0.1:9/");
  support::fresh_cache();
  auto client = mi::New(mi::SystemAssigned(), mi::WithCAFile("/nonexistent/ca.pem"));
  REQUIRE(client);
  auto token = client->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  REQUIRE_FALSE(token);
  CHECK(token.error().code() == mi::Errc::tls);
  CHECK(token.error().source() == mi::Source::WorkloadIdentity);
  CHECK(token.error().message().find("MI_USE_CURL") != std::string::npos);
}
#endif
