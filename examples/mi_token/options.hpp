// mi-token's command line: the options, their parser and the --help text.
#pragma once

#include <string>

#include "managed_identity.hpp"

namespace mitoken {

// Exit statuses, listed in --help and the README. Scripts branch on them, so they separate
// what the caller got wrong (2), "not on Azure" (3), "Azure said no" (4) and a broken exchange (5).
enum Exit : int {
  kExitOk = 0,
  kExitFailed = 1,      // configuration (the environment, the identity kind), --decode on a non-JWT
  kExitUsage = 2,       // the command line
  kExitNoEndpoint = 3,  // nothing answered
  kExitRefused = 4,     // the endpoint answered an HTTP error
  kExitTransport = 5,   // TLS failure, or an answer that is not a usable token response
};

enum class OutputForm { Json, Token, Header, Env };

struct Options {
  mi::IDKind kind = mi::IDKind::SystemAssigned;
  std::string id;
  bool has_claims = false;
  std::string claims;
  long long repeat = 1;
  long long timeout_ms = 0;  // 0: no deadline
  bool no_retry = false;
  std::string ca_file;  // --ca-file: extra trust anchors (mi::WithCAFile)
  bool verbose = false;
  OutputForm output = OutputForm::Json;
  bool output_given = false;
  bool decode = false;
  bool cache = false;     // --cache
  bool no_cache = false;  // --no-cache (wins over MI_TOKEN_CACHE)
  // Modes: each prints something other than a token and exits.
  bool print_source = false;
  bool probe = false;  // --probe: is a managed identity endpoint here?
  bool help = false;
  std::string resource;
  bool has_resource = false;
};

extern const char kUsage[];

// Parses argv into `opt`; returns -1 to go on, or the exit status of a usage error (the message
// and the usage text are already on stderr).
int parse_args(int argc, char** argv, Options& opt);

}  // namespace mitoken
