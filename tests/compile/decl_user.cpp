// A translation unit that sees only the declarations, written like a user's code
// (the seed's examples), using nothing but the public API.
#include "managed_identity.hpp"

#include <cstdio>
#include <vector>

int use_the_api() {
  auto miClient = mi::New(mi::SystemAssigned());
  if (!miClient) {
    std::fprintf(stderr, "failed to create a new managed identity client: %s\n", miClient.error().message().c_str());
    return 1;
  }
  auto a = mi::New(mi::UserAssignedClientID("my-client-id"), mi::WithRetryPolicyDisabled());
  auto b = mi::New(mi::UserAssignedObjectID("my-object-id"), std::vector<mi::ClientOption>{mi::WithClientCapabilities({"cp1"})});
  auto c = mi::New(mi::UserAssignedResourceID("/subscriptions/x/my-identity"),
                   mi::WithLogger([](mi::LogLevel, std::string_view) {}));
  mi::Context ctx = mi::Context::Background().WithTimeout(std::chrono::milliseconds(1)).WithCancel();
  ctx.Cancel();
  auto accessToken = miClient->AcquireToken(ctx, "https://vault.azure.net");
  auto withClaims = miClient->AcquireToken(ctx, "https://vault.azure.net", mi::WithClaims("c"));
  auto withVector = miClient->AcquireToken(ctx, "r", std::vector<mi::AcquireTokenOption>{mi::WithClaims("c")});
  // A canceled context: canceled before any I/O, whatever the environment selects.
  auto probed = mi::Probe(ctx, mi::WithRetryPolicyDisabled());
  if (!accessToken) {
    std::fprintf(stderr, "failed to acquire token: %s (%.*s)\n", accessToken.error().message().c_str(),
                 static_cast<int>(mi::to_string(accessToken.error().source()).size()),
                 mi::to_string(accessToken.error().source()).data());
    return accessToken.error().code() == mi::Errc::canceled && !withClaims && !withVector && a && b && c &&
                   !probed && probed.error().code() == mi::Errc::canceled
               ? 0
               : 1;
  }
  return 1;
}
