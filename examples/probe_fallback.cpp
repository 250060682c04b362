// Choosing a credential at start-up: a program that runs both on Azure and on a developer's
// laptop asks mi::Probe once whether a managed identity endpoint is here. On Azure it uses the
// managed identity; elsewhere it falls back to a developer credential at once, instead of
// waiting through a token request's retries to learn that nothing answers.
//
//   ./probe_fallback                          # on an Azure VM, App Service, Arc server, ...
//   ./probe_fallback https://storage.azure.com
//
// The fallback here only says what it would run (`az account get-access-token`); it runs
// nothing. It prints the token's length, never the token itself.

#include <cstdio>
#include <string>

#include "managed_identity.hpp"

namespace {

// Managed identity: the probe said an endpoint is here, so a failure now is a real error
// (the identity is not assigned, the resource is wrong, ...), not "not on Azure".
int use_managed_identity(mi::Source source, const std::string& resource) {
  std::printf("managed identity endpoint found (%s): using it\n", std::string(mi::to_string(source)).c_str());
  auto client = mi::New(mi::SystemAssigned());
  if (!client) {
    std::fprintf(stderr, "failed to create a managed identity client: %s\n", client.error().message().c_str());
    return 1;
  }
  auto token = client->AcquireToken(mi::Context::Background(), resource);
  if (!token) {
    std::fprintf(stderr, "failed to acquire a token: %s\n", token.error().message().c_str());
    return 1;
  }
  std::printf("got a token of %zu characters\n", token->access_token.size());
  return 0;
}

// The developer's own credential, e.g. the Azure CLI's signed-in account.
int use_developer_credential(const mi::Error& why, const std::string& resource) {
  std::printf("no managed identity here (%s: %s)\n", std::string(mi::to_string(why.code())).c_str(),
              why.message().c_str());
  std::printf("falling back to the developer's credential: would run\n"
              "  az account get-access-token --resource %s\n",
              resource.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string resource = argc > 1 ? argv[1] : "https://vault.azure.net";

  // Quick and bounded: one round trip or one timeout (1 s, as this context has no deadline),
  // and no I/O at all where the environment names the endpoint (App Service, Cloud Shell, ...).
  auto source = mi::Probe(mi::Context::Background());
  if (source) return use_managed_identity(*source, resource);

  // Not present is network or timeout. Anything else (a malformed endpoint variable, say)
  // means the environment is set up for managed identity but wrongly: say so, do not hide it
  // behind the fallback.
  const mi::Errc code = source.error().code();
  if (code == mi::Errc::network || code == mi::Errc::timeout) return use_developer_credential(source.error(), resource);
  std::fprintf(stderr, "managed identity is configured but unusable: %s\n", source.error().message().c_str());
  return 1;
}
