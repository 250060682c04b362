#include "output.hpp"

#include <chrono>
#include <cstdio>
#include <ctime>

namespace mitoken {

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

namespace {

long long epoch_seconds(std::chrono::system_clock::time_point tp) {
  return static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(tp.time_since_epoch()).count());
}

// "YYYY-MM-DD HH:MM:SS.ffffff" in local time, as the Azure CLI prints expiresOn.
std::string local_time_string(std::chrono::system_clock::time_point tp, long long& epoch) {
  const long long micros = static_cast<long long>(
      std::chrono::duration_cast<std::chrono::microseconds>(tp.time_since_epoch()).count());
  long long seconds = micros / 1000000;
  long long fraction = micros % 1000000;
  if (fraction < 0) {
    fraction += 1000000;
    seconds -= 1;
  }
  epoch = seconds;
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

// A word for sh: single-quoted, a quote inside written as '\''.
std::string sh_quote(std::string_view text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  out += '\'';
  return out;
}

}  // namespace

void print_token(const mi::AuthResult& token, mi::Source source, OutputForm form) {
  std::string out;
  switch (form) {
    case OutputForm::Json: {
      long long epoch = 0;
      const std::string expires_on = local_time_string(token.expires_on, epoch);
      out = "{\"accessToken\": " + json_string(token.access_token) + ", \"expiresOn\": " + json_string(expires_on) +
            ", \"expires_on\": " + std::to_string(epoch) + ", \"tokenType\": " + json_string(token.token_type) +
            ", \"resource\": " + json_string(token.resource) + ", \"tokenSource\": " +
            json_string(mi::to_string(token.token_source)) + ", \"source\": " + json_string(mi::to_string(source)) +
            "}\n";
      break;
    }
    case OutputForm::Token:
      out = token.access_token + "\n";
      break;
    case OutputForm::Header:
      // The library refuses tokens and types with spaces or control characters, so this is
      // one well-formed header line.
      out = "Authorization: " + (token.token_type.empty() ? std::string("Bearer") : token.token_type) + " " +
            token.access_token + "\n";
      break;
    case OutputForm::Env:
      out = "export MI_ACCESS_TOKEN=" + sh_quote(token.access_token) + "\n" +
            "export MI_TOKEN_TYPE=" + sh_quote(token.token_type) + "\n" +
            "export MI_EXPIRES_ON=" + std::to_string(epoch_seconds(token.expires_on)) + "\n" +
            "export MI_RESOURCE=" + sh_quote(token.resource) + "\n";
      break;
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
}

int exit_status(const mi::Error& error) {
  switch (error.code()) {
    case mi::Errc::network:
    case mi::Errc::timeout:
      // No HTTP status at all: nothing that speaks HTTP answered. With a status (e.g. a deadline
      // that passed while the endpoint kept answering 503), the endpoint is there and said no.
      return error.status_code() == 0 ? kExitNoEndpoint : kExitRefused;
    case mi::Errc::http_status:
      return kExitRefused;
    case mi::Errc::tls:
    case mi::Errc::invalid_response:
      return kExitTransport;
    default:
      return kExitFailed;
  }
}

std::string format_error(const mi::Error& error) {
  std::string out = "error: " + error.message() + "\ncode: " + std::string(mi::to_string(error.code())) + "\n";
  if (error.status_code() != 0) out += "status: " + std::to_string(error.status_code()) + "\n";
  if (!error.correlation_id().empty()) out += "correlation id: " + error.correlation_id() + "\n";
  return out;
}

int print_error(const mi::Error& error) {
  const std::string text = format_error(error);
  std::fwrite(text.data(), 1, text.size(), stderr);
  return exit_status(error);
}

}  // namespace mitoken
