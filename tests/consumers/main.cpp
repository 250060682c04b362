// The program every consumer test builds (tests/consumers/run_consumer.py): the public API
// as a user calls it, through whichever way the library was brought in. It asks for a token
// with a context canceled beforehand, so nothing is ever sent; the answer must be `canceled`.
#include "managed_identity.hpp"

#include <cstdio>
#include <string>

int main() {
  const std::string version = MI_VERSION_STRING;
  const std::string_view source = mi::to_string(mi::GetSource());  // reads the environment only
  std::printf("managed_identity %s, source %.*s\n", version.c_str(), static_cast<int>(source.size()),
              source.data());

  auto client = mi::New(mi::SystemAssigned());
  if (!client) {
    std::fprintf(stderr, "FAIL: mi::New: %s\n", client.error().message().c_str());
    return 1;
  }
  mi::Context ctx = mi::Context::Background().WithCancel();
  ctx.Cancel();
  auto token = client->AcquireToken(ctx, "https://management.azure.com");
  if (token) {
    std::fprintf(stderr, "FAIL: AcquireToken with a canceled context returned a token\n");
    return 1;
  }
  if (token.error().code() != mi::Errc::canceled) {
    const std::string_view code = mi::to_string(token.error().code());
    std::fprintf(stderr, "FAIL: expected canceled, got %.*s: %s\n", static_cast<int>(code.size()), code.data(),
                 token.error().message().c_str());
    return 1;
  }
  std::printf("OK: AcquireToken with a canceled context: %s\n", token.error().message().c_str());
  return 0;
}
