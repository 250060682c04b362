// mi-token: acquire a managed identity access token from the command line and
// print it as JSON, one object per acquisition (the shape of
// `az account get-access-token`, plus the token and identity sources).
//
//   mi-token https://vault.azure.net
//   mi-token --client-id 00000000-0000-0000-0000-000000000000 https://management.azure.com
//   mi-token --repeat 2 https://storage.azure.com     # second line: "tokenSource": "Cache"
//   mi-token --source                                 # which source the environment selects
//
// The JSON printed on success contains the access token: that is what the tool
// is for. Error output never does.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>
#include <vector>

#include "managed_identity.hpp"

namespace {

const char kUsage[] =
    "usage: mi-token [options] RESOURCE\n"
    "       mi-token --source\n"
    "\n"
    "Acquires an access token for RESOURCE (e.g. https://vault.azure.net) from the\n"
    "managed identity endpoint the environment selects, and prints one JSON object\n"
    "per acquisition: accessToken, expiresOn (local time), expires_on (epoch s),\n"
    "tokenType, resource, tokenSource (IdentityProvider or Cache), source.\n"
    "\n"
    "options:\n"
    "  --client-id ID      user-assigned identity by client ID\n"
    "  --object-id ID      user-assigned identity by object (principal) ID\n"
    "  --resource-id ID    user-assigned identity by Azure resource ID\n"
    "                      (at most one of the three; default: system-assigned)\n"
    "  --claims C          claims challenge: bypass the cache and fetch a new token\n"
    "  --repeat N          acquire N times with one client (default 1)\n"
    "  --timeout-ms MS     deadline of each acquisition, in milliseconds\n"
    "  --no-retry          one attempt per acquisition (no retry policy)\n"
    "  --verbose           log the library's diagnostics to stderr\n"
    "  --source            print the detected source (DefaultToIMDS, AppService,\n"
    "                      AzureArc, CloudShell, ServiceFabric, AzureML) and exit\n"
    "  --help              show this text\n"
    "\n"
    "exit status: 0 success, 1 failed acquisition, 2 usage error\n";

struct Options {
  mi::IDKind kind = mi::IDKind::SystemAssigned;
  std::string id;
  bool has_claims = false;
  std::string claims;
  long long repeat = 1;
  long long timeout_ms = 0;  // 0: no deadline
  bool no_retry = false;
  bool verbose = false;
  bool print_source = false;
  bool help = false;
  std::string resource;
  bool has_resource = false;
};

int usage_error(const std::string& message) {
  std::fprintf(stderr, "mi-token: %s\n\n%s", message.c_str(), kUsage);
  return 2;
}

// A whole decimal number in [min, max]; false on anything else.
bool parse_number(const std::string& text, long long min, long long max, long long& out) {
  if (text.empty() || text.size() > 18) return false;
  long long value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + (c - '0');
  }
  if (value < min || value > max) return false;
  out = value;
  return true;
}

// Parses argv into `opt`; returns -1 to go on, or the exit status of a usage error.
int parse_args(int argc, char** argv, Options& opt) {
  bool have_id = false;
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (options_done || arg.size() < 2 || arg[0] != '-' || arg == "-") {
      if (opt.has_resource) return usage_error("more than one RESOURCE given ('" + opt.resource + "', '" + arg + "')");
      opt.resource = arg;
      opt.has_resource = true;
      continue;
    }
    if (arg == "--") {
      options_done = true;
      continue;
    }
    // --name=value or --name value
    std::string name = arg;
    std::string value;
    bool inline_value = false;
    const std::size_t eq = arg.find('=');
    if (arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      inline_value = true;
    }
    auto take_value = [&](std::string& dest) -> bool {
      if (inline_value) {
        dest = value;
        return true;
      }
      if (i + 1 >= argc) return false;
      dest = argv[++i];
      return true;
    };
    auto flag_only = [&]() -> bool { return !inline_value; };

    if (name == "--help" || name == "-h") {
      if (!flag_only()) return usage_error(name + " takes no value");
      opt.help = true;
    } else if (name == "--client-id" || name == "--object-id" || name == "--resource-id") {
      if (have_id) return usage_error("give at most one of --client-id, --object-id, --resource-id");
      if (!take_value(opt.id)) return usage_error(name + " needs a value");
      have_id = true;
      opt.kind = name == "--client-id"   ? mi::IDKind::ClientID
                 : name == "--object-id" ? mi::IDKind::ObjectID
                                         : mi::IDKind::ResourceID;
    } else if (name == "--claims") {
      if (!take_value(opt.claims)) return usage_error("--claims needs a value");
      opt.has_claims = true;
    } else if (name == "--repeat") {
      std::string text;
      if (!take_value(text)) return usage_error("--repeat needs a value");
      if (!parse_number(text, 1, 1000000, opt.repeat))
        return usage_error("--repeat needs a whole number from 1 to 1000000, not '" + text + "'");
    } else if (name == "--timeout-ms") {
      std::string text;
      if (!take_value(text)) return usage_error("--timeout-ms needs a value");
      if (!parse_number(text, 1, 86400000LL * 365, opt.timeout_ms))
        return usage_error("--timeout-ms needs a positive whole number of milliseconds, not '" + text + "'");
    } else if (name == "--no-retry") {
      if (!flag_only()) return usage_error(name + " takes no value");
      opt.no_retry = true;
    } else if (name == "--verbose" || name == "-v") {
      if (!flag_only()) return usage_error(name + " takes no value");
      opt.verbose = true;
    } else if (name == "--source") {
      if (!flag_only()) return usage_error(name + " takes no value");
      opt.print_source = true;
    } else {
      return usage_error("unknown option '" + name + "'");
    }
  }
  if (!opt.help && !opt.print_source && !opt.has_resource) return usage_error("missing RESOURCE");
  return -1;
}

// ---- output -------------------------------------------------------------------

std::string json_string(std::string_view text) {
  static const char kHex[] = "0123456789abcdef";
  std::string out = "\"";
  for (char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xf];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
  return out;
}

// "YYYY-MM-DD HH:MM:SS.ffffff" in local time, as the Azure CLI prints expiresOn.
std::string local_time_string(std::chrono::system_clock::time_point tp, long long& epoch_seconds) {
  const long long micros = static_cast<long long>(
      std::chrono::duration_cast<std::chrono::microseconds>(tp.time_since_epoch()).count());
  long long seconds = micros / 1000000;
  long long fraction = micros % 1000000;
  if (fraction < 0) {
    fraction += 1000000;
    seconds -= 1;
  }
  epoch_seconds = seconds;
  const std::time_t t = static_cast<std::time_t>(seconds);
  std::tm local{};
#if defined(_WIN32)
  if (localtime_s(&local, &t) != 0) return "";
#else
  if (localtime_r(&t, &local) == nullptr) return "";
#endif
  char date[40];
  if (std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &local) == 0) return "";
  char frac[16];
  std::snprintf(frac, sizeof frac, ".%06lld", fraction);
  return std::string(date) + frac;
}

void print_token(const mi::AuthResult& token, mi::Source source) {
  long long epoch = 0;
  const std::string expires_on = local_time_string(token.expires_on, epoch);
  std::string line = "{\"accessToken\": " + json_string(token.access_token) +
                     ", \"expiresOn\": " + json_string(expires_on) +
                     ", \"expires_on\": " + std::to_string(epoch) +
                     ", \"tokenType\": " + json_string(token.token_type) +
                     ", \"resource\": " + json_string(token.resource) + ", \"tokenSource\": " +
                     json_string(token.token_source == mi::TokenSource::Cache ? "Cache" : "IdentityProvider") +
                     ", \"source\": " + json_string(mi::to_string(source)) + "}\n";
  std::fputs(line.c_str(), stdout);
  std::fflush(stdout);
}

int print_error(const mi::Error& error) {
  std::fprintf(stderr, "error: %s\n", error.message().c_str());
  const std::string_view code = mi::to_string(error.code());
  std::fprintf(stderr, "code: %.*s\n", static_cast<int>(code.size()), code.data());
  if (error.status_code() != 0) std::fprintf(stderr, "status: %d\n", error.status_code());
  if (!error.correlation_id().empty())
    std::fprintf(stderr, "correlation id: %s\n", error.correlation_id().c_str());
  return 1;
}

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

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  const int status = parse_args(argc, argv, opt);
  if (status >= 0) return status;
  if (opt.help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (opt.print_source) {
    const std::string_view name = mi::to_string(mi::GetSource());
    std::printf("%.*s\n", static_cast<int>(name.size()), name.data());
    return 0;
  }

  std::vector<mi::ClientOption> client_options;
  if (opt.no_retry) client_options.push_back(mi::WithRetryPolicyDisabled());
  if (opt.verbose) {
    client_options.push_back(mi::WithLogger([](mi::LogLevel level, std::string_view message) {
      std::fprintf(stderr, "[%s] %.*s\n", level_name(level), static_cast<int>(message.size()), message.data());
    }));
  }
  auto client = mi::New(make_id(opt), client_options);
  if (!client) return print_error(client.error());

  std::vector<mi::AcquireTokenOption> acquire_options;
  if (opt.has_claims) acquire_options.push_back(mi::WithClaims(opt.claims));

  for (long long n = 0; n < opt.repeat; ++n) {
    mi::Context ctx = mi::Context::Background();
    if (opt.timeout_ms > 0) ctx = ctx.WithTimeout(std::chrono::milliseconds(opt.timeout_ms));
    auto token = client->AcquireToken(ctx, opt.resource, acquire_options);
    if (!token) return print_error(token.error());
    print_token(*token, client->source());
  }
  return 0;
}
