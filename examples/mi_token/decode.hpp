// --decode: a JWT access token's header and main claims as JSON, read WITHOUT verifying the
// signature (mi-token holds no key to verify it with; the resource does that).
#pragma once

#include <string>
#include <string_view>

namespace mitoken {

// On success `out` is one line of JSON ({"verified": false, "note": ..., "header": {...},
// "claims": {...}}, without the trailing "}" so the caller may add members) and the result is
// true. False when the token is not a JWT with JSON object header and claims; `out` is then
// empty. Never copies the signature or the token itself into `out`.
bool decode_token(std::string_view token, std::string& out);

}  // namespace mitoken
