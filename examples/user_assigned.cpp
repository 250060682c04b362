// The seed document's user-assigned example (MSAL Go's managed identity
// guide), in C++. A user-assigned identity is named by one of three kinds of ID:
//
//   auto a = mi::New(mi::UserAssignedClientID("my-client-id"));
//   auto b = mi::New(mi::UserAssignedObjectID("my-object-id"));
//   auto c = mi::New(mi::UserAssignedResourceID("/subscriptions/.../my-identity"));
//
// Usage:
//   ./user_assigned CLIENT_ID          # or set MI_CLIENT_ID
//   MI_OBJECT_ID=... ./user_assigned   # by object (principal) ID
//   MI_RESOURCE_ID=/subscriptions/.../resourceGroups/.../providers/
//       Microsoft.ManagedIdentity/userAssignedIdentities/NAME ./user_assigned
//
// It prints the token's length and expiry, never the token itself.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>

#include "managed_identity.hpp"

namespace {

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value ? std::string(value) : std::string();
}

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

int main(int argc, char** argv) {
  // Pick the identity: a client ID (argv[1] or MI_CLIENT_ID), else an object ID
  // (MI_OBJECT_ID), else a resource ID (MI_RESOURCE_ID).
  mi::ID id;
  std::string client_id = argc > 1 ? std::string(argv[1]) : env("MI_CLIENT_ID");
  if (!client_id.empty()) {
    id = mi::UserAssignedClientID(client_id);
  } else if (!env("MI_OBJECT_ID").empty()) {
    id = mi::UserAssignedObjectID(env("MI_OBJECT_ID"));
  } else if (!env("MI_RESOURCE_ID").empty()) {
    id = mi::UserAssignedResourceID(env("MI_RESOURCE_ID"));
  } else {
    std::fprintf(stderr,
                 "usage: %s CLIENT_ID\n"
                 "   or: set MI_CLIENT_ID, MI_OBJECT_ID or MI_RESOURCE_ID to the user-assigned identity\n",
                 argc > 0 ? argv[0] : "user_assigned");
    return 2;
  }

  auto miClient = mi::New(id);
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
