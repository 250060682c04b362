// mi-token: acquire a managed identity access token from the command line and print it: as
// JSON, one object per acquisition (the shape of `az account get-access-token`, plus the token
// and identity sources), or as the bare token, an Authorization header or export lines.
//
//   mi-token https://vault.azure.net
//   mi-token --client-id 00000000-0000-0000-0000-000000000000 https://management.azure.com
//   mi-token --repeat 2 https://storage.azure.com     # second line: "tokenSource": "Cache"
//   curl -H "$(mi-token --cache --output header https://vault.azure.net)" https://...
//   mi-token --decode https://vault.azure.net         # who the token is for (not verified)
//   mi-token --source                                 # which source the environment selects
//   mi-token --probe                                  # is an endpoint here? (exit 0, else 3)
//
// The token goes to stdout only, in the form asked for: that is what the tool is for. Error and
// log output never holds it.
//
// Files: options (command line, --help), output (printing, exit statuses), decode (--decode),
// file_cache (--cache).

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "decode.hpp"
#include "file_cache.hpp"
#include "managed_identity.hpp"
#include "options.hpp"
#include "output.hpp"

namespace {

using namespace mitoken;

const char* level_name(mi::LogLevel level) {
  switch (level) {
    case mi::LogLevel::Error: return "error";
    case mi::LogLevel::Warning: return "warning";
    case mi::LogLevel::Info: return "info";
    case mi::LogLevel::Verbose: return "verbose";
  }
  return "log";
}

mi::ID make_id(const Options& opt) {
  switch (opt.kind) {
    case mi::IDKind::ClientID: return mi::UserAssignedClientID(opt.id);
    case mi::IDKind::ObjectID: return mi::UserAssignedObjectID(opt.id);
    case mi::IDKind::ResourceID: return mi::UserAssignedResourceID(opt.id);
    case mi::IDKind::SystemAssigned: break;
  }
  return mi::SystemAssigned();
}

// --verbose: the library's diagnostics on stderr.
mi::ClientOption stderr_logger() {
  return mi::WithLogger([](mi::LogLevel level, std::string_view message) {
    std::fprintf(stderr, "[%s] %.*s\n", level_name(level), static_cast<int>(message.size()), message.data());
  });
}

mi::Context make_context(const Options& opt) {
  mi::Context ctx = mi::Context::Background();
  if (opt.timeout_ms > 0) ctx = ctx.WithTimeout(std::chrono::milliseconds(opt.timeout_ms));
  return ctx;
}

// --probe: the source on stdout and 0 when a managed identity endpoint is here; otherwise the
// library's reason on stderr and, for "nothing answered", 3, as a token request would exit.
int probe(const Options& opt) {
  std::vector<mi::ClientOption> options;
  if (opt.verbose) options.push_back(stderr_logger());
  auto source = mi::Probe(make_context(opt), options);
  if (!source) return print_error(source.error());
  const std::string_view name = mi::to_string(*source);
  std::printf("%.*s\n", static_cast<int>(name.size()), name.data());
  return kExitOk;
}

bool cache_wanted(const Options& opt) {
  if (opt.no_cache) return false;
  if (opt.cache) return true;
  const char* env = std::getenv("MI_TOKEN_CACHE");
  if (env == nullptr) return false;
  const std::string_view v = env;
  return v == "1" || v == "true" || v == "yes" || v == "on";
}

// The clients, made when first needed: a cache hit makes none.
class Clients {
 public:
  explicit Clients(const Options& opt) : opt_(opt) {}

  // `one_attempt`: no retry policy (a proactive refresh, or --no-retry).
  mi::Result<mi::AuthResult> acquire(bool one_attempt) {
    one_attempt = one_attempt || opt_.no_retry;
    std::optional<mi::Client>& slot = one_attempt ? single_ : retrying_;
    if (!slot) {
      std::vector<mi::ClientOption> options;
      if (one_attempt) options.push_back(mi::WithRetryPolicyDisabled());
      if (!opt_.ca_file.empty()) options.push_back(mi::WithCAFile(opt_.ca_file));
      if (opt_.verbose) options.push_back(stderr_logger());
      auto client = mi::New(make_id(opt_), options);
      if (!client) return client.error();
      slot = *client;
    }
    std::vector<mi::AcquireTokenOption> acquire_options;
    if (opt_.has_claims) acquire_options.push_back(mi::WithClaims(opt_.claims));
    return slot->AcquireToken(make_context(opt_), opt_.resource, acquire_options);
  }

 private:
  const Options& opt_;
  std::optional<mi::Client> retrying_;
  std::optional<mi::Client> single_;
};

int emit(const Options& opt, const mi::AuthResult& token, mi::Source source) {
  if (!opt.decode) {
    print_token(token, source, opt.output);
    return kExitOk;
  }
  std::string json;
  if (!decode_token(token.access_token, json)) {
    std::fprintf(stderr, "error: the token is not a JWT (three base64url parts, the first two JSON objects), "
                         "so --decode cannot show it\n");
    return kExitFailed;
  }
  json += ", \"tokenSource\": " + json_string(mi::to_string(token.token_source)) +
          ", \"source\": " + json_string(mi::to_string(source)) + "}\n";
  std::fwrite(json.data(), 1, json.size(), stdout);
  std::fflush(stdout);
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  const int status = parse_args(argc, argv, opt);
  if (status >= 0) return status;
  if (opt.help) {
    std::fputs(kUsage, stdout);
    return kExitOk;
  }
  if (opt.print_source) {
    const std::string_view name = mi::to_string(mi::GetSource());
    std::printf("%.*s\n", static_cast<int>(name.size()), name.data());
    return kExitOk;
  }
  if (opt.probe) return probe(opt);

  const mi::Source source = mi::GetSource();
  Clients clients(opt);
  FileCache cache;
  bool use_cache = cache_wanted(opt);
  if (use_cache) {
    std::string why;
    if (!cache.open(why)) {
      std::fprintf(stderr, "mi-token: not using the cache: %s\n", why.c_str());
      use_cache = false;
    }
  }
  const CacheKey key = use_cache ? make_cache_key(source, opt.kind, opt.id, opt.resource) : CacheKey{};
  auto log = [&opt](const std::string& message) {
    if (opt.verbose) std::fprintf(stderr, "[mi-token] %s\n", message.c_str());
  };

  for (long long n = 0; n < opt.repeat; ++n) {
    SharedFailure shared;
    auto token = use_cache ? cache.acquire(
                                 key, opt.has_claims, opt.timeout_ms,
                                 [&clients](bool one_attempt) { return clients.acquire(one_attempt); }, log, shared)
                           : clients.acquire(false);
    if (shared.set) {
      // The request this process waited for failed: its error, as that process printed it.
      std::fwrite(shared.text.data(), 1, shared.text.size(), stderr);
      return shared.exit;
    }
    if (!token) return print_error(token.error());
    const int rc = emit(opt, *token, source);
    if (rc != kExitOk) return rc;
  }
  return kExitOk;
}
