// The seed document's system-assigned example (MSAL Go's managed identity
// guide), in C++: create a client for the resource's system-assigned managed
// identity and acquire a token for Azure Key Vault.
//
//   ./system_assigned            # on an Azure VM, App Service, Arc server, ...
//
// It prints the token's length and expiry, never the token itself.

#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>

#include "managed_identity.hpp"

namespace {

// What a real program would do with the token: send it in an
// "Authorization: Bearer ..." header. Here: only show that there is one.
void use(const std::string& access_token) {
  std::printf("got a token of %zu characters\n", access_token.size());
}

void print_expiry(std::chrono::system_clock::time_point expires_on) {
  const long long seconds_left = static_cast<long long>(
      std::chrono::duration_cast<std::chrono::seconds>(expires_on - std::chrono::system_clock::now()).count());
  const std::time_t expires = std::chrono::system_clock::to_time_t(expires_on);
  std::tm utc{};
#if defined(_WIN32)
  gmtime_s(&utc, &expires);
#else
  gmtime_r(&expires, &utc);
#endif
  char when[32] = "?";
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &utc);
  std::printf("it expires at %s (in %lld s)\n", when, seconds_left);
}

}  // namespace

int main() {
  auto miClient = mi::New(mi::SystemAssigned());
  if (!miClient) {
    std::fprintf(stderr, "failed to create a new managed identity client: %s\n",
                 miClient.error().message().c_str());
    return 1;
  }

  auto accessToken = miClient->AcquireToken(mi::Context::Background(), "https://vault.azure.net");
  if (!accessToken) {
    std::fprintf(stderr, "failed to acquire token: %s\n", accessToken.error().message().c_str());
    return 1;
  }
  use(accessToken->access_token);
  print_expiry(accessToken->expires_on);
  return 0;
}
