#include "options.hpp"

#include <cstdio>

namespace mitoken {

const char kUsage[] =
    "usage: mi-token [options] RESOURCE\n"
    "       mi-token --source\n"
    "       mi-token --probe\n"
    "\n"
    "Acquires an access token for RESOURCE (e.g. https://vault.azure.net) from the\n"
    "managed identity endpoint the environment selects, and prints it (see --output).\n"
    "\n"
    "identity (at most one; default: the system-assigned identity):\n"
    "  --client-id ID        user-assigned identity by client ID\n"
    "  --object-id ID        user-assigned identity by object (principal) ID\n"
    "  --resource-id ID      user-assigned identity by Azure resource ID\n"
    "\n"
    "acquisition:\n"
    "  --claims C            claims challenge: skip every cache and fetch a new token\n"
    "  --repeat N            acquire N times with one client (default 1)\n"
    "  --timeout-ms MS       deadline of each acquisition, in milliseconds\n"
    "  --no-retry            one attempt per acquisition (no retry policy)\n"
    "  --ca-file PATH        also trust the CA certificates in this PEM file for\n"
    "                        workload identity's HTTPS (e.g. a local emulator's CA)\n"
    "  --cache               keep tokens in a per-user file cache, so that separate\n"
    "                        mi-token runs share them (off by default; see below)\n"
    "  --no-cache            do not, even when MI_TOKEN_CACHE=1\n"
    "\n"
    "output (stdout; errors and logs go to stderr and never hold the token):\n"
    "  --output json         one JSON object per acquisition (the default):\n"
    "                        accessToken, expiresOn (local time), expires_on (epoch s),\n"
    "                        tokenType, resource, tokenSource (IdentityProvider or\n"
    "                        Cache), source\n"
    "  --output token        the bare token, one line\n"
    "  --output header       'Authorization: Bearer TOKEN', one line\n"
    "  --output env          export lines for sh: MI_ACCESS_TOKEN, MI_TOKEN_TYPE,\n"
    "                        MI_EXPIRES_ON (epoch s), MI_RESOURCE\n"
    "  --decode              instead of the token, its header and main claims as JSON\n"
    "                        (aud, iss, oid, tid, appid, azp, xms_mirid, iat, exp),\n"
    "                        decoded WITHOUT verifying the signature: not proof of\n"
    "                        anything, for reading only\n"
    "  --verbose, -v         log the library's diagnostics to stderr\n"
    "\n"
    "other modes:\n"
    "  --source              print the detected source (DefaultToIMDS, AppService,\n"
    "                        AzureArc, CloudShell, ServiceFabric, AzureML,\n"
    "                        WorkloadIdentity) and exit\n"
    "  --probe               is a managed identity endpoint here? Prints the source and\n"
    "                        exits 0 if so, else exits 3 with the reason on stderr.\n"
    "                        Quick: a source set by environment variables without any\n"
    "                        request; IMDS or the Arc agent by one request, no retries,\n"
    "                        within 1 s (or --timeout-ms); no token is requested\n"
    "  --help, -h            show this text\n"
    "\n"
    "environment:\n"
    "  MI_TOKEN_CACHE=1      same as --cache\n"
    "  XDG_RUNTIME_DIR       the cache folder is $XDG_RUNTIME_DIR/managed-identity,\n"
    "  TMPDIR                else $TMPDIR/managed-identity-UID ($TMPDIR: /tmp when\n"
    "                        unset); created 0700, and refused (with a warning, the\n"
    "                        token then comes from the endpoint) when it is a\n"
    "                        symbolic link, owned by another user or open to group or\n"
    "                        others. One file per token, mode 0600.\n"
    "  IDENTITY_ENDPOINT, IDENTITY_HEADER, IDENTITY_SERVER_THUMBPRINT, IMDS_ENDPOINT,\n"
    "  MSI_ENDPOINT, MSI_SECRET, DEFAULT_IDENTITY_CLIENT_ID\n"
    "                        select the source and its endpoint (see the README)\n"
    "  AZURE_POD_IDENTITY_AUTHORITY_HOST\n"
    "                        replaces the IMDS address (e.g. with a local emulator)\n"
    "  AZURE_FEDERATED_TOKEN_FILE, AZURE_TENANT_ID, AZURE_CLIENT_ID,\n"
    "  AZURE_AUTHORITY_HOST, AZURE_KUBERNETES_TOKEN_PROXY (and _CA_FILE, _CA_DATA,\n"
    "  _SNI_NAME), HTTPS_PROXY, NO_PROXY\n"
    "                        AKS workload identity (see the README)\n"
    "\n"
    "exit status:\n"
    "  0   success\n"
    "  1   failed: the environment (a malformed endpoint variable), an identity kind\n"
    "      the source cannot take, the Azure Arc challenge, or --decode on a token\n"
    "      that is not a JWT\n"
    "  2   usage error\n"
    "  3   no endpoint: nothing answered (not on Azure, managed identity not enabled,\n"
    "      or the endpoint unreachable or silent); with --probe: no endpoint here\n"
    "  4   the endpoint refused: it answered with an HTTP error (identity not\n"
    "      assigned, wrong ID, unknown resource, throttled)\n"
    "  5   transport failure: TLS failed, or the answer was not a usable token\n"
    "      response\n";

namespace {

int usage_error(const std::string& message) {
  std::fprintf(stderr, "mi-token: %s\n\n%s", message.c_str(), kUsage);
  return kExitUsage;
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

}  // namespace

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
    auto flag = [&](bool& dest) -> int {
      if (inline_value) return usage_error(name + " takes no value");
      dest = true;
      return -1;
    };
    int status = -1;

    // Modes first.
    if (name == "--help" || name == "-h") {
      status = flag(opt.help);
    } else if (name == "--source") {
      status = flag(opt.print_source);
    } else if (name == "--probe") {
      status = flag(opt.probe);
    // Identity.
    } else if (name == "--client-id" || name == "--object-id" || name == "--resource-id") {
      if (have_id) return usage_error("give at most one of --client-id, --object-id, --resource-id");
      if (!take_value(opt.id)) return usage_error(name + " needs a value");
      have_id = true;
      opt.kind = name == "--client-id"   ? mi::IDKind::ClientID
                 : name == "--object-id" ? mi::IDKind::ObjectID
                                         : mi::IDKind::ResourceID;
    // Acquisition.
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
    } else if (name == "--ca-file") {
      if (!take_value(opt.ca_file) || opt.ca_file.empty()) return usage_error("--ca-file needs a file name");
    } else if (name == "--no-retry") {
      status = flag(opt.no_retry);
    } else if (name == "--cache") {
      status = flag(opt.cache);
    } else if (name == "--no-cache") {
      status = flag(opt.no_cache);
    // Output.
    } else if (name == "--output" || name == "-o") {
      std::string text;
      if (!take_value(text)) return usage_error(name + " needs a value: json, token, header or env");
      if (text == "json") opt.output = OutputForm::Json;
      else if (text == "token") opt.output = OutputForm::Token;
      else if (text == "header") opt.output = OutputForm::Header;
      else if (text == "env") opt.output = OutputForm::Env;
      else return usage_error("--output takes json, token, header or env, not '" + text + "'");
      opt.output_given = true;
    } else if (name == "--decode") {
      status = flag(opt.decode);
    } else if (name == "--verbose" || name == "-v") {
      status = flag(opt.verbose);
    } else {
      return usage_error("unknown option '" + name + "'");
    }
    if (status >= 0) return status;
  }
  if (opt.cache && opt.no_cache) return usage_error("give --cache or --no-cache, not both");
  if (opt.decode && opt.output_given) return usage_error("--decode prints its own JSON: drop --output");
  if (opt.print_source && opt.probe) return usage_error("give --source or --probe, not both");
  if (!opt.help && !opt.print_source && !opt.probe && !opt.has_resource) return usage_error("missing RESOURCE");
  return -1;
}

}  // namespace mitoken
