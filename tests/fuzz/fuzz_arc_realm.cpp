// Fuzz target: the Azure Arc WWW-Authenticate realm parser (arc_realm_path, docs/protocol.md §3
// step 1). The input is a WWW-Authenticate value such as
// "Basic realm=/var/opt/azcmagent/tokens/<id>.key". It is tried three ways:
//   a) as the raw value of a WWW-Authenticate header in a 401 response;
//   b) as "WWW-Authenticate: <input>" after a 401 status line, through ResponseParser;
//   c) as raw header lines after a 401 status line, through ResponseParser (so several
//      headers, other names and cases come into play).
// The key file itself is never touched (arc_read_key is not called).
//
// Invariants, beyond "no crash, no sanitizer report":
//  - a returned path is non-empty, part of the header value, and holds no control
//    character whenever the header value is a valid HTTP field value (always so in b, c);
//  - a failure is an arc_challenge error with a non-empty printable-ASCII message.
#define MI_IMPLEMENTATION
#include "managed_identity.hpp"

#include "fuzz_common.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

using mi::detail::ResponseParser;

namespace {

// Building with -DMI_FUZZ_ALLOW_HTAB_IN_REALM tolerates a horizontal tab in a returned
// path (the open finding in docs/hardening.md), so that a long run can look past it.
#ifdef MI_FUZZ_ALLOW_HTAB_IN_REALM
bool bad_path_char(std::string_view s) {
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if ((c < 0x20 && c != '\t') || c == 0x7f) return true;
  }
  return false;
}
#else
bool bad_path_char(std::string_view s) { return fuzz::any_control(s); }
#endif

// A value the HTTP parser could deliver: no control character but HTAB.
bool field_value_ok(std::string_view s) {
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  }
  return true;
}

const std::string* first_www_authenticate(const mi::HttpResponse& r) {
  for (const auto& h : r.headers)
    if (mi::detail::iequals(h.first, "WWW-Authenticate")) return &h.second;
  return nullptr;
}

void check(const mi::HttpResponse& response, bool from_wire) {
  const mi::Result<std::string> realm = mi::detail::arc_realm_path(response);
  const std::string* value = first_www_authenticate(response);
  if (realm) {
    const std::string& path = *realm;
    FUZZ_CHECK(value != nullptr, "a realm comes from a WWW-Authenticate header");
    FUZZ_CHECK(!path.empty(), "a returned realm path is non-empty");
    FUZZ_CHECK(value->find(path) != std::string::npos, "a returned realm path is part of the header value");
    if (from_wire || field_value_ok(*value))
      FUZZ_CHECK(!bad_path_char(path), "a returned realm path holds no control character");
  } else {
    const mi::Error& error = realm.error();
    FUZZ_CHECK(error.code() == mi::Errc::arc_challenge, "a realm failure is an arc_challenge error");
    FUZZ_CHECK(!error.message().empty() && fuzz::printable_ascii(error.message()),
               "a realm error message is printable ASCII (never quotes the header)");
  }
}

void check_through_parser(const std::string& wire) {
  ResponseParser parser(4096, 8192);
  ResponseParser::Status status = parser.feed(wire.data(), wire.size());
  if (status == ResponseParser::Status::need_more) status = parser.finish();
  if (status != ResponseParser::Status::done) return;
  FUZZ_CHECK(parser.response().status == 401, "the leg 1 status survives parsing");
  check(parser.response(), true);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string input(reinterpret_cast<const char*>(data), size);

  mi::HttpResponse raw;
  raw.status = 401;
  raw.headers.emplace_back("WWW-Authenticate", input);
  check(raw, false);

  const std::string head = "HTTP/1.1 401 Unauthorized\r\n";
  check_through_parser(head + "WWW-Authenticate: " + input + "\r\nContent-Length: 0\r\n\r\n");
  check_through_parser(head + input + "\r\n\r\n");
  return 0;
}
